"""Prompt lookup (native/ngram_index; Saxena 2023, Prompt Lookup Decoding): the most
recent earlier occurrence of the context's last 1-4 tokens and what followed it, checked
against the brute-force reference (tests/reference.py) after every extend."""

from __future__ import annotations

import numpy as np
import pytest

from specdec_cli import _native as nat

import reference
from native_inputs import i32


def lookup(index: nat.NgramIndex, max_len: int) -> tuple[list[int], int]:
    continuation, n = index.lookup(max_len)
    assert continuation.dtype == np.int32
    return continuation.tolist(), n


def test_ngram_longest_suffix_wins():
    index = nat.NgramIndex(max_n=4, min_n=1)
    # "1 2 3" occurred at the start; "3" alone occurred more recently (before 11).
    index.extend(i32(1, 2, 3, 10, 4, 3, 11, 1, 2, 3))
    assert lookup(index, 3) == ([10, 4, 3], 3)


def test_ngram_most_recent_occurrence_wins():
    index = nat.NgramIndex(max_n=2, min_n=1)
    index.extend(i32(5, 6, 1, 5, 6, 2, 5, 6))
    assert lookup(index, 3) == ([2, 5, 6], 2)


def test_ngram_never_matches_the_suffix_itself():
    index = nat.NgramIndex(max_n=3, min_n=1)
    index.extend(i32(1, 2, 3))
    assert lookup(index, 4) == ([], 0)
    # "7 7" only occurs as the suffix; the order-1 suffix "7" occurred just before it.
    index.reset()
    index.extend(i32(7, 7))
    assert lookup(index, 4) == ([7], 1)


def test_ngram_min_n_limits_the_orders():
    index = nat.NgramIndex(max_n=3, min_n=2)
    index.extend(i32(4, 9, 1, 4))
    assert lookup(index, 2) == ([], 0)
    index.extend(i32(9))
    assert lookup(index, 2) == ([1, 4], 2)


def test_ngram_continuation_is_capped_and_may_be_short():
    index = nat.NgramIndex(max_n=1, min_n=1)
    index.extend(i32(8, 1, 2, 3, 8))
    assert lookup(index, 2) == ([1, 2], 1)
    assert lookup(index, 100) == ([1, 2, 3, 8], 1)
    index.extend(i32(1, 2, 8))
    assert lookup(index, 100) == ([1, 2, 8], 1)  # runs up to the end of the context


@pytest.mark.parametrize("max_n,min_n", [(4, 1), (3, 2), (1, 1), (6, 3)])
def test_ngram_incremental_extend_matches_brute_force(max_n: int, min_n: int):
    rng = np.random.default_rng(1234 + max_n * 10 + min_n)
    tokens = rng.integers(0, 6, size=400).astype(np.int32)  # small alphabet: many repeats
    incremental = nat.NgramIndex(max_n=max_n, min_n=min_n)
    fed = 0
    while fed < len(tokens):
        step = int(rng.integers(1, 5))
        incremental.extend(tokens[fed : fed + step])
        fed = min(fed + step, len(tokens))
        expected = reference.ngram_lookup(tokens[:fed].tolist(), 5, max_n, min_n)
        assert lookup(incremental, 5) == expected

    one_shot = nat.NgramIndex(max_n=max_n, min_n=min_n)
    one_shot.extend(tokens)
    assert lookup(one_shot, 7) == lookup(incremental, 7)
    assert np.array_equal(one_shot.tokens(), incremental.tokens())


def test_ngram_len_reset_tokens():
    index = nat.NgramIndex()
    assert (index.max_n, index.min_n) == (4, 1)
    index.extend(i32(3, 1, 4, 1, 5))
    index.extend(np.array([9, 2], dtype=np.int64))  # converted to int32
    assert len(index) == 7
    copy = index.tokens()
    assert copy.dtype == np.int32 and copy.tolist() == [3, 1, 4, 1, 5, 9, 2]
    copy[0] = 99
    assert index.tokens()[0] == 3
    index.reset()
    assert len(index) == 0 and lookup(index, 3) == ([], 0)


@pytest.mark.parametrize("max_n,min_n", [(0, 1), (2, 3), (3, 0)])
def test_ngram_rejects_bad_orders(max_n: int, min_n: int):
    with pytest.raises(ValueError):
        nat.NgramIndex(max_n=max_n, min_n=min_n)
