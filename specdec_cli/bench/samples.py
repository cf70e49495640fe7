"""What one benchmark run measures, and the per-prompt sample built from its repeats."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass
class Run:
    """One generation by one method on one prompt (metrics.py defines the figures)."""

    tokens: list[int] | None  # None where the tool returns text only (lcp)
    text: str
    n_generated: int
    tokens_per_s: float
    ttft_s: float
    e2e_s: float
    tokens_per_step: float | None  # None where the tool doesn't say
    rows_per_token: float | None
    rss_bytes: int


@dataclass
class Divergence:
    """Where a method's greedy output first differs from a plain decoding's, and how close
    plain decoding's choice was there: logits from our engine's one-row decode of the
    reference prefix (the same kernels llama-server runs in the default engine mode)."""

    method: str
    question_id: str
    category: str
    reference: str  # the plain decoding it differs from: "none" or "server"
    position: int  # index of the first differing generated token
    top2_gap: float  # top-1 minus top-2 logit at that position
    pair_gap: float | None  # logit(reference's token) - logit(method's token); None at an end of text


@dataclass
class Sample:
    """One method on one prompt: medians over its repeats, and how its output compares."""

    method: str
    family: str
    question_id: str
    category: str
    tokens_per_s: float
    ttft_s: float
    e2e_s: float
    tokens_per_step: float | None
    rows_per_token: float | None
    n_generated: int
    rss_bytes: int
    same_as_none: bool | None  # output equals our plain decoding's (None: not compared)
    same_as_server: bool | None  # output equals llama-server's plain decoding's (None: no server)
    speedup: float | None = None  # tok/s over the family baseline's on the same prompt
    vs_server: float | None = None  # tok/s over llama-server's (no speculation) on the same prompt
    e2e_vs_server: float | None = None  # llama-server's end-to-end time over this one's


def sample_from_runs(method: str, family: str, question_id: str, category: str, runs: list[Run],
                     same_as_none: bool | None, same_as_server: bool | None) -> Sample:
    steps = [r.tokens_per_step for r in runs if r.tokens_per_step is not None]
    rows = [r.rows_per_token for r in runs if r.rows_per_token is not None]
    return Sample(method=method, family=family, question_id=question_id, category=category,
                  tokens_per_s=statistics.median(r.tokens_per_s for r in runs),
                  ttft_s=statistics.median(r.ttft_s for r in runs),
                  e2e_s=statistics.median(r.e2e_s for r in runs),
                  tokens_per_step=statistics.fmean(steps) if steps else None,
                  rows_per_token=statistics.fmean(rows) if rows else None,
                  n_generated=runs[0].n_generated, rss_bytes=max(r.rss_bytes for r in runs),
                  same_as_none=same_as_none, same_as_server=same_as_server)


def same_output(runs: list[Run], reference: Run | None) -> bool | None:
    """Every run's output equals the reference's: by tokens where both have them, else by text."""
    if reference is None:
        return None
    if reference.tokens is not None and all(r.tokens is not None for r in runs):
        return all(r.tokens == reference.tokens for r in runs)
    return all(r.text == reference.text for r in runs)


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first token where a and b differ (one ending early counts), None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
