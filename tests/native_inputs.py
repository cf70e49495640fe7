"""Inputs for the tests of the native core (specdec_cli._native), drawn from seeded
generators, and the goodness-of-fit check of the sampling tests."""

from __future__ import annotations

import math

import numpy as np

from specdec_cli import _native as nat

import reference

# Sampling settings of the sampling and verification tests: top-p cuts below top-k.
TEMP, TOP_K, TOP_P = 0.8, 10, 0.9


def i32(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int32)



# A hand-built tree:  0 -> 1 -> 3,  1 -> 4,  0 -> 2 -> 5
HAND_PARENTS = i32(-1, 0, 0, 1, 1, 2)


def filled_matrix(n_vocab: int = 300, k: int = 8, rows: int = 120, seed: int = 7) -> nat.RecyclingMatrix:
    """A recycling matrix with `rows` random rows of k distinct candidates."""
    rng = np.random.default_rng(seed)
    matrix = nat.RecyclingMatrix(n_vocab=n_vocab, k=k)
    tokens = rng.choice(n_vocab, size=rows, replace=False).astype(np.int32)
    topk = np.stack([rng.choice(n_vocab, size=k, replace=False) for _ in range(rows)]).astype(np.int32)
    matrix.update(tokens, topk)
    return matrix


def depths_of(parents: np.ndarray) -> np.ndarray:
    return np.array(reference.depths([int(p) for p in parents]), dtype=np.int64)


def random_tree(rng: np.random.Generator, n: int) -> np.ndarray:
    """Parents of a random tree of n nodes in topological order (each node's parent is
    any earlier node)."""
    parents = [-1] + [int(rng.integers(0, j)) for j in range(1, n)]
    return np.array(parents, dtype=np.int32)


def small_vocab_logits(rows: int, seed: int, vocab: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, vocab)) * 1.5).astype(np.float32)


def chi_square_p_value(counts: np.ndarray, probs: np.ndarray) -> float:
    """Goodness of fit of counts to probs. Cells expected below 5 are pooled; tokens with
    probability 0 must never occur. The chi-square tail uses the Wilson-Hilferty
    normal approximation (accurate to ~1e-3 for these degrees of freedom)."""
    assert counts[probs == 0].sum() == 0, "sampled a token outside the target support"
    total = counts.sum()
    expected = probs * total
    big = expected >= 5
    observed = list(counts[big]) + [counts[~big & (probs > 0)].sum()]
    wanted = list(expected[big]) + [expected[~big & (probs > 0)].sum()]
    if wanted[-1] == 0:
        observed.pop()
        wanted.pop()
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, wanted))
    dof = len(wanted) - 1
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))
