"""The speculation policy (policy.py) on synthetic cost curves: plain where nothing pays,
long chains on strong matches where the curve has a GEMM regime, trees on flat curves,
and the native core deciding what its Python reference decides. No model is loaded."""

from __future__ import annotations

import numpy as np
import pytest

from specdec_cli import policy as pol
from specdec_cli.policy import CostCurve, SpeculationPolicy, match_bucket

from reference import ReferencePolicy

NO_MATCH = np.zeros(0, dtype=np.int32)
CHAIN = np.arange(100, 164, dtype=np.int32)
GENERATION_DECAY = pol.GENERATION_DECAY


@pytest.fixture(autouse=True)
def one_step_generations(monkeypatch):
    """teach_ngram makes every step a generation of its own, where real ones run ~100
    steps: the fading of older generations would leave ~10 steps' evidence. Off here; on
    in the test about it."""
    monkeypatch.setattr(pol, "GENERATION_DECAY", 1.0)


def linear_curve() -> CostCurve:
    """Every row costs as much as the first: nothing can pay."""
    return CostCurve(sizes=[1, 64], ms=[10.0, 640.0])


def flat_curve() -> CostCurve:
    """A GPU-like curve: 64 rows cost barely more than one."""
    return CostCurve(sizes=[1, 16, 64], ms=[10.0, 10.5, 12.0])


def teach_ngram(policy: SpeculationPolicy, match_n: int, accept: float, steps: int = 200, length: int = 8) -> None:
    """Feed shadow predictions whose tokens are right with probability `accept` per depth."""
    rng = np.random.default_rng(1)
    for _ in range(steps):
        policy.choose(CHAIN[:length], match_n)
        produced = []
        for tok in CHAIN[:length]:
            if rng.random() < accept:
                produced.append(int(tok))
            else:
                produced.append(1)
                break
        policy.observe(produced)
        policy.reset()


@pytest.mark.parametrize("match_n", [0, 1, 2, 3, 4])
def test_policy_plain_when_nothing_pays(match_n: int) -> None:
    policy = SpeculationPolicy(linear_curve(), verify_batch=64, max_tree=64, max_chain=16)
    teach_ngram(policy, max(match_n, 1), accept=0.8)
    choice = policy.choose(CHAIN if match_n else NO_MATCH, match_n)
    assert choice.plain
    assert (choice.tree_size, choice.draft_len) == (1, 0)


def test_policy_large_tree_on_flat_curve() -> None:
    policy = SpeculationPolicy(flat_curve(), verify_batch=64, max_tree=64, max_chain=16)
    choice = policy.choose(NO_MATCH, 0)
    assert choice.tree_size >= 32 and choice.draft_len == 0
    # With a match the chain comes first; the tree only pays when the chain's first token
    # misses (~30% at a 4-token match), so it is smaller, but both are drafted.
    with_match = policy.choose(CHAIN, 4)
    assert with_match.tree_size >= 8 and with_match.draft_len >= 8


def test_policy_speculates_on_strong_matches_only_on_cpu_curve() -> None:
    policy = SpeculationPolicy(pol.prior_curve(), verify_batch=32, max_tree=16, max_chain=8)
    teach_ngram(policy, 4, accept=0.95)
    teach_ngram(policy, 1, accept=0.3)
    strong = policy.choose(CHAIN, 4)
    assert strong.tree_size == 1 and strong.draft_len >= 2
    assert policy.choose(CHAIN, 1).plain
    assert policy.choose(NO_MATCH, 0).plain


def test_policy_plain_when_the_gain_is_within_the_margin() -> None:
    """Each drafted token costs half a row: a 60%-right match promises at most ~4% more
    tokens per ms than plain decoding, inside the margin; a 95%-right match pays."""
    curve = CostCurve(sizes=[1, 2, 64], ms=[10.0, 15.0, 325.0])
    weak = SpeculationPolicy(curve, verify_batch=64, max_tree=64, max_chain=16)
    teach_ngram(weak, 4, accept=0.6)
    assert weak.choose(CHAIN, 4).plain
    strong = SpeculationPolicy(curve, verify_batch=64, max_tree=64, max_chain=16)
    teach_ngram(strong, 4, accept=0.95)
    choice = strong.choose(CHAIN, 4)
    assert choice.tree_size == 1 and choice.draft_len >= 1


def test_policy_stops_speculating_when_this_generation_keeps_missing() -> None:
    """Earlier prompts taught that 4-token matches are right 98% of the time; in a prompt
    where they keep being wrong the policy falls back to plain decoding within the
    generation, and starts the next generation from the global rate again."""
    policy = SpeculationPolicy(pol.prior_curve(), verify_batch=32, max_tree=16, max_chain=8)
    teach_ngram(policy, 4, accept=0.98, steps=1000)
    assert not policy.choose(CHAIN, 4).plain
    policy.observe([1])
    for _ in range(30):
        policy.choose(CHAIN, 4)
        policy.observe([1])
    assert policy.choose(CHAIN, 4).plain
    policy.observe([1])
    policy.reset()
    assert not policy.choose(CHAIN, 4).plain


