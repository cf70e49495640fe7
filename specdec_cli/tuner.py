"""The auto-tuner (DESIGN.md section 6): this device's verification cost curve, and an
online policy that decides, step by step, how much to speculate — nothing included.

Cost curve. c(k) is the wall time of one verification step of k rows: a `llama_decode` of
k tokens with logits (split into calls of at most the model's exact verification batch,
as the Generator does) plus the top-k read-out of those rows. On a 2-core CPU it grows
almost linearly in k (DESIGN.md section 2); on a GPU it is nearly flat. Profiles are
measured by `specdec tune` and stored per (device fingerprint + threads + KV types, model
file hash) under the cache dir; the policy reads them with timing dips lifted
(CostCurve.without_dips), since an argmax over a noisy curve finds exactly its dips.

Policy. Before each step the n-gram drafter's lookup gives a continuation and the length n
of the context suffix that matched. The policy keeps acceptance statistics per drafter, per
match strength and per depth, and picks the (tree size, chain length) with the highest
expected tokens per second, E[accepted + 1] / c(rows), where (1, 0) is plain decoding;
a speculative option has to beat plain decoding by SPECULATION_MARGIN to be taken.
- Choosing the chain length by the marginal value of one more token is SpecDec++'s rule
  (Huang et al. 2024, "SpecDec++: Boosting Speculative Decoding via Adaptive Candidate
  Lengths": stop drafting once the probability of a rejection makes the next token not
  worth its cost), here with per-depth acceptance rates estimated online instead of a
  trained head, and with the measured cost curve instead of a fixed per-token cost.
- Adapting the length online from the acceptance just observed follows PEARL (Liu et al.
  2024, "Parallel Speculative Decoding with Adaptive Draft Length") and DEL (Zarch et al.
  2025, "DEL: Context-Aware Dynamic Exit Layer for Efficient Self-Speculative Decoding"),
  which pick the draft length from running acceptance statistics.
- The n-gram statistics are learned from every step, speculative or not: each step's
  lookup result is kept as a "shadow" prediction and scored against the tokens the model
  actually produces, so the policy learns how good a match of strength n is without paying
  for the drafts it decides not to verify.
- Each rate is the current generation's own count shrunk towards the rate over everything
  generated so far (worth LOCAL_WEIGHT observations): how much a prompt's continuation
  copies varies far more between prompts than between steps of one prompt. Modelled on
  Spec-Bench (65 prompts, the measured curve, no timing noise) this lifted extraction #131
  from 0.89x to 1.10x and the overall median from 1.025x to 1.032x.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .paths import cache_dir

if TYPE_CHECKING:
    from .generator import Generator

PROFILE_VERSION = 1
PREFIX_TOKENS = 300  # context length the curve is measured at (DESIGN.md section 2)
QUICK_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
FULL_SIZES = tuple(range(1, 17)) + (20, 24, 32, 40, 48, 64)
QUICK_REPEATS = 3
FULL_REPEATS = 7
DIP_WINDOW = 2  # measured sizes on each side of c(k) that say what it should be (without_dips)

# Without a stored profile the policy assumes the cost ratios c(k)/c(1) measured for
# SmolLM2-135M on a 2-core CPU (DESIGN.md section 2): nearly linear, the most conservative
# device we know. On it only strong n-gram matches pay; on a faster-scaling device this
# under-speculates but never makes decoding slower than plain. Each ratio includes the
# ~0.07 c(1) a k-row step costs the plain step after it (see measure_curve).
PRIOR_COST_RATIOS = {1: 1.0, 2: 1.7, 4: 3.0, 8: 5.7, 16: 9.3, 32: 17.5, 64: 33.6}

# Priors for the acceptance statistics, each worth PRIOR_WEIGHT observations.
PRIOR_WEIGHT = 4.0
# P(drafted token at depth d is accepted | all before it were), per n-gram match length n.
# Deliberately modest: the shadow scoring replaces them within a few dozen steps.
NGRAM_PRIOR_ACCEPT = {1: 0.25, 2: 0.4, 3: 0.5, 4: 0.6}
# Mean accepted draft nodes of a Token Recycling tree of T nodes (DESIGN.md section 2
# simulation: ~1.1 at 8-16 nodes, ~1.7 with an 80-node tree), kept below what was measured.
RECYCLING_PRIOR_ACCEPTED = {4: 0.5, 8: 0.8, 16: 1.0, 32: 1.2, 64: 1.4}
TREE_SIZES = (4, 8, 16, 32, 64)
# Drafting, laying out the tree and sharing the accepted KV cells with every sequence cost
# a speculative step 0.35-0.75 ms more than a plain one (measured: SmolLM2, 2-core CPU,
# c(1) = 12 ms; the more context, the more).
SPECULATIVE_STEP_OVERHEAD = 0.05
# A speculative option must promise this many times plain decoding's tokens per ms. The
# acceptance rates are running estimates, and the option with the highest *estimated* rate
# is biased upwards (its estimate is the maximum of several noisy ones), while a lost bet
# costs a whole extra step. Without the margin, bets that promised a few percent lost up to
# 20% on Spec-Bench's extraction prompts on a 2-core CPU (bench/RESULTS.md).
SPECULATION_MARGIN = 1.10
# How many observations the global acceptance rate counts as when it is combined with the
# current generation's own: a prompt that copies little stops paying for drafts after a
# few dozen missed predictions, whatever earlier prompts taught.
LOCAL_WEIGHT = 12.0
MAX_DEPTH = 64
MAX_STREAK = 2


# ---- cost curve ------------------------------------------------------------------------

@dataclass
class CostCurve:
    """Median step time in ms for k rows, at measured sizes; interpolated in between."""

    sizes: list[int]
    ms: list[float]

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

    def ratios(self) -> dict[int, float]:
        return {k: round(ms / self.ms[0], 3) for k, ms in zip(self.sizes, self.ms)}

    def without_dips(self) -> "CostCurve":
        """The measured curve as the policy uses it: no size cheaper than its neighbours
        say it should be.

        Each size is timed separately, and on a shared machine one of them can read 20%
        low by chance. The policy's argmax then settles on exactly that size: c(4)/c(1)
        once read 2.38 between c(3) 2.27 and c(5) 3.77, and every speculative step on 40
        MT-bench prompts went to 4 rows, losing up to 8% on prompts where plain decoding
        was right. So from k = 2 on each c(k) is raised to the least-squares line through
        its measured neighbours (two sizes each side) where it lies below it, and the curve
        is made non-decreasing. A value that reads high is kept: it can only make the
        policy skip that size. c(1), a different kind of step (no graph rebuild), is kept."""
        if len(self.sizes) < 4:
            return self
        ks = np.array(self.sizes, dtype=float)
        ms = np.array(self.ms, dtype=float)
        out = ms.copy()
        for i in range(1, len(ks)):
            lo, hi = max(1, i - DIP_WINDOW), min(len(ks), i + DIP_WINDOW + 1)
            slope, intercept = np.polyfit(ks[lo:hi], ms[lo:hi], 1)
            out[i] = max(ms[i], slope * ks[i] + intercept)
        out = np.maximum.accumulate(out)
        return CostCurve(sizes=list(self.sizes), ms=[round(float(v), 4) for v in out])


def prior_curve() -> CostCurve:
    sizes = sorted(PRIOR_COST_RATIOS)
    return CostCurve(sizes=sizes, ms=[PRIOR_COST_RATIOS[k] for k in sizes])


# ---- profiles ----------------------------------------------------------------------------

@dataclass
class Profile:
    device_key: str  # device fingerprint + threads + KV types, hashed
    device: str  # human-readable description of the same
    model_sha256: str
    model_path: str
    n_threads: int
    kv_cache: str
    verify_batch: int
    quick: bool
    created: float
    prefix_tokens: int
    curve: CostCurve

    def to_json(self) -> dict:
        data = asdict(self)
        data["version"] = PROFILE_VERSION
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Profile":
        if data.get("version") != PROFILE_VERSION:
            raise ValueError(f"profile version {data.get('version')!r}, expected {PROFILE_VERSION}")
        fields = {k: v for k, v in data.items() if k != "version"}
        curve = fields.pop("curve")
        sizes, ms = [int(k) for k in curve["sizes"]], [float(v) for v in curve["ms"]]
        if not sizes or len(sizes) != len(ms) or sizes != sorted(set(sizes)) or min(ms) <= 0:
            raise ValueError("profile cost curve is malformed")
        return cls(curve=CostCurve(sizes=sizes, ms=ms), **fields)


def profiles_dir() -> Path:
    return cache_dir() / "profiles"


def profile_path(device_key: str, model_sha256: str) -> Path:
    return profiles_dir() / f"{model_sha256[:16]}-{device_key}.json"


def device_key(fingerprint: str, n_threads: int, kv_k: str, kv_v: str) -> tuple[str, str]:
    """(short hash, readable description) of what a cost curve depends on besides the model."""
    desc = f"{fingerprint} threads={n_threads} kv={kv_k}/{kv_v}"
    return hashlib.sha256(desc.encode()).hexdigest()[:16], desc


def save_profile(profile: Profile, path: Path) -> None:
    """Atomic write: a crash never leaves half a profile behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(profile.to_json(), handle, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_profile(path: Path) -> Profile | None:
    """The stored profile, or None when there is none. A corrupt file is reported on
    stderr and treated as missing, so that the caller rebuilds it."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        _warn(f"cannot read tuner profile {path}: {exc}; ignoring it")
        return None
    try:
        return Profile.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        _warn(f"tuner profile {path} is corrupt ({exc}); it will be rebuilt")
        return None


def stored_profiles() -> list[tuple[Path, Profile | None]]:
    folder = profiles_dir()
    if not folder.is_dir():
        return []
    return [(p, load_profile(p)) for p in sorted(folder.glob("*.json"))]


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")
    sys.stderr.flush()


# ---- measuring ---------------------------------------------------------------------------

def measure_curve(generator: "Generator", sizes: tuple[int, ...], repeats: int,
                  prefix_tokens: int = PREFIX_TOKENS) -> CostCurve:
    """Median cost of a verification step of k rows for each k, after `prefix_tokens` of
    context, on the Generator's own context (same threads, KV types, batch limits).

    Measured the way the decode loop pays it. llama.cpp reuses its compute graph while
    the batch shape stays the same, so plain decoding (one row after another) is cheaper
    than a lone one-row call, and a k-row step costs its own graph build plus a rebuild
    for the plain step after it (measured: SmolLM2, 2-core CPU, +0.9 ms on a 12 ms step).
    So c(1) is a one-row call right after another one, and c(k) for k > 1 is the k-row
    call plus the next one-row call, minus c(1). Timing k-row calls alone made 2 rows look
    like 1.53 plain steps where generation paid 1.7.
    The cells it writes sit after everything the Generator keeps and are removed again."""
    from . import _native as nat
    from .drafting import MATRIX_K
    from .llama import TokenBatch

    ctx = generator.ctx
    n_seq = generator.config.n_seq_max
    all_seqs = np.arange(n_seq, dtype=np.int32)
    start = max(ctx.seq_pos_max(0) + 1, 0)
    largest = max(sizes)
    if start + prefix_tokens + largest + 1 > ctx.n_ctx:
        prefix_tokens = max(0, ctx.n_ctx - start - largest - 1)
    batch = TokenBatch(generator.config.n_batch, n_seq)
    # Any tokens do: cost does not depend on which; avoid control tokens near id 0.
    rng = np.random.default_rng(0)
    filler = rng.integers(100, min(generator.n_vocab, 30000), size=prefix_tokens + largest + 1, dtype=np.int32)
    vb = max(1, generator.verify_batch)
    base = start + prefix_tokens

    def timed_step(rows: np.ndarray, pos: int) -> float:
        t0 = time.perf_counter()
        for offset in range(0, len(rows), vb):
            part = rows[offset:offset + vb]
            batch.set_chain(part, pos + offset, all_seqs[:1], all_outputs=True)
            ctx.decode(batch)
            nat.topk_rows(ctx.logits(len(part)), MATRIX_K)
        return (time.perf_counter() - t0) * 1000

    def drop_from(pos: int) -> None:
        for s in range(n_seq):
            ctx.seq_rm(s, pos, -1)

    plain: list[float] = []
    after: dict[int, list[float]] = {k: [] for k in sizes}
    try:
        pos = start
        while pos < base:
            chunk = filler[pos - start:pos - start + min(generator.config.n_batch, base - pos)]
            batch.set_chain(chunk, pos, all_seqs, all_outputs=False)
            ctx.decode(batch)
            pos += len(chunk)
        one = filler[prefix_tokens:prefix_tokens + 1]
        order = [k for _ in range(repeats + 1) for k in sizes]  # interleaved: noise hits all sizes alike
        for i, k in enumerate(order):
            timed_step(one, base)  # makes the one-row graph the current one
            drop_from(base)
            reused = timed_step(one, base)
            drop_from(base)
            step = timed_step(filler[prefix_tokens:prefix_tokens + k], base)
            next_plain = timed_step(filler[prefix_tokens + k:prefix_tokens + k + 1], base + k)
            drop_from(base)
            if i >= len(sizes):  # the first round warms caches up and is discarded
                plain.append(reused)
                after[k].append(step + next_plain)
    finally:
        drop_from(start)
    c1 = statistics.median(plain)
    ms = [c1 if k == 1 else max(statistics.median(after[k]) - c1, c1) for k in sizes]
    return CostCurve(sizes=list(sizes), ms=[round(v, 4) for v in ms])


class Tuner:
    """Measures, stores and loads the cost profile of one Generator's model on this device."""

    def __init__(self, generator: "Generator"):
        from .devices import device_report
        from .gguf_file import file_sha256

        self.generator = generator
        cfg = generator.config
        self.n_threads = generator.ctx.n_threads
        self.kv_cache = cfg.kv_k if cfg.kv_k == cfg.kv_v else f"{cfg.kv_k}/{cfg.kv_v}"
        self.device_key, self.device = device_key(device_report().fingerprint(), self.n_threads, cfg.kv_k, cfg.kv_v)
        self.model_sha256 = file_sha256(generator.model_path)
        self.path = profile_path(self.device_key, self.model_sha256)

    def load(self) -> Profile | None:
        return load_profile(self.path)

    def measure(self, quick: bool = False) -> Profile:
        sizes = QUICK_SIZES if quick else FULL_SIZES
        curve = measure_curve(self.generator, sizes, QUICK_REPEATS if quick else FULL_REPEATS)
        profile = Profile(device_key=self.device_key, device=self.device, model_sha256=self.model_sha256,
                          model_path=str(self.generator.model_path), n_threads=self.n_threads,
                          kv_cache=self.kv_cache, verify_batch=self.generator.verify_batch, quick=quick,
                          created=round(time.time(), 3), prefix_tokens=PREFIX_TOKENS, curve=curve)
        save_profile(profile, self.path)
        return profile


def policy_for(generator: "Generator", max_tree: int, max_chain: int) -> "SpeculationPolicy":
    """The policy `--draft auto` uses: the stored profile's curve when there is one,
    else the built-in CPU prior (see PRIOR_COST_RATIOS)."""
    profile = Tuner(generator).load()
    curve = profile.curve.without_dips() if profile is not None else prior_curve()
    return SpeculationPolicy(curve, verify_batch=generator.verify_batch, max_tree=max_tree, max_chain=max_chain,
                             measured=profile is not None)


# ---- policy ------------------------------------------------------------------------------

@dataclass
class Choice:
    tree_size: int  # recycling tree nodes, root included (1 = no tree)
    draft_len: int  # n-gram chain nodes grafted onto the root
    expected_tokens: float  # E[accepted + 1]
    cost_ms: float

    @property
    def plain(self) -> bool:
        return self.tree_size == 1 and self.draft_len == 0


@dataclass
class _DepthStats:
    """Per-depth conditional acceptance counts: over everything generated so far (with a
    Beta prior), and over the current generation alone, shrunk towards the former."""

    prior: float
    trials: list[float] = field(default_factory=lambda: [0.0] * MAX_DEPTH)
    hits: list[float] = field(default_factory=lambda: [0.0] * MAX_DEPTH)
    local_trials: list[float] = field(default_factory=lambda: [0.0] * MAX_DEPTH)
    local_hits: list[float] = field(default_factory=lambda: [0.0] * MAX_DEPTH)

    def global_rate(self, depth: int) -> float:
        return (self.hits[depth] + self.prior * PRIOR_WEIGHT) / (self.trials[depth] + PRIOR_WEIGHT)

    def rate(self, depth: int) -> float:
        return ((self.local_hits[depth] + self.global_rate(depth) * LOCAL_WEIGHT)
                / (self.local_trials[depth] + LOCAL_WEIGHT))

    def add(self, depth: int, hit: bool) -> None:
        self.trials[depth] += 1
        self.local_trials[depth] += 1
        if hit:
            self.hits[depth] += 1
            self.local_hits[depth] += 1

    def reset_local(self) -> None:
        self.local_trials = [0.0] * MAX_DEPTH
        self.local_hits = [0.0] * MAX_DEPTH

    def expected_accepted(self, length: int) -> list[float]:
        """out[d] = E[accepted draft tokens] when a chain of d tokens is verified."""
        out, survive = [0.0], 1.0
        for d in range(length):
            survive *= self.rate(d)
            out.append(out[-1] + survive)
        return out


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
    bucket: tuple[int, int]
    matched: int = 0


class SpeculationPolicy:
    """Chooses each step's (tree size, chain length) by expected tokens per second."""

    def __init__(self, curve: CostCurve, *, verify_batch: int = 512, max_tree: int = 64, max_chain: int = 16,
                 measured: bool = True):
        self.curve = curve
        self.verify_batch = verify_batch
        self.measured = measured
        self._costs: list[float] = []  # step cost by row count, filled on demand
        self._draft_overhead = SPECULATIVE_STEP_OVERHEAD * curve.at(1)
        # Keyed by (match length n, how many steps in a row (0, 1, 2+) the lookup predicted
        # the token the model then produced): inside a passage being copied both are high.
        self.ngram = {(n, streak): _DepthStats(prior) for n, prior in NGRAM_PRIOR_ACCEPT.items()
                      for streak in range(MAX_STREAK + 1)}
        self._streak = 0
        self.trees = {t: _MeanStat(_recycling_prior(t)) for t in TREE_SIZES}
        self.set_limits(max_tree, max_chain)
        self._shadows: list[_Shadow] = []
        self._pending: tuple[Choice, list[int]] | None = None
        self.steps_by_kind = {"plain": 0, "ngram": 0, "tree": 0, "hybrid": 0}

    def set_limits(self, max_tree: int, max_chain: int) -> None:
        """Largest tree (nodes, root included) and n-gram chain a step may use."""
        self.max_chain = max(0, min(max_chain, MAX_DEPTH))
        self.tree_sizes = [t for t in TREE_SIZES if t <= max_tree]

    def reset(self) -> None:
        """A new generation: shadow predictions of the previous context no longer apply."""
        self._shadows.clear()
        self._pending = None
        self._streak = 0
        for stats in self.ngram.values():
            stats.reset_local()

    def choose(self, chain: np.ndarray, match_n: int, n_deferred: int = 0) -> Choice:
        """The option with the most expected tokens per ms for this step, given the n-gram
        lookup (continuation `chain`, suffix match length `match_n`; empty/0 = no match)."""
        chain_tokens = [int(t) for t in chain[:self.max_chain]]
        bucket = (self._match_bucket(match_n), min(self._streak, MAX_STREAK)) if chain_tokens else None
        if bucket:
            self._shadows.append(_Shadow(chain_tokens, bucket))
        gains = self.ngram[bucket].expected_accepted(len(chain_tokens)) if bucket else [0.0]
        first_hit = self.ngram[bucket].rate(0) if bucket else 0.0
        # Plain floats in the loop: this runs every step, next to a ~13 ms decode, and on
        # most steps of most prompts it ends at plain decoding.
        costs = self._costs_up_to(n_deferred + max(self.tree_sizes, default=1) + len(gains))
        overhead = self._draft_overhead
        best_rate, best = SPECULATION_MARGIN / costs[n_deferred + 1], (1, 0, 1.0)
        for t, tree_gain in [(1, 0.0)] + [(t, self.trees[t].mean()) for t in self.tree_sizes]:
            first_d = 0 if t > 1 else 1
            if first_d >= len(gains):
                continue
            # No chain length with this tree expects more than the longest chain plus the
            # whole tree, nor costs less than the cheapest of their row counts: when even
            # that bound loses, skip the tree.
            cheapest = min(costs[n_deferred + t + first_d:n_deferred + t + len(gains)])
            if (1.0 + gains[-1] + tree_gain) / (cheapest + overhead) <= best_rate:
                continue
            for d in range(first_d, len(gains)):
                # A tree's alternatives only matter when the chain's first token is rejected.
                expected = 1.0 + gains[d] + ((1.0 - first_hit) if d else 1.0) * tree_gain
                rate = expected / (costs[n_deferred + t + d] + overhead)
                if rate > best_rate:
                    best_rate, best = rate, (t, d, expected)
        t, d, expected = best
        choice = Choice(tree_size=t, draft_len=d, expected_tokens=expected,
                        cost_ms=costs[n_deferred + t + d] + (overhead if t + d > 1 else 0.0))
        self._pending = (choice, chain_tokens[:d])
        return choice

    def observe(self, accepted: list[int]) -> None:
        """After a step: the tokens it produced (accepted draft tokens, then the bonus token).
        Scores every outstanding n-gram prediction against them and updates the tree stats."""
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

    def summary(self) -> dict:
        return {"steps": dict(self.steps_by_kind), "measured_curve": self.measured,
                "ngram_accept_by_depth": {f"n={n},streak={k}": [round(s.rate(d), 3) for d in range(4)]
                                          for (n, k), s in self.ngram.items()},
                "tree_mean_accepted": {t: round(s.mean(), 3) for t, s in self.trees.items()}}

    # ---- internals ---------------------------------------------------------------------

    def _costs_up_to(self, rows: int) -> list[float]:
        """Step cost by row count, at least up to `rows`."""
        while rows >= len(self._costs):
            self._costs.append(self.curve.step_ms(len(self._costs), self.verify_batch))
        return self._costs

    def _match_bucket(self, match_n: int) -> int:
        return min(max(int(match_n), 1), max(NGRAM_PRIOR_ACCEPT))

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


def _recycling_prior(tree_size: int) -> float:
    sizes = sorted(RECYCLING_PRIOR_ACCEPTED)
    return float(np.interp(tree_size, sizes, [RECYCLING_PRIOR_ACCEPTED[s] for s in sizes]))
