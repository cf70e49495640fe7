"""The auto-tuner: cost profiles (measure, store, reload, rebuild when corrupt) and the
speculation policy's choices on synthetic cost curves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from specdec_cli import tuner
from specdec_cli.tuner import CostCurve, Profile, SpeculationPolicy, load_profile, save_profile

NO_MATCH = np.zeros(0, dtype=np.int32)
CHAIN = np.arange(100, 116, dtype=np.int32)


def linear_curve() -> CostCurve:
    """Every row costs as much as the first: nothing can pay."""
    return CostCurve(sizes=[1, 64], ms=[10.0, 640.0])


def flat_curve() -> CostCurve:
    """A GPU-like curve: 64 rows cost barely more than one."""
    return CostCurve(sizes=[1, 16, 64], ms=[10.0, 10.5, 12.0])


def teach_ngram(policy: SpeculationPolicy, match_n: int, accept: float, steps: int = 200) -> None:
    """Feed shadow predictions whose tokens are right with probability `accept` per depth."""
    rng = np.random.default_rng(1)
    for _ in range(steps):
        policy.choose(CHAIN[:8], match_n)
        produced = []
        for tok in CHAIN[:8]:
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
    with_match = policy.choose(CHAIN, 4)
    assert with_match.tree_size >= 16 and with_match.draft_len >= 8


def test_policy_speculates_on_strong_matches_only_on_cpu_curve() -> None:
    policy = SpeculationPolicy(tuner.prior_curve(), verify_batch=32, max_tree=16, max_chain=8)
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
    policy = SpeculationPolicy(tuner.prior_curve(), verify_batch=32, max_tree=16, max_chain=8)
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


def exhaustive_choice(policy: SpeculationPolicy, chain: np.ndarray, match_n: int, n_deferred: int) -> tuple[int, int]:
    """Every (tree, chain length) option scored without pruning: the reference for choose()."""
    chain = chain[:policy.max_chain]
    stats = policy.ngram[(policy._match_bucket(match_n), min(policy._streak, tuner.MAX_STREAK))] if len(chain) else None
    gains = stats.expected_accepted(len(chain)) if stats else [0.0]
    first_hit = stats.rate(0) if stats else 0.0

    def cost(rows: int) -> float:
        return policy.curve.step_ms(rows, policy.verify_batch)

    best_rate, best = tuner.SPECULATION_MARGIN / cost(n_deferred + 1), (1, 0)
    for t, tree_gain in [(1, 0.0)] + [(t, policy.trees[t].mean()) for t in policy.tree_sizes]:
        for d in range(0 if t > 1 else 1, len(gains)):
            expected = 1.0 + gains[d] + ((1.0 - first_hit) if d else 1.0) * tree_gain
            rate = expected / (cost(n_deferred + t + d) + policy._draft_overhead)
            if rate > best_rate:
                best_rate, best = rate, (t, d)
    return best


def test_policy_pruned_search_picks_what_the_exhaustive_one_does() -> None:
    """choose() skips trees whose best case already loses; on random (also non-monotone)
    curves and acceptance histories it must still pick the option a full search picks."""
    rng = np.random.default_rng(7)
    picked = set()
    for trial in range(60):
        sizes = [1, 2, 4, 8, 16, 32, 64]
        ratios = np.concatenate([[1.0], np.sort(rng.uniform(1.0, 1.0 + 0.9 * np.array(sizes[1:]) * rng.uniform(0.05, 1.2)))])
        ratios = ratios * rng.uniform(0.9, 1.1, size=len(ratios))  # measurement noise
        policy = SpeculationPolicy(CostCurve(sizes=sizes, ms=list(10.0 * ratios)), verify_batch=int(rng.choice([8, 64])),
                                   max_tree=int(rng.choice([1, 16, 64])), max_chain=int(rng.integers(0, 17)))
        teach_ngram(policy, int(rng.integers(1, 5)), accept=float(rng.uniform(0.2, 0.99)), steps=50)
        for t in policy.tree_sizes:
            policy.trees[t].add(float(rng.uniform(0, 4)))
        for _ in range(5):
            match_n = int(rng.integers(0, 5))
            chain = CHAIN[:int(rng.integers(1, 17))] if match_n else NO_MATCH
            n_deferred = int(rng.choice([0, 0, 1, 3]))
            expected = exhaustive_choice(policy, chain, match_n, n_deferred)
            choice = policy.choose(chain, match_n, n_deferred=n_deferred)
            assert (choice.tree_size, choice.draft_len) == expected
            picked.add(expected)
            policy.observe([int(chain[0]) if len(chain) else 1, 2])
    assert (1, 0) in picked and len(picked) >= 5  # the trials reach plain and speculative choices


def test_policy_respects_limits() -> None:
    policy = SpeculationPolicy(flat_curve(), verify_batch=64, max_tree=8, max_chain=4)
    choice = policy.choose(CHAIN, 4)
    assert choice.tree_size <= 8 and choice.draft_len <= 4


def test_cost_curve_splits_into_verify_batches() -> None:
    curve = CostCurve(sizes=[1, 8], ms=[1.0, 8.0])
    assert curve.at(4) == pytest.approx(4.0)
    assert curve.step_ms(20, verify_batch=8) == pytest.approx(2 * 8.0 + 4.0)
    assert curve.at(16) == pytest.approx(16.0)  # linear extrapolation


def cpu_curve_with_dip() -> tuple[CostCurve, CostCurve]:
    """A 2-core-CPU-like curve (each row +0.6 c(1) after the 2-row graph rebuild), and the
    same curve with c(4) timed 21% low, as a busy machine does now and then."""
    sizes = [1, 2, 3, 4, 5, 6, 7, 8, 12, 16]
    true = [10.0] + [4.0 + 6.0 * k for k in sizes[1:]]
    dipped = list(true)
    dipped[sizes.index(4)] = 22.0
    return CostCurve(sizes=sizes, ms=true), CostCurve(sizes=sizes, ms=dipped)


def test_without_dips_lifts_a_low_reading_and_keeps_the_rest() -> None:
    true, dipped = cpu_curve_with_dip()
    assert true.without_dips() == true  # a straight curve is left alone
    lifted = dipped.without_dips()
    assert lifted.at(4) == pytest.approx(true.at(4), rel=0.05)
    assert all(a >= b for a, b in zip(lifted.ms, dipped.ms))  # nothing is lowered
    assert lifted.ms == sorted(lifted.ms)
    gpu = CostCurve(sizes=[1, 2, 4, 8, 16, 32, 64], ms=[10.0, 10.6, 10.7, 10.9, 11.5, 14.0, 21.0])
    assert gpu.without_dips().at(8) < 1.1 * gpu.at(8)  # a flat curve stays flat


def test_policy_does_not_bet_on_a_dip_once_it_is_lifted() -> None:
    """Matches right 80% of the time per token: 3 drafted tokens are worth it only if
    4 rows cost what the dip says; on the true curve and on the lifted one, plain wins."""
    true, dipped = cpu_curve_with_dip()
    choices = {}
    for name, curve in (("true", true), ("dipped", dipped), ("lifted", dipped.without_dips())):
        policy = SpeculationPolicy(curve, verify_batch=32, max_tree=16, max_chain=8)
        teach_ngram(policy, 4, accept=0.8)
        choices[name] = policy.choose(CHAIN, 4)
    assert (choices["dipped"].tree_size, choices["dipped"].draft_len) == (1, 3)
    assert choices["true"].plain and choices["lifted"].plain


def _profile() -> Profile:
    return Profile(device_key="abc", device="cpu threads=2 kv=f16/q8_0", model_sha256="0" * 64,
                   model_path="/m.gguf", n_threads=2, kv_cache="f16/q8_0", verify_batch=32, quick=True,
                   created=1.5, prefix_tokens=300, curve=CostCurve(sizes=[1, 2, 4], ms=[13.0, 21.0, 37.5]))


def test_profile_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "profiles" / "p.json"
    save_profile(_profile(), path)
    assert load_profile(path) == _profile()
    assert [p.name for p in path.parent.iterdir()] == ["p.json"]  # no temporary file left behind


@pytest.mark.parametrize("content", ["{not json", json.dumps({"version": 1}), json.dumps([1, 2]),
                                     json.dumps({**_profile().to_json(), "curve": {"sizes": [2, 1], "ms": [1, 2]}})])
def test_corrupt_profile_is_ignored_with_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 content: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(content)
    assert load_profile(path) is None
    assert "corrupt" in capsys.readouterr().err


@pytest.fixture(scope="module")
def smollm2_generator(smollm2_gguf: Path, shared_cache_dir: Path):
    from specdec_cli.generator import EngineConfig, Generator

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPECDEC_CACHE_DIR", str(shared_cache_dir))
        gen = Generator(smollm2_gguf, EngineConfig(n_ctx=1024))
        yield gen
        gen.close()


def test_corrupt_profile_rebuilt(smollm2_generator, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(tuner, "QUICK_SIZES", (1, 2, 4))
    monkeypatch.setattr(tuner, "QUICK_REPEATS", 1)
    tune = tuner.Tuner(smollm2_generator)
    tune.path.parent.mkdir(parents=True, exist_ok=True)
    tune.path.write_text("garbage")
    policy = tuner.policy_for(smollm2_generator, max_tree=16, max_chain=8)
    assert not policy.measured  # fell back to the built-in prior
    assert "rebuilt" in capsys.readouterr().err
    profile = tune.measure(quick=True)
    assert tune.load() == profile
    assert profile.curve.sizes == [1, 2, 4] and all(ms > 0 for ms in profile.curve.ms)
    used = tuner.policy_for(smollm2_generator, max_tree=16, max_chain=8)
    assert used.measured and used.curve == profile.curve.without_dips()


def test_auto_output_equals_plain(smollm2_generator) -> None:
    from specdec_cli.drafting import DraftSettings

    gen = smollm2_generator
    text = ("Repeat this list exactly: apples, pears, plums, cherries, grapes, lemons, limes, figs. "
            "Now repeat it again: apples, pears, plums, cherries, grapes, lemons, limes, figs.")
    prompt = gen.tokenize(gen.render_chat([("user", text)]))
    plain = gen.generate(prompt, max_tokens=48, draft=DraftSettings(mode="none"))
    auto = gen.generate(prompt, max_tokens=48, draft=DraftSettings(mode="auto", tree_size=16, draft_len=8))
    assert auto.tokens == plain.tokens
    assert auto.stats.draft == "auto"


def test_tune_quick_json_cli(run_specdec) -> None:
    result = run_specdec("tune", "--quick", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["quick"] is True and doc["curve"]["sizes"][0] == 1
    assert len(doc["curve"]["ms"]) == len(doc["curve"]["sizes"]) and min(doc["curve"]["ms"]) > 0
    assert doc["n_threads"] >= 1 and len(doc["model_sha256"]) == 64
    measured, used = doc["curve"]["ratios"], doc["curve"]["policy_ratios"]
    assert used.keys() == measured.keys() and all(used[k] >= measured[k] for k in measured)
    shown = run_specdec("tune", "--show", "--json")
    assert shown.returncode == 0, shown.stderr
    assert any(p["model_sha256"] == doc["model_sha256"] for p in json.loads(shown.stdout))
