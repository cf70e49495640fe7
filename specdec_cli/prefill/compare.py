"""Equality checks between llama.cpp prefill and ONNX prefill (used by the tests and by
bench/prefill_equality.py): the same prompt body is prefilled both ways, then the last
prompt token and a greedy continuation are decoded in llama.cpp exactly as the Generator
does (the first logits come from decoding the last prompt token)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..exactness import exactness_rule
from ..llama import ContextConfig, LlamaContext, LlamaModel, TokenBatch


@dataclass
class Continuation:
    first_logits: np.ndarray  # logits after the last prompt token
    tokens: list[int]         # greedy continuation
    margins: list[float]      # top-1 minus top-2 logit at each continuation step
    prefill_s: float          # time to put the prompt body into the cache
    ttft_s: float             # prefill + the first decode step


@dataclass
class LogitComparison:
    max_abs_diff: float
    kl: float                 # KL(reference || candidate) of the softmax distributions
    top1_equal: bool


def engine_context(model_path, *, n_ctx: int = 2048, n_seq: int = 64, n_threads: int | None = None,
                   repacked_weights: bool | None = None) -> tuple[LlamaModel, LlamaContext]:
    """A model and context with the Generator's settings (exactness rule for the weight
    layout, n_ubatch = n_batch, flash attention on)."""
    if repacked_weights is None:
        repacked_weights = exactness_rule(model_path).repacked_weights
    model = LlamaModel(model_path, repacked_weights=repacked_weights)
    ctx = LlamaContext(model, ContextConfig(n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_seq_max=n_seq,
                                            n_threads=n_threads, flash_attn=True))
    return model, ctx


def llama_prefill(ctx: LlamaContext, body: np.ndarray, n_seq: int) -> None:
    """What Generator._prefill does: the body in n_batch chunks, every token in all sequences."""
    ctx.decode_chain(TokenBatch(ctx.config.n_batch, n_seq), body, 0, np.arange(n_seq, dtype=np.int32),
                     ctx.config.n_batch)


def greedy_after_prefill(ctx: LlamaContext, prompt: np.ndarray, n_new: int, prefill, n_seq: int = 2) -> Continuation:
    """Clear the context, prefill prompt[:-1] with `prefill(ctx, body, n_seq)`, then decode the
    last prompt token and `n_new` greedy tokens one at a time in llama.cpp."""
    ctx.clear()
    body = np.ascontiguousarray(prompt[:-1], dtype=np.int32)
    t0 = time.perf_counter()
    prefill(ctx, body, n_seq)
    t1 = time.perf_counter()
    batch = TokenBatch(1, n_seq)
    seqs = np.arange(n_seq, dtype=np.int32)
    tok, pos = int(prompt[-1]), len(body)
    first, out, margins, ttft = None, [], [], 0.0
    for i in range(max(n_new, 1)):
        batch.set_chain(np.array([tok], dtype=np.int32), pos, seqs, all_outputs=True)
        ctx.decode(batch)
        logits = ctx.logits(1)[0]
        if i == 0:
            first = logits.copy()
            ttft = time.perf_counter() - t0
        tok, pos = int(np.argmax(logits)), pos + 1
        out.append(tok)
        top2 = np.partition(logits, -2)[-2:]
        margins.append(float(top2[1] - top2[0]))
    return Continuation(first, out[:n_new], margins[:n_new], t1 - t0, ttft)


def first_divergence(reference: Continuation, candidate: Continuation) -> int:
    """Index of the first differing continuation token (the length when they agree)."""
    pairs = zip(reference.tokens, candidate.tokens)
    return next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(reference.tokens), len(candidate.tokens)))


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> LogitComparison:
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    log_p = ref - ref.max()
    log_p -= np.log(np.exp(log_p).sum())
    log_q = cand - cand.max()
    log_q -= np.log(np.exp(log_q).sum())
    kl = float(np.sum(np.exp(log_p) * (log_p - log_q)))
    return LogitComparison(float(np.abs(ref - cand).max()), max(kl, 0.0), int(ref.argmax()) == int(cand.argmax()))
