"""Prefill on an onnxruntime execution provider, then hand the K/V to llama.cpp.

The prompt runs through the exported graph (onnx_graph.py) in fixed-size chunks, the way
mllm-NPU feeds an NPU (Xu et al., 2024, "Fast On-device LLM Inference with NPUs"): every
chunk has the same static shape, the last one is padded and its padding masked. Each
chunk's K/V rows are appended to a float32 buffer that the next chunk reads as its past;
at the end the buffer is written into llama.cpp's cache for sequence 0 through
`llama_state_seq_set_data` (kv_handoff.py) and shared with the other sequences.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..gguf_file import file_sha256
from ..paths import cache_dir
from .errors import PrefillUnavailable, UnsupportedArchitecture
from .kv_handoff import KVHandoff
from .onnx_graph import MASKED, ModelSpec, export_prefill_graph, read_spec, rope_angles
from .providers import ExecutionProvider, choose_provider

DEFAULT_CHUNK = 64
GRAPH_VERSION = 4  # bump when the graph changes: cached exports are keyed by it


def export_dir(model_path: Path) -> Path:
    return cache_dir() / "onnx" / file_sha256(model_path)


def exported_graph_path(model_path: Path, chunk: int = DEFAULT_CHUNK, quant: str = "fp32") -> Path:
    return export_dir(model_path) / f"prefill-v{GRAPH_VERSION}-c{chunk}-{quant}.onnx"


def exported_graph(model_path: Path, chunk: int = DEFAULT_CHUNK, quant: str = "fp32") -> Path:
    """The cached export for this model file, building it the first time."""
    path = exported_graph_path(model_path, chunk, quant)
    if path.exists() and path.with_name(path.name + ".data").exists():
        return path
    # Export under the final file names into a private folder, then move the weights and
    # then the graph into place: a finished .onnx always has its .data beside it, and an
    # export that fails (a read-only cache, a full disk, Ctrl-C) leaves nothing behind.
    tmp_dir = path.parent / f"tmp-{os.getpid()}"
    try:
        export_prefill_graph(model_path, tmp_dir / path.name, chunk, quant)
        os.replace(tmp_dir / (path.name + ".data"), path.with_name(path.name + ".data"))
        os.replace(tmp_dir / path.name, path)
    except OSError as exc:
        raise PrefillUnavailable(f"cannot write the ONNX graph into the cache ({exc})") from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    # Exports of older graph versions are never read again.
    for stale in path.parent.glob(f"prefill-v*-c{chunk}-{quant}.onnx*"):
        if not stale.name.startswith(path.name):
            stale.unlink(missing_ok=True)
    return path


@dataclass
class PrefillTiming:
    onnx_s: float = 0.0
    handoff_s: float = 0.0
    n_tokens: int = 0
    n_chunks: int = 0


class OnnxPrefiller:
    """Runs prompt prefill for one GGUF model on an onnxruntime execution provider."""

    def __init__(self, model_path: Path, *, ep: str | None = "auto", chunk: int = DEFAULT_CHUNK,
                 quant: str = "fp32", n_threads: int | None = None, static_past: int | None = None):
        self.model_path = Path(model_path)
        self.provider: ExecutionProvider = choose_provider(ep)  # first: reading the GGUF takes seconds
        self.spec: ModelSpec = check_supported(self.model_path)
        self.chunk = chunk
        self.quant = quant
        # NPUs compile one static shape: the past is padded to this length and masked.
        # The CPU (and GPU) providers take the exact past length instead.
        self.static_past = static_past if static_past is not None else (4096 if self.provider.is_npu else None)
        self.graph_path = exported_graph_path(self.model_path, chunk, quant)
        self._n_threads = n_threads
        self._session = None
        self.timing = PrefillTiming()
        self._handoffs: dict[tuple, KVHandoff] = {}

    @property
    def session(self):
        """The onnxruntime session, built on the first prompt long enough to use it: the
        export takes seconds and hundreds of MB, wasted on a run with a short prompt."""
        if self._session is None:
            exported_graph(self.model_path, self.chunk, self.quant)
            self._session = self._make_session(self._n_threads)
        return self._session

    def _make_session(self, n_threads: int | None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # llama.cpp decodes right after prefill on the same cores: onnxruntime's worker
        # threads must sleep, not spin, once a chunk is done.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if n_threads:
            opts.intra_op_num_threads = n_threads
        if self.static_past is not None:
            opts.add_free_dimension_override_by_name("past", self.static_past)
            opts.add_free_dimension_override_by_name("total", self.static_past + self.chunk)
        providers = [self.provider.name] if self.provider.name == "CPUExecutionProvider" else \
            [(self.provider.name, dict(self.provider.options)), "CPUExecutionProvider"]
        try:
            return ort.InferenceSession(str(self.graph_path), opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types per EP
            raise PrefillUnavailable(f"onnxruntime could not load the prefill graph on {self.provider.name}: "
                                     f"{exc}") from exc

    @property
    def backend_name(self) -> str:
        return f"onnx:{self.provider.name.removesuffix('ExecutionProvider')}"

    def run(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """K and V of every token ([n_layer, n_tokens, kv_dim] float32 each) and the logits
        of the last token, computed chunk by chunk."""
        spec, C = self.spec, self.chunk
        tokens = np.asarray(tokens, dtype=np.int64)
        n = len(tokens)
        if n == 0:
            raise PrefillUnavailable("nothing to prefill")
        n_chunks = -(-n // C)
        capacity = n_chunks * C
        if self.static_past is not None and capacity - C > self.static_past:
            raise PrefillUnavailable(f"the prompt ({n} tokens) exceeds the static past of the exported graph "
                                     f"({self.static_past} tokens)")
        past_len = self.static_past if self.static_past is not None else capacity
        k_buf = np.zeros((spec.n_layer, past_len + C, spec.kv_dim), dtype=np.float32)
        v_buf = np.zeros_like(k_buf)
        logits = None
        for c in range(n_chunks):
            start = c * C
            real = min(C, n - start)
            ids = np.zeros(C, dtype=np.int64)
            ids[:real] = tokens[start:start + real]
            positions = np.arange(start, start + C)
            feed = {"input_ids": ids, "logits_index": np.array([real - 1], dtype=np.int64)}
            past = self.static_past if self.static_past is not None else start
            feed.update(self._rope_and_masks(positions, start, past))
            for il in range(spec.n_layer):
                feed[f"past_k.{il}"] = k_buf[il, :past]
                feed[f"past_v.{il}"] = v_buf[il, :past]
            out = self.session.run(None, feed)
            logits = out[0][0]
            for il in range(spec.n_layer):
                k_buf[il, start:start + C] = out[1 + 2 * il]
                v_buf[il, start:start + C] = out[2 + 2 * il]
        self.timing.n_chunks = n_chunks
        return k_buf[:, :n], v_buf[:, :n], logits

    def _rope_and_masks(self, positions: np.ndarray, start: int, past: int) -> dict[str, np.ndarray]:
        """Additive masks over [past slots | chunk]: past slot j holds position j (valid when
        j < start), chunk slot i holds position start + i; causal, plus the sliding window."""
        spec, C = self.spec, self.chunk
        key_pos = np.concatenate([np.arange(past), positions])
        key_valid = np.concatenate([np.arange(past) < start, np.ones(C, dtype=bool)])
        visible = key_valid[None, :] & (key_pos[None, :] <= positions[:, None])
        feed = {}
        cos, sin = rope_angles(positions, spec.head_dim, spec.rope_base)
        feed["rope_cos"], feed["rope_sin"] = cos, sin
        feed["mask"] = np.where(visible, 0.0, MASKED).astype(np.float32)
        if spec.has_swa:
            cos, sin = rope_angles(positions, spec.head_dim, spec.rope_base_swa)
            feed["rope_cos_swa"], feed["rope_sin_swa"] = cos, sin
            in_window = (positions[:, None] - key_pos[None, :]) < spec.n_swa
            feed["mask_swa"] = np.where(visible & in_window, 0.0, MASKED).astype(np.float32)
        return feed

    def prefill(self, ctx, tokens: np.ndarray, n_seq: int) -> None:
        """Put the K/V of `tokens` (positions 0..len-1) into sequence 0 of the llama.cpp
        context and share it with sequences 1..n_seq-1. The context must hold no cells of
        those sequences; the caller decodes the next token in llama.cpp for the first logits."""
        t0 = time.perf_counter()
        keys, values, _ = self.run(tokens)
        t1 = time.perf_counter()
        handoff = self._handoff(ctx)
        handoff.write_sequence(ctx, keys, values, seq=0)
        for s in range(1, n_seq):
            ctx.seq_cp(0, s, 0, -1)
        self.timing.onnx_s = t1 - t0
        self.timing.handoff_s = time.perf_counter() - t1
        self.timing.n_tokens = len(tokens)

    def _handoff(self, ctx) -> KVHandoff:
        config = ctx.config
        key = (int(ctx.ptr or 0), config.kv_k, config.kv_v, config.flash_attn)
        if key not in self._handoffs:
            self._handoffs[key] = KVHandoff.probe(ctx, self.spec)
        return self._handoffs[key]


def check_supported(model_path: Path) -> ModelSpec:
    """The model's spec, or UnsupportedArchitecture without exporting anything."""
    from gguf import GGUFReader

    try:
        return read_spec(GGUFReader(str(model_path)))
    except UnsupportedArchitecture:
        raise
    except (KeyError, ValueError, TypeError, StopIteration, OSError) as exc:
        raise UnsupportedArchitecture(f"{model_path.name}: cannot read the model for ONNX prefill ({exc})") from exc
