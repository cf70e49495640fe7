"""Choosing the prefill backend for the Generator: EngineConfig.prefill (auto | llama | onnx) and
EngineConfig.ep (an onnxruntime execution provider)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import UsageError, option
from .errors import PrefillUnavailable
from .onnx_prefill import OnnxPrefiller
from .providers import npu_providers

PREFILL_MODES = ("auto", "llama", "onnx")
# Fewer new prompt tokens go to llama.cpp: one ONNX chunk costs as much as 64 tokens, and
# llama.cpp's own prefill is the exact reference.
MIN_ONNX_TOKENS = 32
# Cache types the K/V handoff writes and the graph has a variant for (kv_blocks.py).
ONNX_KV_TYPES = ("f16", "q8_0", "q4_0", "f32")


def open_prefiller(model_path: Path, mode: str = "auto", ep: str | None = None, *, n_threads: int | None = None,
                   kv_types: tuple[str, str] = ("f16", "f16"),
                   warn: Callable[[str], None] = lambda message: None,
                   progress: Callable[[int, int], None] | None = None) -> OnnxPrefiller | None:
    """The ONNX prefiller to use, or None for llama.cpp prefill.

    auto: ONNX only where onnxruntime offers an NPU (or the user named a provider, `ep`);
    on CPU-only machines llama.cpp prefill stays: it is the exact reference. (The
    CPU provider was faster for SmolLM2 on the 2-core development machine and about even
    for Qwen2.5-Coder-1.5B, bench/RESULTS.md, "NPU prefill (issue 21)"; choosing it from a
    measured profile is not implemented.)
    onnx: ONNX on the chosen provider (the CPU provider stands in for an NPU).
    Anything that makes ONNX prefill impossible (architecture, provider, KV cache types,
    export) means llama.cpp prefill, never an error and never wrong output; a user who asked
    for ONNX (`mode` onnx or an `ep`) gets one warning line saying why. Everything that
    can be decided up front is, before anything is exported."""
    if mode not in PREFILL_MODES:
        raise UsageError(f"unknown {option('prefill')} mode {mode!r} (choose from {', '.join(PREFILL_MODES)})")
    if mode == "llama":
        return None
    explicit = mode == "onnx" or ep not in (None, "", "auto")
    if mode == "auto" and not explicit and not npu_providers():
        return None
    say = warn if explicit else (lambda message: None)
    unsupported = [f"{kind} {name}" for kind, name in zip("KV", kv_types) if name not in ONNX_KV_TYPES]
    if unsupported:
        say(f"{option('prefill')} onnx: ONNX prefill writes f16, q8_0 and q4_0 KV caches, "
            f"not {' / '.join(unsupported)}; using llama.cpp prefill ({option('kv_cache')} f16 allows it)")
        return None
    try:
        prefiller = OnnxPrefiller(model_path, ep=ep or "auto", n_threads=n_threads, progress=progress)
    except PrefillUnavailable as exc:
        say(f"{option('prefill')} onnx: {exc}; using llama.cpp prefill")
        return None
    prefiller.explicit = explicit
    return prefiller


def prefill_with_fallback(prefiller: OnnxPrefiller | None, ctx, body, n_seq: int, start: int = 0,
                          warn: Callable[[str], None] = lambda message: None) -> bool:
    """Prefill body[start:] with ONNX after the cached body[:start] (in sequences 0..n_seq-1).
    True when done; False when the caller should prefill body[start:] with llama.cpp, after
    a warning if ONNX was asked for but cannot take it (the cache then holds the prefix
    only). A failure turns ONNX prefill off for the prefiller's remaining prompts."""
    if prefiller is None or prefiller.disabled:
        return False
    if len(body) - start < MIN_ONNX_TOKENS:
        if prefiller.explicit and not prefiller.short_warned:
            warn(f"{option('prefill')} onnx: {len(body) - start} new prompt tokens are too few for ONNX prefill "
                 f"(it starts at {MIN_ONNX_TOKENS}); llama.cpp prefills them")
            prefiller.short_warned = True
        return False
    try:
        prefiller.prefill(ctx, body, n_seq, start)
        return True
    except PrefillUnavailable as exc:
        warn(f"ONNX prefill failed ({exc}); using llama.cpp prefill from now on")
        prefiller.disabled = True
        for seq in range(n_seq):
            ctx.seq_rm(seq, start, -1)
        return False
