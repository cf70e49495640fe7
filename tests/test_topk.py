"""Top-k per logits row (native/topk): numpy's stable order, ties to the lower id, NaN as
-infinity, the same answer on any number of threads."""

from __future__ import annotations

import numpy as np
import pytest

from specdec_cli import _native as nat


def test_topk_ties_go_to_the_lower_id():
    logits = np.array([[1, 3, 3, 2, 3, 0]], dtype=np.float32)
    ids, values = nat.topk_rows(logits, 4)
    assert ids.tolist() == [[1, 2, 4, 3]]
    assert values.tolist() == [[3, 3, 3, 2]]


def test_topk_k1_equals_argmax_with_many_ties():
    rng = np.random.default_rng(3)
    logits = rng.integers(0, 4, size=(30, 1000)).astype(np.float32)
    ids, _ = nat.topk_rows(logits, 1)
    assert np.array_equal(ids[:, 0], logits.argmax(axis=1))


@pytest.mark.parametrize("vocab,k", [(1000, 1), (1000, 8), (4099, 64), (70, 70), (49152, 8)])
def test_topk_equals_numpy_stable_argsort(vocab: int, k: int):
    rng = np.random.default_rng(vocab + k)
    logits = (rng.standard_normal((9, vocab)) * 4).astype(np.float32)
    logits[:, ::7] = np.round(logits[:, ::7])  # plant ties
    ids, values = nat.topk_rows(logits, k)
    expected = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    assert ids.shape == values.shape == (9, k)
    assert ids.dtype == np.int32 and values.dtype == np.float32
    assert np.array_equal(ids, expected)
    assert np.array_equal(values, np.take_along_axis(logits, expected, axis=1))


def test_topk_increasing_rows_worst_case():
    logits = np.tile(np.arange(5000, dtype=np.float32), (3, 1))
    ids, _ = nat.topk_rows(logits, 5)
    assert ids.tolist() == [[4999, 4998, 4997, 4996, 4995]] * 3


def test_topk_nan_counts_as_minus_infinity():
    inf = np.inf
    logits = np.array([[np.nan, 1, 2, np.nan], [-inf, -inf, -inf, -inf]], dtype=np.float32)
    ids, _ = nat.topk_rows(logits, 2)
    assert ids.tolist() == [[2, 1], [0, 1]]


def test_topk_threads_give_the_same_answer():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((7, 5000)).astype(np.float32)
    single = nat.topk_rows(logits, 8, n_threads=1)
    for threads in (2, 3, 16):
        multi = nat.topk_rows(logits, 8, n_threads=threads)
        assert np.array_equal(single[0], multi[0]) and np.array_equal(single[1], multi[1])


def test_topk_takes_logits_only_as_float32_c_contiguous():
    # Logits are read in place; anything else would be a silent copy of a large buffer.
    with pytest.raises(TypeError):
        nat.topk_rows(np.zeros((2, 10), dtype=np.float64), 3)
    with pytest.raises(TypeError):
        nat.topk_rows(np.zeros((2, 20), dtype=np.float32)[:, ::2], 3)


def test_topk_empty_batch_and_bad_k():
    ids, values = nat.topk_rows(np.zeros((0, 10), dtype=np.float32), 3)
    assert ids.shape == values.shape == (0, 3)
    with pytest.raises(ValueError):
        nat.topk_rows(np.zeros((2, 10), dtype=np.float32), 11)
    with pytest.raises(ValueError):
        nat.topk_rows(np.zeros((2, 10), dtype=np.float32), 0)
