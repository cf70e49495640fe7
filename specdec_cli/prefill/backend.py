"""Choosing the prefill backend for the Generator: EngineConfig.prefill (auto | llama | onnx),
EngineConfig.ep (an onnxruntime execution provider) and, for `auto` without an NPU, the
device profile's prefill timings (measured.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import UsageError, option
from .errors import PrefillUnavailable
from .measured import PrefillSpeed
from .onnx_prefill import OnnxPrefiller
from .providers import npu_providers

PREFILL_MODES = ("auto", "llama", "onnx")
# Fewer new prompt tokens go to llama.cpp: one ONNX chunk costs as much as 64 tokens, and
# llama.cpp's own prefill is the exact reference.
MIN_ONNX_TOKENS = 32
# Cache types the K/V handoff writes and the graph has a variant for (kv_blocks.py).
ONNX_KV_TYPES = ("f16", "q8_0", "q4_0", "f32")
# The cache types `auto` chooses ONNX prefill for. A q4_0 cache turns the graph's float
# differences into whole 4-bit steps: on SmolLM2, whose own llama.cpp prefill paths agree bit
# for bit there, ONNX's continuations parted at a logit gap of 1.17, no near tie
# (bench/RESULTS.md, NPU prefill); only an explicit `--prefill onnx` takes that.
AUTO_KV_TYPES = ("f16", "q8_0", "f32")


def _auto_cache(kv_types: tuple[str, str]) -> bool:
    """Whether `auto` may choose ONNX prefill for a cache of these K/V types."""
    return all(name in AUTO_KV_TYPES for name in kv_types)


def _explicit(mode: str, ep: str | None) -> bool:
    """The user asked for ONNX prefill: `--prefill onnx`, or a named execution provider."""
    return mode == "onnx" or ep not in (None, "", "auto")


def open_prefiller(model_path: Path, mode: str = "auto", ep: str | None = None, *, n_threads: int | None = None,
                   kv_types: tuple[str, str] = ("f16", "f16"),
                   warn: Callable[[str], None] = lambda message: None,
                   progress: Callable[[int, int], None] | None = None) -> OnnxPrefiller | None:
    """The ONNX prefiller to use, or None for llama.cpp prefill.

    auto: ONNX only where onnxruntime offers an NPU (or the user named a provider, `ep`);
    on machines without one, llama.cpp prefill unless the device profile measured ONNX
    faster (measured_prefiller, called once the profile is known).
    onnx: ONNX on the chosen provider (the CPU provider stands in for an NPU).
    Anything that makes ONNX prefill impossible (architecture, provider, KV cache types,
    export) means llama.cpp prefill, never an error and never wrong output; a user who asked
    for ONNX (`mode` onnx or an `ep`) gets one warning line saying why. Everything that
    can be decided up front is, before anything is exported."""
    if mode not in PREFILL_MODES:
        raise UsageError(f"unknown {option('prefill')} mode {mode!r} (choose from {', '.join(PREFILL_MODES)})")
    if mode == "llama":
        return None
    explicit = _explicit(mode, ep)
    if mode == "auto" and not explicit and (not npu_providers() or not _auto_cache(kv_types)):
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
    if explicit and not _auto_cache(kv_types):
        warn(f"{option('prefill')} onnx: into a q4_0 KV cache ONNX prefill can part from llama.cpp's beyond "
             f"near ties (a rounding difference moves a 4-bit value a whole step); {option('kv_cache')} q8_0 "
             f"or f16 keeps it within them")
    return prefiller


def measured_prefiller(model_path: Path, measured: PrefillSpeed | None, mode: str = "auto", ep: str | None = None, *,
                       n_threads: int | None = None,
                       kv_types: tuple[str, str] = ("f16", "f16")) -> OnnxPrefiller | None:
    """`auto` on a machine without an NPU: an ONNX prefiller that takes only the prompts
    whose length `measured` (the device profile's timings, `specdec tune`) found ONNX
    clearly faster at (measured.CLEAR_MARGIN), on the provider it was measured on. None
    when ONNX never won, or when its graph for this KV cache is not exported: `auto` never
    exports one (hundreds of MB to GB, minutes) on a guess. Silent: the user asked for
    nothing, and `--json` stats name the backend each prompt used."""
    if mode != "auto" or _explicit(mode, ep) or measured is None or npu_providers():
        return None
    if not _auto_cache(kv_types):
        return None
    if not any(measured.onnx_faster(n) for n in measured.lengths):
        return None
    try:
        prefiller = OnnxPrefiller(model_path, n_threads=n_threads, export=False)
    except PrefillUnavailable:
        return None
    if prefiller.provider.name != measured.provider or not prefiller.graph_ready(kv_types):
        return None
    prefiller.measured = measured
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
    if prefiller.measured is not None and not prefiller.measured.onnx_faster(len(body) - start, prefiller.chunk,
                                                                             loaded=prefiller.loaded):
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
