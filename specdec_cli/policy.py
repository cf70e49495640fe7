"""How much to speculate, step by step: the device's cost curve and an online policy
(docs/DESIGN.md, The cost model). Pure: numbers in, a choice out; no engine imports.

Cost curve. c(k) is the wall time of one verification step of k rows (a `llama_decode` of
k tokens with logits, split into calls of at most the engine's verify batch, plus the
read-out of those rows). On a 2-core CPU it grows almost linearly in k at first; with
llama.cpp's repacked weights it has a GEMM regime (per-row cost falls sharply from 16
rows on); on a GPU it is nearly flat. `specdec tune` measures it (tuning.py).

Policy. Before each step the drafter's lookup gives a continuation and the length n of
the context suffix that matched. The policy keeps acceptance statistics per match
length, per depth, and picks the (tree size, chain length) with the highest expected
tokens per second, E[accepted + 1] / c(rows), where (1, 0) is plain decoding; a
speculative option has to beat plain decoding by SPECULATION_MARGIN to be taken.
- Choosing the chain length by the marginal value of one more token is SpecDec++'s rule
  (Huang et al. 2024, "SpecDec++: Boosting Speculative Decoding via Adaptive Candidate
  Lengths": stop drafting once the probability of a rejection makes the next token not
  worth its cost), here with per-depth acceptance rates estimated online instead of a
  trained head, and with the measured cost curve instead of a fixed per-token cost.
- Adapting the length online from the acceptance just observed follows PEARL (Liu et al.
  2024, "Parallel Speculative Decoding with Adaptive Draft Length") and DEL (Zarch et al.
  2025), which pick the draft length from running acceptance statistics.
- Statistics are learned from every step, speculative or not: each step's lookup is kept
  as a "shadow" prediction and scored against the tokens the model actually produces, so
  the policy learns what a match of length n is worth without paying for drafts it
  decides not to verify.
- Each rate is the current generation's own count shrunk towards the rate over recent
  generations (worth LOCAL_WEIGHT observations; older generations fade by GENERATION_DECAY):
  how much a prompt's continuation copies varies far more between prompts than between
  steps of one prompt.
- A step's rows attend to the whole context, so its cost grows with the context length:
  the curve carries a per-row, per-cell term measured by `specdec tune`.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate
from operator import mul

import numpy as np

# Without a measured profile the policy assumes these cost ratios c(k)/c(1): SmolLM2-135M
# on a 2-core CPU with the repacked weights of the fast engine mode, the steepest curve we
# measured (docs/DESIGN.md, The cost model). On it only strong matches pay; a faster-scaling device is
# under-used, never made slower than plain decoding. `specdec tune` replaces it.
PRIOR_COST_RATIOS = {1: 1.0, 2: 2.2, 4: 3.3, 8: 5.3, 16: 9.1, 32: 17.5, 64: 33.6}

# Priors for the acceptance statistics, each worth PRIOR_WEIGHT observations.
PRIOR_WEIGHT = 4.0
# Match-length buckets: a match of n tokens counts in the largest bucket <= n. Long exact
# matches (an edit copying its input) are far more reliable than short ones, so they
# must not share statistics.
MATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
# P(drafted token at depth d is accepted | all before it were), per bucket. Set from what
# suffix chains did on 20 Qwen2.5-Coder edit outputs (bench/policy_sim.py): from 8 matched
# tokens on a copy continues 0.95-0.99 per token. The shadow scoring refines them, but a
# cell (bucket x agreement x streak x depth) sees few trials per run, and modest priors kept
# the first steps of every long copy at 4-7 rows where 16-32 pay. On Spec-Bench (SmolLM2)
# long matches are rare and these priors change the simulated rate by < 1%.
MATCH_PRIOR_ACCEPT = {1: 0.3, 2: 0.5, 3: 0.6, 4: 0.7, 6: 0.8, 8: 0.88, 12: 0.92, 16: 0.95, 24: 0.96,
                      32: 0.97, 48: 0.98, 64: 0.99}
# Mean accepted draft nodes of a Token Recycling tree of T nodes (simulated on SmolLM2:
# ~1.1 at 8-16 nodes, ~1.7 with an 80-node tree; docs/DESIGN.md, Drafters), kept below.
RECYCLING_PRIOR_ACCEPTED = {4: 0.5, 8: 0.8, 16: 1.0, 32: 1.2, 64: 1.4}
TREE_SIZES = (4, 8, 16, 32, 64)
# Drafting, laying out the tree and sharing the accepted KV cells with every sequence cost
# a speculative step 0.35-0.75 ms more than a plain one (SmolLM2, 2-core CPU, c(1) = 12 ms).
SPECULATIVE_STEP_OVERHEAD = 0.05
# A speculative option must promise this many times plain decoding's tokens per ms. The
# option with the highest *estimated* rate is biased upwards (the maximum of several noisy
# estimates), and a lost bet costs a whole step: without the margin, bets that promised a
# few percent lost up to 20% on Spec-Bench's extraction prompts on a 2-core CPU.
SPECULATION_MARGIN = 1.10
# How many observations the global acceptance rate counts as when it is combined with the
# current generation's own.
LOCAL_WEIGHT = 12.0
MAX_DEPTH = 64
MAX_STREAK = 2
# A match whose earlier occurrences all continued the same way is a better bet than one
# where they split (SuffixDecoding scores candidates by such frequencies): the two are
# kept apart. Split matches start from a lower prior.
UNANIMOUS = 0.99
SPLIT_PRIOR_FACTOR = 0.7
# At each new generation the rates learned so far count GENERATION_DECAY times as much:
# they follow the user's recent work (about the last ten generations) instead of
# everything since install. Replayed on Qwen2.5-Coder (bench/policy_sim.py): chat after a
# day of edit work started 0.96x plain decoding on RAG prompts with the edit work's
# confident long-match rates kept whole, 0.99x with them decayed; edits lost 1-3% in replay
# (depending on the curve) and 1% of their tokens per step measured on 16 prompts.
GENERATION_DECAY = 0.9
LEARNED_VERSION = 1
LEARNED_CAP = 2000.0
# choose() prices chain lengths in blocks of this many (see there).
PRICE_BLOCK = 8


@dataclass
class CostCurve:
    """Step time in ms for k rows, at measured sizes; interpolated in between.

    Measured at `depth` cells of context. Every verified row attends to every cell, so a
    step over a longer context costs `row_cell_ms` more per row and cell: on
    Qwen2.5-Coder-1.5B (2-core CPU) c(1) grows 84 -> 94 -> 109 ms from 300 to 1000 to 2000
    cells and c(16) 638 -> 897 -> 1010 ms, ~0.014 ms per row per cell either way; a curve
    read at 300 cells priced the 5- and 16-row bets of a 700-token summarization prompt
    10-25% too cheap. 0 = no depth term (profiles measured before it)."""

    sizes: list[int]
    ms: list[float]
    depth: int = 0
    row_cell_ms: float = 0.0

    def at(self, k: int) -> float:
        """c(k) for one llama_decode call of k rows (linear interpolation, linear
        extrapolation past the largest measured size)."""
        if k <= self.sizes[0]:
            return self.ms[0] * k / self.sizes[0]
        return float(np.interp(k, self.sizes, self.ms)) if k <= self.sizes[-1] else self._extrapolate(k)

    def step_ms(self, rows: int, verify_batch: int) -> float:
        """Cost of a step of `rows` rows decoded in calls of at most `verify_batch` rows."""
        full, rest = divmod(rows, max(1, verify_batch))
        return full * self.at(verify_batch) + (self.at(rest) if rest else 0.0)

    def _extrapolate(self, k: int) -> float:
        if len(self.sizes) == 1:
            return self.ms[0] * k / self.sizes[0]
        k0, k1 = self.sizes[-2], self.sizes[-1]
        slope = (self.ms[-1] - self.ms[-2]) / (k1 - k0)
        return self.ms[-1] + slope * (k - k1)

    def row_extra(self, depth: int) -> float:
        """ms each verified row costs more (less, when negative) at `depth` cells of
        context than where the curve was measured; never more than half of c(1) less."""
        return max(self.row_cell_ms * (depth - self.depth), -0.5 * self.ms[0] / self.sizes[0])

    def ratios(self) -> dict[int, float]:
        return {k: round(ms / self.ms[0], 3) for k, ms in zip(self.sizes, self.ms)}


def prior_curve() -> CostCurve:
    sizes = sorted(PRIOR_COST_RATIOS)
    return CostCurve(sizes=sizes, ms=[PRIOR_COST_RATIOS[k] for k in sizes])


def match_bucket(match_n: int) -> int:
    """The statistics bucket of a suffix match of `match_n` tokens (>= 1)."""
    return MATCH_BUCKETS[max(bisect_right(MATCH_BUCKETS, match_n) - 1, 0)]


@dataclass
class Choice:
    tree_size: int  # recycling tree nodes, root included (1 = no tree)
    draft_len: int  # chain nodes grafted onto the root
    expected_tokens: float  # E[accepted + 1]
    cost_ms: float

    @property
    def plain(self) -> bool:
        return self.tree_size == 1 and self.draft_len == 0


@dataclass
class _DepthStats:
    """Per-depth conditional acceptance counts: over everything generated so far (with a
    Beta prior), and over the current generation alone, shrunk towards the former. The
    rates are kept per depth and recomputed only where a count changed (`_stale`): choose()
    reads up to max_chain of them every step, a handful of counts change per step."""

    prior: float
    trials: list[float] = field(default_factory=lambda: [0.0] * MAX_DEPTH)
    hits: list[float] = field(default_factory=lambda: [0.0] * MAX_DEPTH)
    local_trials: list[float] = field(default_factory=lambda: [0.0] * MAX_DEPTH)
    local_hits: list[float] = field(default_factory=lambda: [0.0] * MAX_DEPTH)
    _rates: list[float] = field(default_factory=lambda: [0.0] * MAX_DEPTH, repr=False)
    _stale: set[int] = field(default_factory=lambda: set(range(MAX_DEPTH)), repr=False)  # _rates to recompute

    def global_rate(self, depth: int) -> float:
        return (self.hits[depth] + self.prior * PRIOR_WEIGHT) / (self.trials[depth] + PRIOR_WEIGHT)

    def rate(self, depth: int) -> float:
        self._refresh()
        return self._rates[depth]

    def add(self, depth: int, hit: bool) -> None:
        self.trials[depth] += 1
        self.local_trials[depth] += 1
        if hit:
            self.hits[depth] += 1
            self.local_hits[depth] += 1
        self._stale.add(depth)

    def set_counts(self, trials: list[float], hits: list[float]) -> None:
        self.trials, self.hits = trials, hits
        self._stale = set(range(MAX_DEPTH))

    def reset_local(self) -> None:
        self.local_trials = [0.0] * MAX_DEPTH
        self.local_hits = [0.0] * MAX_DEPTH
        self.set_counts([t * GENERATION_DECAY for t in self.trials], [h * GENERATION_DECAY for h in self.hits])

    def _refresh(self) -> None:
        for depth in self._stale:
            self._rates[depth] = ((self.local_hits[depth] + self.global_rate(depth) * LOCAL_WEIGHT)
                                  / (self.local_trials[depth] + LOCAL_WEIGHT))
        self._stale.clear()

    def expected_accepted(self, length: int) -> list[float]:
        """out[d] = E[accepted draft tokens] when a chain of d tokens is verified."""
        self._refresh()
        # Survival products, then their running sums, the loops in C: a Python loop over 64
        # depths was most of what choose() cost a step.
        return [0.0, *accumulate(accumulate(self._rates[:length], mul))]


@dataclass
class _MeanStat:
    prior: float
    total: float = 0.0
    count: float = 0.0

    def mean(self) -> float:
        return (self.total + self.prior * PRIOR_WEIGHT) / (self.count + PRIOR_WEIGHT)

    def add(self, value: float) -> None:
        self.total += value
        self.count += 1


@dataclass
class _Shadow:
    chain: list[int]
    bucket: tuple[int, bool, int]
    matched: int = 0


class SpeculationPolicy:
    """Chooses each step's (tree size, chain length) by expected tokens per second."""

    def __init__(self, curve: CostCurve, *, verify_batch: int = 512, max_tree: int = 64, max_chain: int = 16,
                 measured: bool = True):
        self.curve = curve
        self.verify_batch = verify_batch
        self.measured = measured
        self._costs: list[float] = []  # step cost by row count, filled on demand
        self._cheapest_from: list[float] = []
        self._draft_overhead = SPECULATIVE_STEP_OVERHEAD * curve.at(1)
        # Keyed by (match-length bucket, whether the earlier occurrences agreed, how many
        # steps in a row (0, 1, 2+) the lookup predicted the token the model then
        # produced): inside a passage being copied all three are high.
        self.ngram = {(n, unanimous, streak): _DepthStats(prior if unanimous else prior * SPLIT_PRIOR_FACTOR)
                      for n, prior in MATCH_PRIOR_ACCEPT.items() for unanimous in (True, False)
                      for streak in range(MAX_STREAK + 1)}
        self._streak = 0
        self.trees = {t: _MeanStat(_recycling_prior(t)) for t in TREE_SIZES}
        self.set_limits(max_tree, max_chain)
        self._shadows: list[_Shadow] = []
        self._pending: tuple[Choice, list[int]] | None = None
        self.steps_by_kind = {"plain": 0, "ngram": 0, "tree": 0, "hybrid": 0}

    def set_limits(self, max_tree: int, max_chain: int) -> None:
        """Largest tree (nodes, root included) and chain a step may use."""
        self.max_chain = max(0, min(max_chain, MAX_DEPTH))
        self.tree_sizes = [t for t in TREE_SIZES if t <= max_tree]

    def reset(self) -> None:
        """A new generation: shadow predictions of the previous context no longer apply."""
        self._shadows.clear()
        self._pending = None
        self._streak = 0
        for stats in self.ngram.values():
            stats.reset_local()

    def choose(self, chain: np.ndarray, match_n: int, n_deferred: int = 0, agreement: float = 1.0,
               depth: int | None = None) -> Choice:
        """The option with the most expected tokens per ms for this step, given the
        drafter's lookup (continuation `chain`, suffix match length `match_n`, the share of
        earlier occurrences that continued with the chain's first token; empty/0 = no
        match) and the context length the step's rows attend to (`depth`; None = the
        curve's own)."""
        chain_tokens = chain[:self.max_chain].tolist()
        bucket = (match_bucket(match_n), agreement >= UNANIMOUS, min(self._streak, MAX_STREAK)) \
            if chain_tokens else None
        if bucket:
            self._shadows.append(_Shadow(chain_tokens, bucket))
        gains = self.ngram[bucket].expected_accepted(len(chain_tokens)) if bucket else [0.0]
        first_hit = self.ngram[bucket].rate(0) if bucket else 0.0
        # Plain floats in the loop: this runs every step, next to a ~5-30 ms decode, and on
        # most steps of most prompts it ends at plain decoding. Each row count is priced
        # at this step's context length (`row_extra`).
        n_rows = n_deferred + max(self.tree_sizes, default=1) + len(gains)
        base = self._costs_up_to(n_rows)
        row_extra = 0.0 if depth is None else self.curve.row_extra(depth)
        overhead = self._draft_overhead
        plain_rows = n_deferred + 1
        best_rate, best = SPECULATION_MARGIN / (base[plain_rows] + plain_rows * row_extra), (1, 0, 1.0)
        for t, tree_gain in [(1, 0.0)] + [(t, self.trees[t].mean()) for t in self.tree_sizes]:
            rows0 = n_deferred + t  # the rows of this tree without a chain
            # A tree's alternatives only matter when the chain's first token is rejected.
            alt = (1.0 - first_hit) * tree_gain
            # Chain lengths are priced in blocks. Gains grow with the length, so no chain
            # from `start` on expects more than the longest, nor costs less than the cheapest
            # row count from there on (`_cheapest_from`): when even that loses, no later
            # block can win; a block whose own best case loses is skipped. Most steps price
            # one block of PRICE_BLOCK lengths, or none, instead of all 64.
            most = 1.0 + gains[-1] + tree_gain
            stop = rows0 + len(gains)  # past the longest chain's row count
            for start in range(0 if t > 1 else 1, len(gains), PRICE_BLOCK):
                end = min(start + PRICE_BLOCK, len(gains))
                lo, hi = rows0 + start, rows0 + end
                rest = _cost_floor(self._cheapest_from[lo], lo, stop, row_extra) + overhead
                if rest > 0 and most / rest <= best_rate:
                    break
                block = _cost_floor(min(base[lo:hi]), lo, hi, row_extra) + overhead
                if block > 0 and (1.0 + gains[end - 1] + (alt if start else tree_gain)) / block <= best_rate:
                    continue
                for d in range(start, end):
                    rows = rows0 + d
                    expected = 1.0 + gains[d] + (alt if d else tree_gain)
                    rate = expected / (base[rows] + rows * row_extra + overhead)
                    if rate > best_rate:
                        best_rate, best = rate, (t, d, expected)
        t, d, expected = best
        rows = n_deferred + t + d
        choice = Choice(tree_size=t, draft_len=d, expected_tokens=expected,
                        cost_ms=base[rows] + rows * row_extra + (overhead if t + d > 1 else 0.0))
        self._pending = (choice, chain_tokens[:d])
        return choice

    def observe(self, accepted: list[int]) -> None:
        """After a step: the tokens it produced (accepted draft tokens, then the bonus token).
        Scores every outstanding prediction against them and updates the tree stats."""
        self._score_shadows(accepted)
        if self._pending is None:
            return
        choice, chain = self._pending
        self._pending = None
        kind = ("plain" if choice.plain else "ngram" if choice.tree_size == 1
                else "tree" if choice.draft_len == 0 else "hybrid")
        self.steps_by_kind[kind] += 1
        if choice.tree_size > 1:
            chain_missed = not chain or not accepted or accepted[0] != chain[0]
            if chain_missed:
                self.trees[choice.tree_size].add(float(len(accepted) - 1))

    def learned(self) -> dict:
        """What the policy learned about this model's drafts, over all generations: kept
        between runs (one `specdec run` is one generation), so a new run starts from the
        rates the last ones measured instead of the priors. Counts are capped at
        LEARNED_CAP observations per cell, so that the rates keep following the user's work."""
        def capped(trials: list[float], hits: list[float]) -> tuple[list[float], list[float]]:
            scale = [min(1.0, LEARNED_CAP / t) if t else 1.0 for t in trials]
            return ([round(t * f, 3) for t, f in zip(trials, scale)], [round(h * f, 3) for h, f in zip(hits, scale)])

        chains = {}
        for key, stats in self.ngram.items():
            if any(stats.trials):
                trials, hits = capped(stats.trials, stats.hits)
                chains["/".join(map(str, (key[0], int(key[1]), key[2])))] = {"trials": trials, "hits": hits}
        trees = {str(t): [round(s.total, 3), s.count] for t, s in self.trees.items() if s.count}
        return {"version": LEARNED_VERSION, "chains": chains, "trees": trees}

    def restore(self, learned: dict) -> None:
        """Take over what `learned()` returned in an earlier run; anything that does not fit
        this policy's tables is ignored."""
        if not isinstance(learned, dict) or learned.get("version") != LEARNED_VERSION:
            return
        for name, counts in learned.get("chains", {}).items():
            try:
                n, unanimous, streak = (int(x) for x in name.split("/"))
                stats = self.ngram[(n, bool(unanimous), streak)]
                trials, hits = [float(x) for x in counts["trials"]], [float(x) for x in counts["hits"]]
            except (KeyError, ValueError, TypeError):
                continue
            if len(trials) == len(hits) == MAX_DEPTH and all(0 <= h <= t for h, t in zip(hits, trials)):
                stats.set_counts(trials, hits)
        for size, counts in learned.get("trees", {}).items():
            try:
                stat, (total, count) = self.trees[int(size)], counts
                if float(count) > 0 and 0 <= float(total):
                    stat.total, stat.count = float(total), float(count)
            except (KeyError, ValueError, TypeError):
                continue

    def summary(self) -> dict:
        return {"steps": dict(self.steps_by_kind), "measured_curve": self.measured,
                "match_accept_by_depth": {f"n>={n},{'unanimous' if u else 'split'},streak={k}":
                                          [round(s.rate(d), 3) for d in range(4)]
                                          for (n, u, k), s in self.ngram.items()},
                "tree_mean_accepted": {t: round(s.mean(), 3) for t, s in self.trees.items()}}

    def _costs_up_to(self, rows: int) -> list[float]:
        """Step cost by row count, at least up to `rows` (and `_cheapest_from` as far)."""
        if rows >= len(self._costs):
            while rows >= len(self._costs):
                self._costs.append(self.curve.step_ms(len(self._costs), self.verify_batch))
            # _cheapest_from[k]: the cheapest step of k or more rows (of those priced).
            self._cheapest_from = list(accumulate(reversed(self._costs), min))[::-1]
        return self._costs

    def _score_shadows(self, produced: list[int]) -> None:
        alive = []
        newest_hit = False
        for shadow in self._shadows:
            stats = self.ngram[shadow.bucket]
            done = False
            for tok in produced:
                depth = shadow.matched
                if depth >= len(shadow.chain) or depth >= MAX_DEPTH:
                    done = True
                    break
                hit = shadow.chain[depth] == tok
                stats.add(depth, hit)
                if depth == 0:
                    # Only the newest shadow is still at depth 0: its first token is this step's.
                    newest_hit = hit
                if not hit:
                    done = True
                    break
                shadow.matched += 1
            if not done and shadow.matched < len(shadow.chain):
                alive.append(shadow)
        self._shadows = alive
        self._streak = self._streak + 1 if newest_hit else 0


def _cost_floor(cheapest_base: float, lo: int, hi: int, row_extra: float) -> float:
    """At most the cost of any row count lo..hi-1 at the step's context length (each
    base[rows] + rows * row_extra), given at most their smallest base cost: that plus the
    smallest depth term. Rounding is monotonic, so this holds for the computed costs too,
    and a choice bounded with it is the one an exhaustive scan makes."""
    return cheapest_base + min(lo * row_extra, (hi - 1) * row_extra)


def _recycling_prior(tree_size: int) -> float:
    sizes = sorted(RECYCLING_PRIOR_ACCEPTED)
    return float(np.interp(tree_size, sizes, [RECYCLING_PRIOR_ACCEPTED[s] for s in sizes]))