def test_policy_rates_follow_recent_work(monkeypatch) -> None:
    """A thousand generations where 4-token matches were right 98% of the time (edits),
    then thirty where they are right 20% of the time (chat): the policy stops betting on
    them. Without the fading of older generations the thousand would outvote the thirty
    (980 + 6 hits in 1030 trials: 96%)."""
    monkeypatch.setattr(pol, "GENERATION_DECAY", GENERATION_DECAY)  # the fading this test is about

    def first_token_rate(policy: SpeculationPolicy) -> float:
        return policy.summary()["match_accept_by_depth"]["n>=4,unanimous,streak=0"][0]

    policy = SpeculationPolicy(pol.prior_curve(), verify_batch=32, max_tree=16, max_chain=8)
    teach_ngram(policy, 4, accept=0.98, steps=1000)
    assert first_token_rate(policy) > 0.85
    teach_ngram(policy, 4, accept=0.2, steps=30)
    assert first_token_rate(policy) < 0.5
    assert policy.choose(CHAIN, 4).plain


def test_policy_decides_what_its_reference_decides(monkeypatch) -> None:
    """The native core (pruned search, cached rates) against tests/reference.py (exhaustive
    search, rates recomputed), step by step: on random (also non-monotone) curves, limits,
    learned tree means and acceptance histories, with tokens deferred, at context lengths
    shorter and longer than the curve's (a per-row term of either sign), over generations
    that fade what earlier ones taught. Every choice, expected token count and cost must be
    equal to the last bit, and so must the counts learned."""
    monkeypatch.setattr(pol, "GENERATION_DECAY", GENERATION_DECAY)
    rng = np.random.default_rng(7)
    picked = set()
    for trial in range(60):
        sizes = [1, 2, 4, 8, 16, 32, 64]
        ratios = np.concatenate([[1.0], np.sort(rng.uniform(1.0, 1.0 + 0.9 * np.array(sizes[1:]) * rng.uniform(0.05, 1.2)))])
        ratios = ratios * rng.uniform(0.9, 1.1, size=len(ratios))  # measurement noise
        curve = CostCurve(sizes=sizes, ms=list(10.0 * ratios), depth=300, row_cell_ms=float(rng.choice([0.0, 0.003])))
        limits = dict(verify_batch=int(rng.choice([8, 64])), max_tree=int(rng.choice([1, 16, 64])),
                      max_chain=int(rng.integers(0, 65)))
        policy, ref = SpeculationPolicy(curve, **limits), ReferencePolicy(curve, **limits)
        trees = {str(t): [float(rng.uniform(0, 40)), float(rng.integers(1, 20))] for t in pol.TREE_SIZES}
        policy.restore({"version": pol.LEARNED_VERSION, "trees": trees})
        ref.trees = {int(t): list(v) for t, v in trees.items()}
        accept = float(rng.uniform(0.2, 0.99))
        for step in range(120):
            if step % 40 == 0:
                policy.reset()
                ref.reset()
            match_n = int(rng.integers(0, 70))
            # Short chains often: there a tree alone (no chain) can beat every chain length.
            chain = CHAIN[:int(rng.choice([1, 2, 3, rng.integers(1, 65)]))] if match_n else NO_MATCH
            n_deferred = int(rng.choice([0, 0, 1, 3]))
            depth = None if trial % 3 == 0 else int(rng.integers(10, 3000))
            agreement = float(rng.choice([1.0, 0.5]))
            expected = ref.choose(chain.tolist(), match_n, n_deferred, agreement, depth)
            choice = policy.choose(chain, match_n, n_deferred=n_deferred, agreement=agreement, depth=depth)
            assert (choice.tree_size, choice.draft_len, choice.expected_tokens, choice.cost_ms) == expected
            picked.add(expected[:2])
            produced = [int(t) if rng.random() < accept else 1 for t in CHAIN[:int(rng.integers(1, 20))]]
            policy.observe(produced)
            ref.observe(produced)
        chains = {f"{n}/{int(u)}/{k}": {"trials": [round(t, 3) for t in c["trials"]],
                                         "hits": [round(h, 3) for h in c["hits"]]}
                  for (n, u, k), c in ref.counts.items() if any(c["trials"])}
        assert policy.learned()["chains"] == chains
        assert policy.summary()["steps"] == ref.steps
    assert (1, 0) in picked and len(picked) >= 5  # the trials reach plain and speculative choices
    assert any(t > 1 for t, _ in picked)  # and trees


def test_policy_respects_limits() -> None:
    policy = SpeculationPolicy(flat_curve(), verify_batch=64, max_tree=8, max_chain=4)
    choice = policy.choose(CHAIN, 4)
    assert choice.tree_size <= 8 and choice.draft_len <= 4


