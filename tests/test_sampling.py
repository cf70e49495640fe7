"""Sampling (native/sampling): the target distribution (temperature, top-k, top-p), drawn by
inverse CDF from one Philox uniform per (seed, position)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from specdec_cli import _native as nat

from native_inputs import TEMP, TOP_K, TOP_P, chi_square_p_value, small_vocab_logits
from reference import target_distribution


def test_reference_distribution_has_no_boundary_ties():
    # Guards the fixtures below: top-p's cut must not sit on a float rounding edge.
    for row in small_vocab_logits(4, seed=21):
        probs = target_distribution(row, TEMP, TOP_K, 1.0)
        cumulative = np.cumsum(np.sort(probs)[::-1])
        assert np.min(np.abs(cumulative - TOP_P)) > 1e-4


def test_sampler_matches_target_distribution():
    row = small_vocab_logits(1, seed=21)[0]
    probs = target_distribution(row, TEMP, TOP_K, TOP_P)
    assert 2 < np.count_nonzero(probs) < TOP_K  # top-p is what cuts here
    sampler = nat.Sampler(seed=1)
    draws = [sampler.sample(row, t, TEMP, TOP_K, TOP_P) for t in range(40_000)]
    counts = np.bincount(draws, minlength=16)
    assert chi_square_p_value(counts, probs) > 1e-3
    # Power: the same draws are far from the untempered distribution.
    assert chi_square_p_value(counts, target_distribution(row, 1.0, TOP_K, TOP_P)) < 1e-6


def test_sampler_is_seeded_and_greedy_at_zero_temperature():
    row = small_vocab_logits(1, seed=3)[0]
    first = [nat.Sampler(9).sample(row, 0, 1.0, 0, 1.0) for _ in range(3)]
    assert len(set(first)) == 1
    a, b = nat.Sampler(42), nat.Sampler(42)
    assert [a.sample(row, t, 1.0) for t in range(50)] == [b.sample(row, t, 1.0) for t in range(50)]
    assert nat.Sampler(0).sample(row, 0, 0.0, 0, 1.0) == int(np.argmax(row))


@pytest.mark.parametrize("top_k,top_p", [(0, TOP_P), (0, 1.0), (4, 1.0), (16, 0.5)])
def test_sampler_matches_target_with_filters_switched_off(top_k: int, top_p: float):
    row = small_vocab_logits(1, seed=21)[0]
    probs = target_distribution(row, TEMP, top_k, top_p)
    sampler = nat.Sampler(seed=11)
    draws = [sampler.sample(row, t, TEMP, top_k, top_p) for t in range(20_000)]
    assert chi_square_p_value(np.bincount(draws, minlength=16), probs) > 1e-3


def test_sampler_nucleus_over_a_peaked_large_vocabulary():
    # Most of the vocabulary is too light to be in the nucleus and is filtered before sorting.
    vocab = 20_000
    row = (np.random.default_rng(8).standard_normal(vocab) * 3).astype(np.float32)
    probs = target_distribution(row, 1.0, 0, 0.9)
    support = set(np.flatnonzero(probs).tolist())
    sampler = nat.Sampler(6)
    draws = np.array([sampler.sample(row, t, 1.0, 0, 0.9) for t in range(2000)])
    assert set(draws.tolist()) <= support
    top = int(np.argmax(probs))
    assert abs(np.mean(draws == top) - probs[top]) < 4 * math.sqrt(probs[top] / 2000)


def test_sampler_nucleus_over_a_flat_large_vocabulary():
    # Thousands of tokens in the nucleus, none light enough to be filtered out early.
    vocab = 5000
    row = np.linspace(0.0, -2.0, vocab).astype(np.float32)[np.random.default_rng(2).permutation(vocab)]
    probs = target_distribution(row, 1.0, 0, 0.7)
    support = set(np.flatnonzero(probs).tolist())
    assert len(support) > 2000
    sampler = nat.Sampler(5)
    draws = [sampler.sample(row, t, 1.0, 0, 0.7) for t in range(3000)]
    assert set(draws) <= support
    assert len(set(draws)) > 1000
