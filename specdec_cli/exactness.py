"""Which engine settings make batched verification bit-identical to one-token decoding.

Lossless speculation needs the logits of a node in a verified batch to equal the logits
the same token would get decoded alone. On the CPU that depends on the kernels a batch
takes (docs/DESIGN.md, Engine modes; llama.cpp issue #25618):
- quantized matmuls: Gemma 3 Q4_K_M leaves the single-token kernel from 8 tokens on, and
  the repacked weight layout changes results at any batch size; SmolLM2 Q4_1 is exact;
- flash attention (pinned ggml, `ggml_compute_forward_flash_attn_ext_f16`): 64 or more
  query rows take the tiled kernel, which sums in another order.
So instead of a table per quant type we measure it once per model file: decode a chain
one token at a time, decode it again in llama_decode calls of at most N tokens, and keep
the fastest setting whose logits match exactly. The Generator then never verifies more
than N tree nodes per llama_decode call.

One difference is left that no setting removes: with 512 or more KV cells a *single*
query row takes ggml's split-KV attention path (threads sum partial softmaxes), so in long
contexts a one-token decode can differ from the same row in a batch by float rounding.
Greedy outputs then only differ where the top two logits are within that rounding — the
lossless tests check exactly that (tests/test_lossless.py).

A GPU backend has kernels of its own (per batch size, per KV type), so the rule is probed
and kept per (model file, backend, GPU layers, KV types), with the probe run on exactly
that offload and cache.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .gguf_file import file_sha256
from .llama import ContextConfig, LlamaContext, LlamaModel, TokenBatch, repacked_weights_safe
from .options import default_kv_types
from .paths import cache_dir, write_cache_file

PROBE_TEXT = ("The committee met on Tuesday to review the budget. After a long discussion, "
              "they agreed to fund the new library, repair the bridge on Main Street and hire two teachers.")
PROBE_TOKENS = 32
# Largest verification batch tried per weight layout, fastest first; all stay below
# flash attention's tiled kernel.
BATCH_CANDIDATES = (32, 16, 8, 7, 4, 2)
RULE_VERSION = 3
_probed: dict[str, "ExactnessRule"] = {}  # rules whose cache file could not be written, by cache key


@dataclass(frozen=True)
class ExactnessRule:
    repacked_weights: bool
    max_verify_batch: int  # 1 = batched verification is never exact: speculation cannot pay


def exactness_rule(model_path: Path, verbose: bool = False, n_threads: int | None = None, *,
                   backend: str = "CPU", n_gpu_layers: int = 0,
                   kv_types: tuple[str, str] | None = None) -> ExactnessRule:
    """The cached rule for this model file on this backend, layer split and KV cache
    (default: the exact mode's), probing it the first time (with the run's thread count:
    on a busy machine more threads than free cores make it crawl)."""
    kv_k, kv_v = kv_types or default_kv_types(exact=True)
    key = f"{file_sha256(model_path)}-{backend}-{n_gpu_layers}-{kv_k}-{kv_v}"
    if key in _probed:  # the cache could not be written
        return _probed[key]
    cache = cache_dir() / "exactness" / f"{key}.json"
    try:
        data = json.loads(cache.read_text())
        if data.pop("version") == RULE_VERSION:
            return ExactnessRule(**data)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    rule = probe_exactness(model_path, verbose=verbose, n_threads=n_threads, n_gpu_layers=n_gpu_layers,
                           kv_types=(kv_k, kv_v))
    if not write_cache_file(cache, json.dumps({"version": RULE_VERSION, **asdict(rule)})):
        _probed[key] = rule
    return rule


def probe_exactness(model_path: Path, verbose: bool = False, n_threads: int | None = None, *,
                    n_gpu_layers: int = 0, kv_types: tuple[str, str] = default_kv_types(exact=True)) -> ExactnessRule:
    best = ExactnessRule(False, 1)
    for repacked in (True, False) if repacked_weights_safe() else (False,):
        model = LlamaModel(model_path, repacked_weights=repacked, verbose=verbose, n_gpu_layers=n_gpu_layers)
        try:
            size = _largest_exact_batch(model, n_threads, kv_types)
        finally:
            model.close()
        if size > best.max_verify_batch:
            best = ExactnessRule(repacked, size)
        if size == BATCH_CANDIDATES[0]:
            break
    return best


def _largest_exact_batch(model: LlamaModel, n_threads: int | None, kv_types: tuple[str, str]) -> int:
    """Decode a greedy chain one token per llama_decode, then again in calls of at most N
    tokens in the same context (so both see the same prompt cells); the largest N whose
    logits are bit-identical."""
    ctx = LlamaContext(model, ContextConfig(n_ctx=512, n_batch=128, n_seq_max=1, n_threads=n_threads,
                                            kv_k=kv_types[0], kv_v=kv_types[1], flash_attn=True))
    batch = TokenBatch(128, 1)
    seq0 = np.zeros(1, dtype=np.int32)
    prompt = model.tokenize(PROBE_TEXT, add_special=True, parse_special=False)
    n = len(prompt)
    try:
        batch.set_chain(prompt, 0, seq0, all_outputs=False)
        ctx.decode(batch)
        chain, reference = [], []
        nxt = int(np.argmax(ctx.logits(1)[0]))
        for i in range(PROBE_TOKENS):
            chain.append(nxt)
            batch.set_chain(np.array([nxt], dtype=np.int32), n + i, seq0, all_outputs=True)
            ctx.decode(batch)
            reference.append(ctx.logits(1)[0].copy())
            nxt = int(np.argmax(reference[-1]))
        chain_arr = np.array(chain, dtype=np.int32)
        expected = np.stack(reference)
        for size in BATCH_CANDIDATES:
            ctx.seq_rm(0, n, -1)
            matches: list[bool] = []
            ctx.decode_chain(batch, chain_arr, n, seq0, size, on_logits=lambda start, logits: matches.append(
                bool(np.array_equal(logits, expected[start:start + len(logits)]))))
            if all(matches):
                return size
        return 1
    finally:
        ctx.close()
