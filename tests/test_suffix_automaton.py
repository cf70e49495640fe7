"""The native suffix automaton against the brute-force reference (tests/reference.py) on
random token strings: longest match, continuation counts and the drafted chain after every
append, for the context and for a history of documents."""

from __future__ import annotations

import numpy as np
import pytest

from specdec_cli import _native as nat

import reference


def _native(draft) -> tuple[list[int], list[float], int, int]:
    tokens, shares, match_length, occurrences = draft
    return tokens.tolist(), [round(float(s), 5) for s in shares], int(match_length), int(occurrences)


def _expected(draft: reference.Draft) -> tuple[list[int], list[float], int, int]:
    return draft.tokens, [round(s, 5) for s in draft.shares], draft.match_length, draft.occurrences


@pytest.mark.parametrize("alphabet, length, seed", [(2, 120, 0), (3, 150, 1), (4, 150, 2), (12, 150, 3)])
def test_context_lookup_matches_the_reference_after_every_append(alphabet: int, length: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    text = rng.integers(0, alphabet, size=length).astype(np.int32)
    sam = nat.SuffixAutomaton()
    for i in range(length):
        sam.extend(text[i:i + 1])
        prefix = text[:i + 1].tolist()
        assert _native(sam.lookup(6)) == _expected(reference.suffix_lookup(prefix, 6)), f"after {i + 1} tokens"
        tokens, counts = sam.continuations()
        assert list(zip(tokens.tolist(), counts.tolist())) == reference.continuations(prefix)
    assert len(sam) == length and sam.n_states <= 2 * length


def test_copied_passage_drafts_the_rest_of_it() -> None:
    """An edit: the output starts copying a 30-token passage of the prompt; after a few
    tokens the whole rest of it is drafted, with the match length growing as it is copied."""
    rng = np.random.default_rng(5)
    passage = rng.integers(1000, 5000, size=30).astype(np.int32)
    prompt = np.concatenate([rng.integers(0, 1000, size=50), passage, rng.integers(0, 1000, size=20)]).astype(np.int32)
    sam = nat.SuffixAutomaton()
    sam.extend(prompt)
    sam.extend(passage[:5])
    tokens, shares, match_length, occurrences = sam.lookup(64)
    assert match_length == 5 and occurrences == 1
    assert tokens[:25].tolist() == passage[5:].tolist() and np.all(shares == 1.0)


def test_history_follow_matches_the_reference() -> None:
    rng = np.random.default_rng(11)
    documents = [rng.integers(0, 5, size=int(rng.integers(5, 40))).tolist() for _ in range(6)]
    sam = nat.SuffixAutomaton()
    for doc in documents:
        sam.extend(np.array(doc, dtype=np.int32))
        sam.end_document()
    assert sam.n_documents == 6 and len(sam) == sum(len(d) + 1 for d in documents)
    context = rng.integers(0, 5, size=80).astype(np.int32)
    for i in range(len(context)):
        sam.follow(context[i:i + 1])
        got = _native(sam.lookup_followed(5))
        assert got == _expected(reference.followed_lookup(documents, context[:i + 1].tolist(), 5)), f"after {i + 1}"
    sam.follow_reset()
    assert _native(sam.lookup_followed(5)) == ([], [], 0, 0)


def test_no_match_crosses_a_document_boundary() -> None:
    sam = nat.SuffixAutomaton()
    for doc in ([1, 2, 3], [4, 5, 6]):
        sam.extend(np.array(doc, dtype=np.int32))
        sam.end_document()
    sam.follow(np.array([2, 3], dtype=np.int32))
    tokens, _, match_length, occurrences = sam.lookup_followed(4)
    assert match_length == 2 and tokens.tolist() == [] and occurrences == 0  # "2 3" ended its document
    sam.follow_reset()
    sam.follow(np.array([3, 4], dtype=np.int32))
    assert sam.lookup_followed(4)[2] == 1  # only "4" matches: "3 4" spans two documents


def test_bad_input() -> None:
    sam = nat.SuffixAutomaton()
    with pytest.raises(ValueError, match=">= 0"):
        sam.extend(np.array([1, -2], dtype=np.int32))
    with pytest.raises(ValueError):
        sam.lookup(-1)
    assert _native(sam.lookup(4)) == ([], [], 0, 0)
