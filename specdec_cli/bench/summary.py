"""Per-category and overall rows from per-prompt samples: paired ratios, medians, counts."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from .methods import BASELINES
from .samples import Sample

OVERALL = "overall"


@dataclass
class MethodRow:
    method: str
    family: str
    category: str
    n_prompts: int
    tokens_per_s: float
    speedup: float | None  # median paired ratio vs the family's baseline
    vs_server: float | None  # median paired tok/s ratio vs llama-server without speculation
    e2e_s: float  # median end-to-end seconds
    e2e_vs_server: float | None  # median paired ratio llama-server e2e / this e2e
    tokens_per_step: float | None
    rows_per_token: float | None  # rows verified per token: the compute a method spends per token
    ttft_ms: float
    peak_rss_mb: float
    same_as_none: int | None  # prompts whose output equals our plain decoding's
    same_as_server: int | None  # ... llama-server's plain decoding's


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _count(values: list[bool | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def pair_ratios(samples: list[Sample]) -> None:
    """Set each sample's paired ratios against the baselines measured on the same prompt."""
    by_key = {(s.method, s.question_id): s for s in samples}
    for s in samples:
        base = by_key.get((BASELINES[s.family], s.question_id))
        s.speedup = s.tokens_per_s / base.tokens_per_s if base and base.tokens_per_s else None
        server = by_key.get(("server", s.question_id))
        if server is not None:
            s.vs_server = s.tokens_per_s / server.tokens_per_s if server.tokens_per_s else None
            s.e2e_vs_server = server.e2e_s / s.e2e_s if s.e2e_s else None


def summarize(samples: list[Sample], methods: list[str]) -> list[MethodRow]:
    """One row per (method, category) plus one per method over all prompts: medians of
    per-prompt figures (tokens per step: the mean)."""
    pair_ratios(samples)
    categories = list(dict.fromkeys(s.category for s in samples))
    rows = []
    for method in methods:
        mine = [s for s in samples if s.method == method]
        for category in categories + [OVERALL]:
            group = mine if category == OVERALL else [s for s in mine if s.category == category]
            if not group:
                continue
            steps = [s.tokens_per_step for s in group if s.tokens_per_step is not None]
            costs = [s.rows_per_token for s in group if s.rows_per_token is not None]
            rows.append(MethodRow(
                method=method, family=group[0].family, category=category,
                n_prompts=len({s.question_id for s in group}),
                tokens_per_s=round(statistics.median(s.tokens_per_s for s in group), 2),
                speedup=_round(_median(s.speedup for s in group), 3),
                vs_server=_round(_median(s.vs_server for s in group), 3),
                e2e_s=round(statistics.median(s.e2e_s for s in group), 3),
                e2e_vs_server=_round(_median(s.e2e_vs_server for s in group), 3),
                tokens_per_step=round(statistics.fmean(steps), 3) if steps else None,
                rows_per_token=round(statistics.fmean(costs), 3) if costs else None,
                ttft_ms=round(statistics.median(s.ttft_s for s in group) * 1000, 1),
                peak_rss_mb=round(max(s.rss_bytes for s in group) / 2**20, 1),
                same_as_none=_count([s.same_as_none for s in group]),
                same_as_server=_count([s.same_as_server for s in group])))
    return rows


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
