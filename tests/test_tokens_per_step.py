"""Tokens per step, defined once (specdec_cli/metrics.py): every token a step emits counts,
the end-of-generation token included, so plain decoding reads exactly 1.00 (issue 18, item
8: it used to read 0.91 when the last step emitted the end-of-sequence token)."""

from __future__ import annotations

import json

import pytest

from specdec_cli import metrics


def test_plain_steps_read_one() -> None:
    assert metrics.tokens_per_step(11, 11) == 1.0
    assert metrics.tokens_per_step(0, 0) == 0.0


@pytest.mark.slow
def test_plain_decoding_that_stops_reads_exactly_one(run_specdec) -> None:
    result = run_specdec("run", "Say hi.", "--draft", "none", "--max-tokens", "96", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["finish_reason"] == "stop"  # the last step emitted the end-of-sequence token
    stats = doc["stats"]
    assert stats["steps"] == stats["n_generated"] + 1
    assert stats["tokens_per_step"] == 1.0


@pytest.mark.slow
def test_no_step_drafts_past_max_tokens(smollm2_gguf) -> None:
    """A step emits its accepted draft plus one token, so a chain longer than the tokens
    still wanted can only waste rows (llama-server caps its drafts the same way). On a
    prompt the model continues by copying, the last step's chain is cut to fit, and the
    output is the same as plain decoding's."""
    import numpy as np

    from specdec_cli.drafting import DraftSettings
    from specdec_cli.generator import Generator
    from specdec_cli.options import EngineConfig

    gen = Generator(smollm2_gguf, EngineConfig(n_ctx=1024, exact=True))
    steps: list[tuple[int, int, int]] = []  # (tokens still wanted, chain length, tree size)
    step = gen.verifier.step

    def recording_step(deferred, root, n_past, mode, tree_size, chain, *args, position, **kwargs):
        steps.append((max_tokens - position, len(chain), tree_size))
        return step(deferred, root, n_past, mode, tree_size, chain, *args, position=position, **kwargs)

    try:
        prompt = np.tile(np.arange(1000, 1040, dtype=np.int32), 5)  # a repeated run: copied on
        max_tokens = 21
        plain = gen.generate(prompt, max_tokens=max_tokens, draft=DraftSettings(mode="none"))
        gen.verifier.step = recording_step
        drafted = gen.generate(prompt, max_tokens=max_tokens, draft=DraftSettings(mode="suffix"))
    finally:
        gen.close()
    assert drafted.tokens == plain.tokens and len(drafted.tokens) == max_tokens
    assert all(chain <= wanted - 1 for wanted, chain, _ in steps), steps
    assert all(tree == 1 for wanted, _, tree in steps if wanted == 1), steps
    cap = DraftSettings(mode="suffix").chain_cap
    assert any(0 < chain == wanted - 1 < cap for wanted, chain, _ in steps), steps  # the cap bit
