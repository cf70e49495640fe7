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
from dataclasses import dataclass

import numpy as np

from . import _native as nat

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
# The core prices chain lengths in blocks of this many (native/policy.cpp, choose).
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


class SpeculationPolicy:
    """Chooses each step's (tree size, chain length) by expected tokens per second.

    The per-step work (the statistics, the shadow predictions, the search over options)
    runs in the native core, `_native.SpeculationCore`; tests/reference.py holds the same
    rules in plain Python, the oracle it is checked against step by step. Statistics keys
    are (match-length bucket, whether the earlier occurrences agreed, how many steps in a
    row (0, 1, 2+) the lookup predicted the token the model then produced): inside a
    passage being copied all three are high."""

    def __init__(self, curve: CostCurve, *, verify_batch: int = 512, max_tree: int = 64, max_chain: int = 16,
                 measured: bool = True):
        self.curve = curve
        self.verify_batch = verify_batch
        self.measured = measured
        self._costs: list[float] = []  # step cost by row count, filled on demand
        self._core = nat.SpeculationCore(
            match_buckets=list(MATCH_BUCKETS), match_priors=[MATCH_PRIOR_ACCEPT[n] for n in MATCH_BUCKETS],
            split_prior_factor=SPLIT_PRIOR_FACTOR,
            tree_sizes=list(TREE_SIZES), tree_priors=[_recycling_prior(t) for t in TREE_SIZES],
            max_depth=MAX_DEPTH, max_streak=MAX_STREAK, price_block=PRICE_BLOCK, prior_weight=PRIOR_WEIGHT,
            local_weight=LOCAL_WEIGHT, unanimous=UNANIMOUS, margin=SPECULATION_MARGIN,
            draft_overhead=SPECULATIVE_STEP_OVERHEAD * curve.at(1))
        self.set_limits(max_tree, max_chain)

    def set_limits(self, max_tree: int, max_chain: int) -> None:
        """Largest tree (nodes, root included) and chain a step may use."""
        self._core.set_limits(max_tree, max_chain)
        self.max_chain = self._core.max_chain
        self.tree_sizes = list(TREE_SIZES[:self._core.n_trees])
        self._largest_tree = max(self.tree_sizes, default=1)

    def reset(self) -> None:
        """A new generation: shadow predictions of the previous context no longer apply, and
        what earlier generations taught counts GENERATION_DECAY times as much."""
        self._core.reset(GENERATION_DECAY)

    def choose(self, chain: np.ndarray, match_n: int, n_deferred: int = 0, agreement: float = 1.0,
               depth: int | None = None) -> Choice:
        """The option with the most expected tokens per ms for this step, given the
        drafter's lookup (continuation `chain`, suffix match length `match_n`, the share of
        earlier occurrences that continued with the chain's first token; empty/0 = no
        match) and the context length the step's rows attend to (`depth`; None = the
        curve's own)."""
        rows = n_deferred + self._largest_tree + min(len(chain), self.max_chain) + 2
        if rows > len(self._costs):
            self._price_rows(rows)
        row_extra = 0.0 if depth is None else self.curve.row_extra(depth)
        return Choice(*self._core.choose(chain, match_n, agreement, n_deferred, row_extra))

    def observe(self, accepted: list[int]) -> None:
        """After a step: the tokens it produced (accepted draft tokens, then the bonus token).
        Scores every outstanding prediction against them and updates the tree stats."""
        self._core.observe(accepted)

    def learned(self) -> dict:
        """What the policy learned about this model's drafts, over all generations: kept
        between runs (one `specdec run` is one generation), so a new run starts from the
        rates the last ones measured instead of the priors. Counts are capped at
        LEARNED_CAP observations per cell, so that the rates keep following the user's work."""
        def capped(trials: list[float], hits: list[float]) -> tuple[list[float], list[float]]:
            scale = [min(1.0, LEARNED_CAP / t) if t else 1.0 for t in trials]
            return ([round(t * f, 3) for t, f in zip(trials, scale)], [round(h * f, 3) for h, f in zip(hits, scale)])

        chains = {}
        for n, unanimous, streak in _KEYS:
            trials, hits = self._core.counts(self._core.stats_key(n, unanimous, streak))
            if any(trials):
                trials, hits = capped(trials, hits)
                chains[f"{n}/{int(unanimous)}/{streak}"] = {"trials": trials, "hits": hits}
        trees = {}
        for index, size in enumerate(TREE_SIZES):
            total, count = self._core.tree_counts(index)
            if count:
                trees[str(size)] = [round(total, 3), count]
        return {"version": LEARNED_VERSION, "chains": chains, "trees": trees}

    def restore(self, learned: dict) -> None:
        """Take over what `learned()` returned in an earlier run; anything that does not fit
        this policy's tables is ignored."""
        if not isinstance(learned, dict) or learned.get("version") != LEARNED_VERSION:
            return
        for name, counts in learned.get("chains", {}).items():
            try:
                n, unanimous, streak = (int(x) for x in name.split("/"))
                if (n, bool(unanimous), streak) not in _KEYS:
                    continue
                key = self._core.stats_key(n, bool(unanimous), streak)
                trials, hits = [float(x) for x in counts["trials"]], [float(x) for x in counts["hits"]]
            except (KeyError, ValueError, TypeError):
                continue
            if len(trials) == len(hits) == MAX_DEPTH and all(0 <= h <= t for h, t in zip(hits, trials)):
                self._core.set_counts(key, np.array(trials), np.array(hits))
        for size, counts in learned.get("trees", {}).items():
            try:
                index, (total, count) = TREE_SIZES.index(int(size)), counts
                if float(count) > 0 and 0 <= float(total):
                    self._core.set_tree_counts(index, float(total), float(count))
            except (ValueError, TypeError):
                continue

    def summary(self) -> dict:
        return {"steps": self._core.steps_by_kind, "measured_curve": self.measured,
                "match_accept_by_depth": {f"n>={n},{'unanimous' if u else 'split'},streak={k}":
                                          [round(self._core.rate(self._core.stats_key(n, u, k), d), 3)
                                           for d in range(4)]
                                          for n, u, k in _KEYS},
                "tree_mean_accepted": {t: round(self._core.tree_mean(i), 3) for i, t in enumerate(TREE_SIZES)}}

    def _price_rows(self, rows: int) -> None:
        """Step cost by row count, for at least `rows` row counts, handed to the core."""
        while len(self._costs) < rows:
            self._costs.append(self.curve.step_ms(len(self._costs), self.verify_batch))
        self._core.set_costs(np.array(self._costs))


# Every statistics key as (match bucket, unanimous, streak): the names of learned() and summary().
_KEYS = [(n, unanimous, streak)
         for n in MATCH_BUCKETS for unanimous in (True, False) for streak in range(MAX_STREAK + 1)]


def _recycling_prior(tree_size: int) -> float:
    sizes = sorted(RECYCLING_PRIOR_ACCEPTED)
    return float(np.interp(tree_size, sizes, [RECYCLING_PRIOR_ACCEPTED[s] for s in sizes]))
