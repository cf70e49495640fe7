"""bench/policy_sim.py replays drafting rules over recorded outputs: its accounting must be
right for its comparisons to mean anything."""

import numpy as np

from repo_scripts import load_script
from specdec_cli.policy import CostCurve, SpeculationPolicy


def copy_record() -> dict:
    """An answer that repeats 120 tokens of its prompt, with one changed token at 60."""
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 5000, size=300).tolist()
    output = prompt[100:220]
    output[60] = 9999
    return {"prompt": prompt, "output": output}


CURVE = CostCurve(sizes=[1, 4, 16, 32, 64], ms=[10.0, 25.0, 70.0, 130.0, 250.0])


def test_replay_accounts_for_every_token():
    sim = load_script("bench/policy_sim.py")
    record = copy_record()
    plain = sim.replay(record, sim.FixedRule(10**9, 0), CURVE)
    assert plain == {"ms": 1200.0, "steps": 120, "rows": 120, "tokens": 120, "plain_ms": 1200.0}
    copied = sim.replay(record, sim.FixedRule(12, 48), CURVE)
    assert copied["tokens"] == 120 and copied["steps"] < 30  # long matches draft 48 at a time
    assert copied["rows"] >= copied["tokens"] - copied["steps"]


def test_oracle_bounds_the_rules():
    sim = load_script("bench/policy_sim.py")
    record = copy_record()
    oracle = sim.replay(record, None, CURVE, oracle=True)
    rules = [sim.FixedRule(12, 48), sim.FixedRule(24, 64, min_known=48),
             sim.PolicyRule(SpeculationPolicy(CURVE, verify_batch=512, max_tree=1, max_chain=32))]
    for rule in rules:
        run = sim.replay(record, rule, CURVE)
        assert run["ms"] >= oracle["ms"] - 1e-6
    # It never drafts a token that fails; only the last step may verify one row more than
    # it keeps, where the recording ends (the length limit) before the step's bonus token.
    assert oracle["tokens"] <= oracle["rows"] <= oracle["tokens"] + 1