def test_cost_curve_splits_into_verify_batches() -> None:
    curve = CostCurve(sizes=[1, 8], ms=[1.0, 8.0])
    assert curve.at(4) == pytest.approx(4.0)
    assert curve.step_ms(20, verify_batch=8) == pytest.approx(2 * 8.0 + 4.0)
    assert curve.at(16) == pytest.approx(16.0)  # linear extrapolation


def gemm_curve() -> CostCurve:
    """Qwen2.5-Coder-1.5B Q4_K_M with llama.cpp's repacked weights on a 2-core CPU (ms):
    per-row cost falls 2.8x between 8 and 16 rows, and 16 rows cost less than 15."""
    sizes = [1, 2, 4, 8, 12, 15, 16, 24, 32, 48, 64]
    ms = [26.3, 49.3, 84.1, 132.5, 175.0, 198.0, 152.3, 215.0, 265.3, 370.0, 460.9]
    return CostCurve(sizes=sizes, ms=ms)


def test_cost_curve_prices_rows_by_context_length() -> None:
    """Every row attends to every cell: 1000 cells beyond where the curve was measured add
    row_cell_ms * 1000 per row; shorter contexts are cheaper, never below half of c(1)."""
    curve = CostCurve(sizes=[1, 4], ms=[10.0, 25.0], depth=300, row_cell_ms=0.002)
    assert curve.row_extra(300) == 0.0
    assert curve.row_extra(1300) == pytest.approx(2.0)
    assert curve.row_extra(0) == pytest.approx(-0.6)
    assert CostCurve(sizes=[1], ms=[10.0], depth=5000, row_cell_ms=0.01).row_extra(0) == -5.0
    assert CostCurve(sizes=[1], ms=[10.0]).row_extra(100_000) == 0.0  # profiles from before the term


def test_policy_bets_less_deep_in_a_long_context() -> None:
    """The same confident match: drafted after 300 cells of context, where rows are cheap,
    not after 10,300, where each row's attention costs ten times the step it was measured
    at (a small model's steps on a long document)."""
    curve = CostCurve(sizes=[1, 2, 4, 8, 16], ms=[10.0, 12.0, 14.0, 18.0, 26.0], depth=300, row_cell_ms=0.01)
    policy = SpeculationPolicy(curve, verify_batch=64, max_tree=1, max_chain=8)
    teach_ngram(policy, 4, accept=0.9)
    assert policy.choose(CHAIN, 4, depth=300).draft_len >= 4
    assert policy.choose(CHAIN, 4).draft_len >= 4  # no depth: the curve as measured
    assert policy.choose(CHAIN, 4, depth=10_300).plain


def test_match_buckets_separate_long_matches_from_short_ones() -> None:
    assert [match_bucket(n) for n in (1, 4, 5, 7, 12, 40, 500)] == [1, 4, 4, 6, 12, 32, 64]


def test_policy_takes_a_long_chain_at_the_gemm_step_on_a_confident_long_match() -> None:
    """A 40-token match whose tokens are right 97% of the time: on the repacked-weights
    curve 16 rows (15 drafted tokens) cost less than 15, and the policy lands there or
    beyond; a 2-token match with the same teaching budget but 40% accuracy stays plain."""
    policy = SpeculationPolicy(gemm_curve(), verify_batch=512, max_tree=16, max_chain=32)
    teach_ngram(policy, 40, accept=0.97, length=32)
    teach_ngram(policy, 2, accept=0.4, length=32)
    strong = policy.choose(CHAIN[:32], 40)
    assert strong.tree_size == 1 and strong.draft_len >= 15 and strong.draft_len != 14
    assert policy.choose(CHAIN[:32], 2).plain


def test_policy_long_chains_are_not_taken_on_the_same_match_with_a_linear_curve() -> None:
    policy = SpeculationPolicy(linear_curve(), verify_batch=512, max_tree=16, max_chain=32)
    teach_ngram(policy, 40, accept=0.97, length=32)
    assert policy.choose(CHAIN[:32], 40).plain


def test_learned_rates_carry_over_to_a_new_run() -> None:
    """One `specdec run` is one generation: what it learned is kept for the next run."""
    taught = SpeculationPolicy(gemm_curve(), verify_batch=512, max_tree=16, max_chain=32)
    teach_ngram(taught, 40, accept=0.97, length=32)
    fresh = SpeculationPolicy(gemm_curve(), verify_batch=512, max_tree=16, max_chain=32)
    fresh.restore(taught.learned())
    assert fresh.choose(CHAIN[:32], 40).draft_len == taught.choose(CHAIN[:32], 40).draft_len >= 15
    untouched = SpeculationPolicy(gemm_curve(), verify_batch=512, max_tree=16, max_chain=32)
    for junk in ({}, {"version": 99}, {"version": pol.LEARNED_VERSION, "chains": {"x": 1, "40/1/0": {"trials": [1]}},
                                       "trees": {"16": "y", "3": [1, 1]}}):
        untouched.restore(junk)  # ignored, no exception
    assert untouched.learned() == SpeculationPolicy(gemm_curve()).learned()
