"""The static draft-tree template (native/tree_template): grown by path score under per-rank
acceptance priors, numbered breadth first."""

from __future__ import annotations

import numpy as np
import pytest

from specdec_cli import _native as nat

import reference
from native_inputs import depths_of


@pytest.mark.parametrize("n_nodes", [1, 2, 8, 32, 80, 200])
def test_template_shape(n_nodes: int):
    parents, ranks = nat.tree_template(n_nodes, k=8, max_depth=8)
    assert parents.dtype == ranks.dtype == np.int32
    assert len(parents) == len(ranks) == n_nodes
    assert parents[0] == -1 and ranks[0] == -1
    assert all(0 <= parents[j] < j for j in range(1, n_nodes))
    assert all(0 <= ranks[j] < 8 for j in range(1, n_nodes))
    depth = depths_of(parents)
    assert depth.max() <= 8
    assert np.all(np.diff(depth) >= 0)  # breadth-first
    for node in range(n_nodes):  # a node's children hold ranks 0, 1, 2, ... in order
        child_ranks = ranks[1:][parents[1:] == node].tolist()
        assert child_ranks == list(range(len(child_ranks)))


def test_template_80_nodes_is_about_six_deep():
    parents, _ = nat.tree_template(80)
    assert 5 <= depths_of(parents).max() <= 7
    assert np.array_equal(parents, nat.tree_template(80)[0])  # deterministic


def test_template_follows_path_scores():
    # rank-0 grandchild (0.5 * 0.5 = 0.25) beats the rank-1 child (0.2) ...
    parents, ranks = nat.tree_template(3)
    assert parents.tolist() == [-1, 0, 1] and ranks.tolist() == [-1, 0, 0]
    # ... which beats the rank-0 great-grandchild (0.125); renumbered breadth-first.
    parents, ranks = nat.tree_template(4)
    assert parents.tolist() == [-1, 0, 0, 1] and ranks.tolist() == [-1, 0, 1, 0]


def test_template_limits():
    parents, ranks = nat.tree_template(9, k=8, max_depth=1)
    assert parents.tolist() == [-1] + [0] * 8 and ranks.tolist() == [-1] + list(range(8))
    with pytest.raises(ValueError):
        nat.tree_template(10, k=8, max_depth=1)
    with pytest.raises(ValueError):
        nat.tree_template(0)
    parents, _ = nat.tree_template(5, k=1)
    assert parents.tolist() == [-1, 0, 1, 2, 3]  # k=1 is a chain


def test_template_is_the_reference_greedy_growth():
    """Against the O(n^2) reference that rescores every candidate at every step: the same
    nodes, the same numbering; and the same refusal when k and the depth allow too few."""
    rng = np.random.default_rng(29)
    for case in range(120):
        n_nodes, k, max_depth = int(rng.integers(1, 90)), int(rng.integers(1, 11)), int(rng.integers(0, 9))
        try:
            expected = reference.tree_template(n_nodes, k, max_depth)
        except ValueError:
            with pytest.raises(ValueError):
                nat.tree_template(n_nodes, k=k, max_depth=max_depth)
            continue
        parents, ranks = nat.tree_template(n_nodes, k=k, max_depth=max_depth)
        assert (parents.tolist(), ranks.tolist()) == expected, f"case {case}: {n_nodes, k, max_depth}"
