"""The per-model history of earlier prompts and outputs (history.py): bounded, persistent,
crash-safe, and a source of drafts that never changes what is generated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from specdec_cli import history as hist
from specdec_cli.history import History


def _doc(seed: int, n: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 5000, size=n).astype(np.int32)


def test_documents_persist_and_duplicates_are_kept_once(tmp_path: Path) -> None:
    path = tmp_path / "h.tokens"
    first = History(path)
    first.add([_doc(1), _doc(2), _doc(1), _doc(3, n=hist.MIN_DOCUMENT - 1)])  # a repeat and a too-short one
    again = History(path)
    assert [d.tolist() for d in again.documents()] == [_doc(1).tolist(), _doc(2).tolist()]
    again.add([_doc(2), _doc(4)])
    assert History(path).stats().documents == 3


def test_the_history_is_bounded_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "h.tokens"
    history = History(path, max_tokens=100)
    for seed in range(6):  # 240 tokens: past 100 * SLACK the oldest go
        history.add([_doc(seed)])
    kept = History(path, max_tokens=100).documents()
    assert sum(len(d) for d in kept) <= 100 * hist.SLACK
    assert kept[-1].tolist() == _doc(5).tolist() and _doc(0).tolist() not in [d.tolist() for d in kept]


def test_a_torn_last_record_is_dropped_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "h.tokens"
    History(path).add([_doc(1), _doc(2)])
    path.write_bytes(path.read_bytes()[:-7])  # a crash in the middle of the last append
    loaded = History(path).documents()
    assert [d.tolist() for d in loaded] == [_doc(1).tolist()]
    assert "damaged record" in capsys.readouterr().err
    assert [d.tolist() for d in History(path).documents()] == [_doc(1).tolist()]  # rewritten clean, no warning
    assert capsys.readouterr().err == ""
    assert [p.name for p in tmp_path.iterdir()] == ["h.tokens"]  # no temporary file left behind


def test_a_file_that_is_not_a_history_starts_afresh(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "h.tokens"
    path.write_text("garbage")
    history = History(path)
    assert history.documents() == []
    assert "not a specdec history" in capsys.readouterr().err
    history.add([_doc(1)])
    assert History(path).stats().documents == 1


def test_only_documents_sharing_text_with_the_prompt_are_indexed(tmp_path: Path) -> None:
    history = History(tmp_path / "h.tokens")
    related, unrelated = _doc(1, n=200), _doc(2, n=200)
    history.add([related, unrelated])
    prompt = np.concatenate([_doc(9, n=30), related[50:80]])
    automaton = history.automaton_for(prompt)
    assert automaton is not None and automaton.n_documents == 1 and len(automaton) == 201
    automaton.follow(prompt)
    tokens, _, match_length, _ = automaton.lookup_followed(16)
    assert match_length == 30 and tokens.tolist() == related[80:96].tolist()
    assert history.automaton_for(_doc(7, n=50)) is None


@pytest.mark.slow
def test_cli_history_drafts_from_an_earlier_run_and_output_is_unchanged(run_specdec, tmp_path: Path) -> None:
    """Exact mode: the second run of a prompt drafts from the first run's output (history),
    its text equals the first run's and a --no-history run's; show/clear report it."""
    prompt = ("Copy this list back exactly, one item per line: alpha bravo charlie delta echo foxtrot golf hotel "
              "india juliett kilo lima mike november oscar papa quebec romeo sierra tango")
    args = ("run", "--exact", "--json", "--draft", "suffix", "--max-tokens", "48", prompt)
    env = {"SPECDEC_CACHE_DIR": str(tmp_path / "cache")}  # a history of its own
    first = json.loads(run_specdec(*args, **env).stdout)
    second = json.loads(run_specdec(*args, **env).stdout)
    alone = json.loads(run_specdec(*args, "--no-history", **env).stdout)
    assert first["tokens"] == second["tokens"] == alone["tokens"]
    assert second["stats"]["chains_from"].get("history", 0) > 0
    assert "history" not in alone["stats"]["chains_from"]
    assert second["stats"]["tokens_per_step"] > alone["stats"]["tokens_per_step"]
    shown = json.loads(run_specdec("history", "show", "--json", **env).stdout)
    assert shown["documents"] == 1 and shown["tokens"] > 48  # prompt + answer, stored once
    cleared = run_specdec("history", "clear", **env)
    assert cleared.returncode == 0 and "cleared" in cleared.stdout
    assert json.loads(run_specdec("history", "show", "--json", **env).stdout)["documents"] == 0
