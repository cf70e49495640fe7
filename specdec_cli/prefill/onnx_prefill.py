"""Prefill on an onnxruntime execution provider, then hand the K/V to llama.cpp.

The prompt runs through the exported graph (onnx_graph.py) in fixed-size chunks, the way
mllm-NPU feeds an NPU (Xu et al., 2024, "Fast On-device LLM Inference with NPUs"): every
chunk has the same static shape, the last one is padded and its padding masked. Each
chunk's K/V rows are encoded into the cache's format (kv_blocks.py) and decoded back into
a float32 buffer that the next chunk reads as its past, as llama.cpp's attention would read
its cache; at the end the encoded rows are written into llama.cpp's cache for sequence 0
through `llama_state_seq_set_data` (kv_handoff.py) and shared with the other sequences.

A chat turn starts from the cached prefix: its rows are read out of llama.cpp's state,
become the first chunk's past, and are written back byte for byte ahead of the new rows.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..gguf_file import file_sha256
from ..paths import cache_dir
from .errors import KVLayoutMismatch, PrefillUnavailable, UnsupportedArchitecture
from .gguf_reader import GgufFile
from .kv_blocks import cache_formats
from .kv_handoff import CacheRows, KVHandoff, get_seq_state, parse_seq_state, set_seq_state
from .model_spec import ModelSpec, read_spec, rope_angles
from .onnx_graph import MASKED, KVVariant, export_prefill_graph
from .providers import ExecutionProvider, choose_provider
from .weight_file import read_manifest

DEFAULT_CHUNK = 64
GRAPH_VERSION = 5  # bump when the graph changes: cached exports are keyed by it

def export_dir(model_path: Path) -> Path:
    return cache_dir() / "onnx" / file_sha256(model_path)


def weights_path(model_path: Path, chunk: int = DEFAULT_CHUNK, quant: str = "fp32") -> Path:
    """The weight file that every KV variant of this export shares (weight_file.py)."""
    return export_dir(model_path) / f"prefill-v{GRAPH_VERSION}-c{chunk}-{quant}.data"


def exported_graph_path(model_path: Path, kv: KVVariant, chunk: int = DEFAULT_CHUNK, quant: str = "fp32") -> Path:
    return export_dir(model_path) / f"prefill-v{GRAPH_VERSION}-c{chunk}-{quant}-{kv.tag}.onnx"


def cache_variant(spec: ModelSpec, kv_types: tuple[str, str]) -> KVVariant:
    """The graph variant for a llama.cpp cache of these K/V types."""
    return KVVariant(*cache_formats(*kv_types, spec.head_dim, spec.kv_dim))


def graph_exported(model_path: Path, kv: KVVariant, chunk: int = DEFAULT_CHUNK, quant: str = "fp32") -> bool:
    """Whether this KV variant's graph is in the cache, its weights beside it."""
    return exported_graph_path(model_path, kv, chunk, quant).exists() and \
        read_manifest(weights_path(model_path, chunk, quant)) is not None


