"""Which prefill is faster on this device, as `specdec tune` measured it: llama.cpp's or the
ONNX graph's (docs/DESIGN.md, NPU prefill). `--prefill auto` on a machine without an NPU
uses ONNX only at prompt lengths where this measurement says it pays."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .compare import llama_prefill
from .errors import PrefillUnavailable
from .onnx_prefill import DEFAULT_CHUNK, OnnxPrefiller, cache_variant, export_dir

# ONNX prefill must be at least this much faster than llama.cpp's before `auto` uses it
# without an NPU: it costs an fp32 copy of the weights in memory and agrees with llama.cpp
# only up to near ties, which a gain inside timing noise does not pay for.
CLEAR_MARGIN = 0.10
# Prompt lengths tune times both paths at: a question or a chat turn, and a long document.
# Both are whole 64-token ONNX chunks and fit tune's 2048-token context.
TUNE_LENGTHS = (256, 1024)
TUNE_REPEATS = 3
QUICK_REPEATS = 1


@dataclass
class PrefillSpeed:
    """Prefill cost per prompt token of both paths at each measured prompt length, the ONNX
    path on the onnxruntime provider `auto` picks (device, threads and KV cache: the
    profile's), and what loading the ONNX graph costs the first prompt that uses it."""

    provider: str  # e.g. "CPUExecutionProvider"
    lengths: list[int]
    llama_ms: list[float]  # ms per prompt token, llama.cpp's prefill
    onnx_ms: list[float]   # ms per prompt token, ONNX prefill and the K/V handoff
    onnx_load_ms: float    # building the onnxruntime session, the graph file in the OS cache

    def onnx_faster(self, n_tokens: int, chunk: int = DEFAULT_CHUNK, loaded: bool = True) -> bool:
        """Whether ONNX prefill of n_tokens is CLEAR_MARGIN faster, judged at the measured
        length nearest to n_tokens on a log scale (600 tokens are nearer 1024 than 256).
        The graph runs whole chunks, so a prompt that ends inside one pays for all of it;
        until the graph is `loaded`, the prompt pays for loading it too (a one-shot `run`
        always does)."""
        i = min(range(len(self.lengths)), key=lambda j: abs(math.log(n_tokens / self.lengths[j])))
        onnx = self.onnx_ms[i] * -(-n_tokens // chunk) * chunk + (0.0 if loaded else self.onnx_load_ms)
        return onnx <= (1 - CLEAR_MARGIN) * self.llama_ms[i] * n_tokens

    def ratios(self) -> list[float]:
        """ONNX / llama.cpp time per token at each measured length, the graph loaded."""
        return [onnx / llama for onnx, llama in zip(self.onnx_ms, self.llama_ms)]

    @classmethod
    def from_json(cls, data: dict) -> "PrefillSpeed":
        speed = cls(provider=str(data["provider"]), lengths=[int(n) for n in data["lengths"]],
                    llama_ms=[float(x) for x in data["llama_ms"]], onnx_ms=[float(x) for x in data["onnx_ms"]],
                    onnx_load_ms=float(data["onnx_load_ms"]))
        if (not speed.lengths or min(speed.lengths) <= 0
                or not len(speed.lengths) == len(speed.llama_ms) == len(speed.onnx_ms)
                or min(speed.llama_ms + speed.onnx_ms) <= 0 or speed.onnx_load_ms < 0):
            raise ValueError("profile prefill timings are malformed")
        return speed


def tune_prefiller(model_path: Path, kv_types: tuple[str, str], *, export: bool, n_threads: int | None = None,
                   progress: Callable[[int, int], None] | None = None) -> OnnxPrefiller | None:
    """The ONNX prefiller `specdec tune` times against llama.cpp: when the model's graph for
    this KV cache is already exported, or `export` (tune --measure-prefill) asks for it to
    be: then it is exported here, with progress, before anything is timed. None when there
    is nothing to time; PrefillUnavailable when `export` asks for what cannot run here
    (architecture, provider, an unwritable cache)."""
    if not export and not export_dir(model_path).is_dir():
        return None  # nothing exported: no need to read the model
    try:
        prefiller = OnnxPrefiller(model_path, n_threads=n_threads, progress=progress, export=export)
    except PrefillUnavailable:
        if export:
            raise
        return None
    if export:
        prefiller.export(kv_types)
    return prefiller if prefiller.graph_ready(kv_types) else None


def measure_prefill(ctx, prefiller: OnnxPrefiller, *, n_seq: int, n_vocab: int,
                    lengths: tuple[int, ...] = TUNE_LENGTHS, repeats: int = TUNE_REPEATS) -> PrefillSpeed:
    """Time llama.cpp's prefill and `prefiller`'s on `ctx`, from an empty cache, into all
    n_seq sequences as the Generator prefills; the two paths alternate so that a change in
    the machine's load hits both. Loading the graph is timed on its own (the file is in the
    OS cache: tune has just exported or checked it); then a first run of each path,
    which allocates buffers, is discarded."""
    # Any tokens do: prefill cost does not depend on which; avoid control tokens near id 0.
    tokens = np.random.default_rng(0).integers(100, min(n_vocab, 30000), size=max(lengths), dtype=np.int32)

    def ms_per_token(prefill, n: int) -> float:
        ctx.clear()
        t0 = time.perf_counter()
        prefill(ctx, tokens[:n], n_seq)
        return (time.perf_counter() - t0) * 1000 / n

    t0 = time.perf_counter()
    prefiller.session(cache_variant(prefiller.spec, (ctx.config.kv_k, ctx.config.kv_v)))
    load_ms = (time.perf_counter() - t0) * 1000
    paths = (llama_prefill, prefiller.prefill)
    for prefill in paths:
        ms_per_token(prefill, min(lengths))
    readings: dict[tuple[int, int], list[float]] = {(p, n): [] for p in range(len(paths)) for n in lengths}
    for _ in range(repeats):
        for n in lengths:
            for p, prefill in enumerate(paths):
                readings[p, n].append(ms_per_token(prefill, n))
    ctx.clear()
    llama_ms, onnx_ms = ([round(statistics.median(readings[p, n]), 4) for n in lengths] for p in range(len(paths)))
    return PrefillSpeed(provider=prefiller.provider.name, lengths=list(lengths), llama_ms=llama_ms, onnx_ms=onnx_ms,
                        onnx_load_ms=round(load_ms, 1))
