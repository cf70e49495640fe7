"""The speed figures specdec reports, defined once for the engine, chat, tune and bench.

- decode rate (tok/s): generated tokens over the time spent generating them, from the
  first decoding step to the last (prefill excluded). llama-server's `predicted_per_second`
  is the same quantity.
- time to first token (TTFT): from the start of a request to its first generated token:
  the prompt's prefill plus the first decoding step.
- end-to-end time: what a user waits for the whole answer: TTFT plus the rest of decoding.
- tokens per step: tokens a verification step emits (accepted drafts + the bonus token),
  averaged over steps; an end-of-generation token counts as emitted, so plain decoding
  reads exactly 1.0. For llama-server: predicted / (predicted - accepted drafts).
- rows per token: rows verified (every step's root and drafted nodes) per token emitted.
  For llama-server: (steps + drafted tokens) / predicted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


def decode_rate(n_tokens: int, seconds: float) -> float:
    return n_tokens / seconds if seconds > 0 else 0.0


def tokens_per_step(n_emitted: int, steps: int) -> float:
    return n_emitted / steps if steps > 0 else 0.0


def rows_per_token(rows: int, n_emitted: int) -> float:
    """Rows verified per token emitted: 1.0 for plain decoding; what a draft costs in
    compute per token it brings (rows are what a step's cost grows with)."""
    return rows / n_emitted if n_emitted > 0 else 0.0


def server_tokens_per_step(n_predicted: int, n_draft_accepted: int) -> float:
    """llama-server: every forward pass emits one token plus the drafts it accepted."""
    return tokens_per_step(n_predicted, n_predicted - n_draft_accepted)


def server_rows_per_token(n_predicted: int, n_drafted: int, n_draft_accepted: int) -> float:
    """llama-server: every forward pass verifies one row plus the tokens it drafted."""
    return rows_per_token(n_predicted - n_draft_accepted + n_drafted, n_predicted)


@dataclass
class GenerationStats:
    """One generation's figures, as `run --json` and chat's /stats report them."""

    n_prompt: int = 0
    n_prompt_prefilled: int = 0  # prompt tokens actually computed (the rest came from the cache)
    n_generated: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    ttft_s: float = 0.0
    tokens_per_s: float = 0.0  # decode_rate: generated tokens over the time after the first step
    steps: int = 0
    speculative_steps: int = 0
    rows_verified: int = 0  # tree nodes decoded by all steps: what speculation paid for its tokens
    rows_per_token: float = 0.0  # plain decoding reads exactly 1.0
    tokens_per_step: float = 0.0  # plain decoding reads exactly 1.0
    engine: str = "fast"  # "fast" | "exact" (EngineConfig.exact)
    draft: str = "none"
    tree_size: int = 1
    draft_len: int = 0
    accept_rate_by_depth: list[float] = field(default_factory=list)
    # Steps that verified a copied chain, by where it was found: "context" (this prompt and
    # output) or "history" (earlier runs' prompts and outputs).
    chains_from: dict[str, int] = field(default_factory=dict)
    draft_ms: float = 0.0
    decode_ms: float = 0.0
    verify_ms: float = 0.0
    kv_cache: str = "f16"
    kv_bytes: int = 0
    prefill_backend: str = "llama"
    backend: str = "CPU"  # where the offloaded layers run: "CPU" or a GPU backend ("CUDA", "Metal", ...)
    gpu_layers: int = 0  # layers on it, the output layer counted (offload.OffloadPlan)
    # Why the `auto` draft mode decoded plainly throughout, when it had to (no exact batch > 1).
    plain_reason: str | None = None
    seed: int | None = None  # the sampling seed (drawn when none was given); None when greedy

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DepthCounter:
    """How often a tree reached depth d and how often a node at depth d was accepted."""

    drafted: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)

    def add(self, tree_depth: int, accepted_depth: int) -> None:
        while len(self.drafted) < tree_depth:
            self.drafted.append(0)
            self.accepted.append(0)
        for d in range(tree_depth):
            self.drafted[d] += 1
            if d < accepted_depth:
                self.accepted[d] += 1

    def rates(self) -> list[float]:
        return [round(a / n, 4) if n else 0.0 for a, n in zip(self.accepted, self.drafted)]
