"""What a run can be asked for, owned by the library: the choices each option takes and
the checks on their values, in words that name no command-line flag (the CLI adds its own
flag names; `session.RunOptions` carries the values)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError

# KV cache types offered to users (llama.KV_CACHE_TYPES knows more; these are the ones
# whose cost and quality bench/kv_quality.py measured).
KV_CHOICES = ("f16", "q8_0", "q4_0")


@dataclass
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 40
    top_p: float = 0.95
    # 0 <= seed < 2**64; None: a random one, reported in GenerationStats.seed. With the
    # same seed the same text, whatever the draft mode (verify.hpp).
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def validate(self) -> None:
        if not 0 <= self.temperature <= 10:  # written so that NaN fails it too
            raise UsageError(f"the temperature must be between 0 and 10, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise UsageError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UsageError(f"top-k must be >= 0 (0 = off), got {self.top_k}")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise UsageError(f"the seed must be an integer from 0 to 2^64-1, got {self.seed}")


def default_kv_types(exact: bool) -> tuple[str, str]:
    """K and V cache types when the user sets none.

    Fast mode: f16/f16, llama.cpp's default, whose prefill takes the tiled flash-attention
    kernel. Exact mode: V q8_0, which keeps speculation bit-exact in long contexts: with K
    and V both f16 and 512+ cells, ggml's single-query flash attention splits the cells
    across threads and sums in another order than the batched kernel (pinned ggml, ops.cpp
    `use_split_kv_path`); with a quantized V both take the same kernel. Measured:
    bit-identical logits at 700 tokens, where f16/f16 moved them by up to 0.7."""
    return ("f16", "q8_0") if exact else ("f16", "f16")


@dataclass
class EngineConfig:
    n_ctx: int = 4096
    n_threads: int | None = None
    # Exact mode: batched verification bit-identical to one-token decoding (exactness.py's
    # probed rules: weight layout, largest verify call, a quantized V). Fast mode (default):
    # llama.cpp's fastest kernels for the device — repacked weights, verification in one
    # call however many rows — where greedy output equals plain decoding's except where two
    # kernel paths round a near-tie differently.
    exact: bool = False
    kv_k: str | None = None  # None: default_kv_types(exact)
    kv_v: str | None = None
    n_batch: int = 512
    # Branches a draft tree may have; every accepted cell is shared with this many sequences.
    # The session sets it to its tree cap (a tree of T nodes, a chain grafted on it, has at
    # most T branches): llama.cpp books every cell into each of its sequences, which cost
    # SmolLM2 45 us per one-row step and 0.4 ms per 8-row step with 64 of them against 1.
    n_seq_max: int = 16
    verbose: bool = False
    prefill: str = "auto"  # auto | llama | onnx (prefill/backend.py)
    ep: str | None = None  # onnxruntime execution provider for ONNX prefill
    # Layers on the GPU: "auto" (all that fit in a GPU's free memory, none on a CPU-only
    # build), "all" or a count; offload.plan_offload decides, the Generator reports it.
    gpu_layers: str = "auto"
