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