def exported_graph(model_path: Path, kv: KVVariant, chunk: int = DEFAULT_CHUNK, quant: str = "fp32",
                   progress: Callable[[int, int], None] | None = None) -> Path:
    """The cached export of this model file for this KV variant, building it the first time
    (the weights only for the first variant). The graph is written under a temporary name
    and moved into place after its weights: a finished .onnx always has them beside it, and
    an export that fails (a read-only cache, a full disk, Ctrl-C) leaves no graph behind."""
    path = exported_graph_path(model_path, kv, chunk, quant)
    if graph_exported(model_path, kv, chunk, quant):
        return path
    data = weights_path(model_path, chunk, quant)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        export_prefill_graph(model_path, tmp, data, chunk, kv, quant, progress)
        os.replace(tmp, path)
    except OSError as exc:
        raise PrefillUnavailable(f"cannot write the ONNX graph into the cache ({exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    # Exports of older graph versions are never read again.
    for stale in path.parent.glob("prefill-v*"):
        if not stale.name.startswith(f"prefill-v{GRAPH_VERSION}-"):
            stale.unlink(missing_ok=True)
    return path


def remove_exports(model_path: Path) -> int:
    """Delete every ONNX export of this model file; the bytes freed."""
    folder = export_dir(model_path)
    if not folder.is_dir():
        return 0
    freed = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    shutil.rmtree(folder)
    return freed


@dataclass
class PrefillTiming:
    onnx_s: float = 0.0
    handoff_s: float = 0.0
    n_tokens: int = 0
    n_chunks: int = 0


class OnnxPrefiller:
    """Runs prompt prefill for one GGUF model on an onnxruntime execution provider."""

    def __init__(self, model_path: Path, *, ep: str | None = "auto", chunk: int = DEFAULT_CHUNK,
                 quant: str = "fp32", n_threads: int | None = None, static_past: int | None = None,
                 progress: Callable[[int, int], None] | None = None, export: bool = True):
        self.model_path = Path(model_path)
        self.provider: ExecutionProvider = choose_provider(ep)  # first: reading the GGUF takes seconds
        self.spec: ModelSpec = check_supported(self.model_path)
        self.chunk = chunk
        self.quant = quant
        # NPUs compile one static shape: the past is padded to this length and masked.
        # The CPU (and GPU) providers take the exact past length instead.
        self.static_past = static_past if static_past is not None else (4096 if self.provider.is_npu else None)
        self._n_threads = n_threads
        self._progress = progress
        self._may_export = export  # False: only a graph already in the cache is used (`--prefill auto`)
        self._sessions: dict[str, object] = {}
        self.timing = PrefillTiming()
        self._handoffs: dict[tuple, KVHandoff] = {}
        self.explicit = False      # the user asked for ONNX prefill: say why when it is not used
        self.short_warned = False  # said once that a prompt was too short for it
        self.disabled = False      # it failed once: llama.cpp prefills from then on
        # `--prefill auto` without an NPU: a measured.PrefillSpeed, and ONNX prefills only the
        # prompt lengths at which it was measured faster
        self.measured = None

    def session(self, kv: KVVariant):
        """The onnxruntime session of a KV variant, built the first time a prompt needs it:
        the export takes seconds to minutes and hundreds of MB, wasted on a short prompt."""
        if kv.tag not in self._sessions:
            if not self._may_export and not graph_exported(self.model_path, kv, self.chunk, self.quant):
                raise PrefillUnavailable("its ONNX graph is no longer exported (`specdec models export-onnx`)")
            path = exported_graph(self.model_path, kv, self.chunk, self.quant, self._progress)
            self._sessions[kv.tag] = self._make_session(path, self._n_threads)
        return self._sessions[kv.tag]

    @property
    def loaded(self) -> bool:
        """A graph is loaded: the next prompt does not pay for that (a Generator has one KV cache)."""
        return bool(self._sessions)

    def export(self, kv_types: tuple[str, str]) -> None:
        """Export the graph for a cache of these K/V types now, not at the first long prompt."""
        exported_graph(self.model_path, cache_variant(self.spec, kv_types), self.chunk, self.quant, self._progress)

    def graph_ready(self, kv_types: tuple[str, str]) -> bool:
        """Whether the graph for a cache of these K/V types is already exported."""
        return graph_exported(self.model_path, cache_variant(self.spec, kv_types), self.chunk, self.quant)

    def _make_session(self, graph_path: Path, n_threads: int | None):
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
            return ort.InferenceSession(str(graph_path), opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types per EP
            raise PrefillUnavailable(f"onnxruntime could not load the prefill graph on {self.provider.name}: "
                                     f"{exc}") from exc

    @property
    def backend_name(self) -> str:
        return f"onnx:{self.provider.name.removesuffix('ExecutionProvider')}"

    def run(self, tokens: np.ndarray, handoff: KVHandoff,
            prefix: CacheRows | None = None) -> tuple[CacheRows, np.ndarray]:
        """The cache rows of the prefix (as given) followed by those of `tokens` (positions
        prefix.n ..), and the logits of the last token, computed chunk by chunk."""
        spec, C = self.spec, self.chunk
        tokens = np.asarray(tokens, dtype=np.int64)
        n = len(tokens)
        if n == 0:
            raise PrefillUnavailable("nothing to prefill")
        start = prefix.n if prefix is not None else 0
        n_chunks = -(-n // C)
        capacity = start + n_chunks * C
        if self.static_past is not None and capacity - C > self.static_past:
            raise PrefillUnavailable(f"the prompt ({start + n} tokens) exceeds the static past of the exported "
                                     f"graph ({self.static_past} tokens)")
        session = self.session(KVVariant(handoff.k_format, handoff.v_format))
        past_len = self.static_past if self.static_past is not None else capacity
        # what the attention reads: decoded cache rows, by position
        k_att = np.zeros((spec.n_layer, past_len + C, spec.kv_dim), dtype=np.float32)
        v_att = np.zeros_like(k_att)
        k_rows = np.zeros((spec.n_layer, start + n, handoff.k_format.row_bytes), dtype=np.uint8)
        v_rows = np.zeros((spec.n_layer, start + n, handoff.v_format.row_bytes), dtype=np.uint8)
        present = np.ones((spec.n_layer, start + n), dtype=bool)
        if prefix is not None:
            k_rows[:, :start], v_rows[:, :start], present[:, :start] = prefix.k, prefix.v, prefix.present
            k_att[:, :start], v_att[:, :start] = handoff.attention_values(prefix)
        logits = None
        for c in range(n_chunks):
            first = start + c * C
            real = min(C, start + n - first)
            ids = np.zeros(C, dtype=np.int64)
            ids[:real] = tokens[first - start:first - start + real]
            positions = np.arange(first, first + C)
            feed = {"input_ids": ids, "logits_index": np.array([real - 1], dtype=np.int64)}
            past = self.static_past if self.static_past is not None else first
            feed.update(self._rope_and_masks(positions, first, past))
            for il in range(spec.n_layer):
                feed[f"past_k.{il}"] = k_att[il, :past]
                feed[f"past_v.{il}"] = v_att[il, :past]
            try:
                out = session.run(None, feed)
            except Exception as exc:  # onnxruntime raises its own exception types per EP
                raise PrefillUnavailable(f"onnxruntime failed on the prefill graph ({exc})") from exc
            logits = out[0][0]
            keys = np.stack([out[1 + 2 * il][:real] for il in range(spec.n_layer)])
            values = np.stack([out[2 + 2 * il][:real] for il in range(spec.n_layer)])
            chunk_k, chunk_v = handoff.encode(keys, values)
            k_rows[:, first:first + real], v_rows[:, first:first + real] = chunk_k, chunk_v
            decoded = handoff.attention_values(CacheRows(chunk_k, chunk_v, np.ones(chunk_k.shape[:2], dtype=bool)))
            k_att[:, first:first + real], v_att[:, first:first + real] = decoded
        self.timing.n_chunks = n_chunks
        return CacheRows(k_rows, v_rows, present), logits

    def _rope_and_masks(self, positions: np.ndarray, start: int, past: int) -> dict[str, np.ndarray]:
        """Additive masks over [past slots | chunk]: past slot j holds position j (valid when
        j < start), chunk slot i holds position start + i; causal, plus the sliding window."""
        spec, C = self.spec, self.chunk
        key_pos = np.concatenate([np.arange(past), positions])
        key_valid = np.concatenate([np.arange(past) < start, np.ones(C, dtype=bool)])
        visible = key_valid[None, :] & (key_pos[None, :] <= positions[:, None])
        feed = {}
        # llama.cpp scales only the global layers' RoPE (llama_model::get_rope_freq_scale)
        cos, sin = rope_angles(positions, spec.head_dim, spec.rope_base, spec.rope_freq_scale, spec.rope_factors)
        feed["rope_cos"], feed["rope_sin"] = cos, sin
        feed["mask"] = np.where(visible, 0.0, MASKED).astype(np.float32)
        if spec.has_swa:
            cos, sin = rope_angles(positions, spec.head_dim, spec.rope_base_swa)
            feed["rope_cos_swa"], feed["rope_sin_swa"] = cos, sin
            in_window = (positions[:, None] - key_pos[None, :]) < spec.n_swa
            feed["mask_swa"] = np.where(visible & in_window, 0.0, MASKED).astype(np.float32)
        return feed

    def prefill(self, ctx, body: np.ndarray, n_seq: int, start: int = 0) -> None:
        """Put the K/V of body[start:] (positions start..len-1) into sequence 0 of the
        llama.cpp context, after the cached body[:start] that sequence 0 holds (every
        sequence holds it, or nothing), and share the whole with sequences 1..n_seq-1. The
        caller decodes the next token in llama.cpp for the first logits. On failure the
        cache holds the prefix again, as before."""
        t0 = time.perf_counter()
        handoff = self._handoff(ctx)
        prefix_buf, prefix = None, None
        if start:
            prefix_buf = get_seq_state(ctx, 0)
            prefix = handoff.sequence_rows(parse_seq_state(prefix_buf))
            if prefix.n != start:
                raise KVLayoutMismatch(f"sequence 0 holds {prefix.n} cached tokens, expected {start}")
        rows, _ = self.run(body[start:], handoff, prefix)
        t1 = time.perf_counter()
        # set_data replaces sequence 0's cells; the other sequences' copies go first, so
        # that the new cells take the place of the old ones
        for s in range(1, n_seq):
            ctx.seq_rm(s, -1, -1)
        try:
            handoff.write_rows(ctx, rows, seq=0)
        except PrefillUnavailable:
            if prefix_buf is not None:
                set_seq_state(ctx, prefix_buf, 0)  # llama.cpp's own buffer: it takes it back
            raise
        finally:
            for s in range(1, n_seq):
                ctx.seq_cp(0, s, 0, -1)
        self.timing.onnx_s = t1 - t0
        self.timing.handoff_s = time.perf_counter() - t1
        self.timing.n_tokens = len(body) - start

    def _handoff(self, ctx) -> KVHandoff:
        config = ctx.config
        key = (int(ctx.ptr or 0), config.kv_k, config.kv_v, config.flash_attn)
        if key not in self._handoffs:
            self._handoffs[key] = KVHandoff.probe(ctx, self.spec)
        return self._handoffs[key]


def check_supported(model_path: Path) -> ModelSpec:
    """The model's spec, or UnsupportedArchitecture without exporting anything."""
    try:
        return read_spec(GgufFile(model_path))
    except UnsupportedArchitecture:
        raise
    except (KeyError, ValueError, TypeError, OSError) as exc:
        raise UnsupportedArchitecture(f"{model_path.name}: cannot read the model for ONNX prefill ({exc})") from exc
