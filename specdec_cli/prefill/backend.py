"""Choosing the prefill backend for the Generator: `--prefill auto|llama|onnx`, `--ep NAME`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import UsageError
from .errors import PrefillUnavailable
from .onnx_prefill import OnnxPrefiller
from .providers import npu_providers

PREFILL_MODES = ("auto", "llama", "onnx")
# Shorter prompt bodies go to llama.cpp: one ONNX chunk costs as much as 64 tokens, and
# llama.cpp's own prefill is the exact reference.
MIN_ONNX_TOKENS = 32
# Cache types the K/V handoff can write (kv_handoff.to_cache_type); quantized blocks it cannot.
ONNX_KV_TYPES = {"f16", "f32"}


def open_prefiller(model_path: Path, mode: str = "auto", ep: str | None = None, *, n_threads: int | None = None,
                   kv_types: tuple[str, str] = ("f16", "f16"),
                   warn: Callable[[str], None] = lambda message: None) -> OnnxPrefiller | None:
    """The ONNX prefiller to use, or None for llama.cpp prefill.

    auto: ONNX only where onnxruntime offers an NPU (or the user named a provider with
    --ep); on CPU-only machines llama.cpp prefill stays, since it is the exact reference.
    onnx: ONNX on the chosen provider (the CPU provider stands in for an NPU).
    Anything that makes ONNX prefill impossible (architecture, provider, KV cache types,
    export) is a warning and llama.cpp prefill, never an error and never wrong output;
    what can be decided up front is, before anything is exported."""
    if mode not in PREFILL_MODES:
        raise UsageError(f"unknown --prefill {mode!r} (choose from {', '.join(PREFILL_MODES)})")
    if mode == "llama":
        return None
    explicit_ep = ep not in (None, "", "auto")
    if mode == "auto" and not explicit_ep and not npu_providers():
        return None
    if set(kv_types) - ONNX_KV_TYPES:
        warn(f"ONNX prefill writes an f16 KV cache, this one is K {kv_types[0]} / V {kv_types[1]}; using llama.cpp "
             f"prefill (add --kv-cache f16 for ONNX prefill)")
        return None
    try:
        return OnnxPrefiller(model_path, ep=ep or "auto", n_threads=n_threads)
    except PrefillUnavailable as exc:
        warn(f"ONNX prefill unavailable ({exc}); using llama.cpp prefill")
        return None


def prefill_with_fallback(prefiller: OnnxPrefiller | None, ctx, body, n_seq: int,
                          warn: Callable[[str], None] = lambda message: None) -> bool:
    """Prefill `body` (positions 0..len-1, sequences 0..n_seq-1 must be empty) with ONNX.
    True when done; False when the caller should prefill with llama.cpp, after a warning
    if ONNX failed (the sequences are left empty in that case)."""
    if prefiller is None or len(body) < MIN_ONNX_TOKENS:
        return False
    try:
        prefiller.prefill(ctx, body, n_seq)
        return True
    except PrefillUnavailable as exc:
        warn(f"ONNX prefill failed ({exc}); using llama.cpp prefill")
        for seq in range(n_seq):
            ctx.seq_rm(seq, 0, -1)
        return False
