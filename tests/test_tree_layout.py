"""The batch layout of a tree (native/tree_layout): positions and per-branch sequence ids
for one llama_decode, so that llama.cpp's mask shows each node exactly its ancestors
(docs/DESIGN.md, Verifying a tree in llama.cpp)."""

from __future__ import annotations

import numpy as np
import pytest

from specdec_cli import _native as nat

from native_inputs import HAND_PARENTS, depths_of, i32, random_tree
import reference
from reference import ancestors_or_self


def test_layout_hand_built_tree():
    pos, seq_ids, n_seq_id, leaf_seq = nat.layout_tree(HAND_PARENTS, n_past=10, n_seq_max=4)
    assert pos.tolist() == [10, 11, 11, 12, 12, 12]
    assert seq_ids.shape == (6, 4) and seq_ids.dtype == np.int32
    assert seq_ids.tolist() == [
        [0, 1, 2, -1],
        [0, 1, -1, -1],
        [2, -1, -1, -1],
        [0, -1, -1, -1],
        [1, -1, -1, -1],
        [2, -1, -1, -1],
    ]
    assert n_seq_id.tolist() == [3, 2, 1, 1, 1, 1]
    assert leaf_seq.tolist() == [0, 0, 2, 0, 1, 2]


@pytest.mark.parametrize("seed", range(5))
def test_layout_masks_show_exactly_the_ancestors(seed: int):
    """llama.cpp lets a query see the cells holding its FIRST seq id at positions up to its own."""
    rng = np.random.default_rng(seed)
    parents = random_tree(rng, 40)
    pos, seq_ids, n_seq_id, leaf_seq = nat.layout_tree(parents, n_past=7, n_seq_max=40)
    assert np.array_equal(pos, 7 + depths_of(parents))
    n = len(parents)
    id_sets = [set(seq_ids[i, : n_seq_id[i]].tolist()) for i in range(n)]
    for i in range(n):
        row = seq_ids[i].tolist()
        assert row[: n_seq_id[i]] == sorted(id_sets[i]) and all(v == -1 for v in row[n_seq_id[i] :])
        assert leaf_seq[i] == row[0]
    for query in range(n):
        visible = {key for key in range(n) if leaf_seq[query] in id_sets[key] and pos[key] <= pos[query]}
        assert visible == ancestors_or_self(parents, query)


def test_layout_branch_ids_follow_leaf_order():
    parents = random_tree(np.random.default_rng(11), 30)
    _, seq_ids, n_seq_id, _ = nat.layout_tree(parents, 0, 30)
    leaves = [j for j in range(30) if j not in set(parents.tolist())]
    assert [seq_ids[leaf, 0] for leaf in leaves] == list(range(len(leaves)))
    assert all(n_seq_id[leaf] == 1 for leaf in leaves)
    assert n_seq_id[0] == len(leaves)


def test_layout_limits():
    pos, seq_ids, n_seq_id, leaf_seq = nat.layout_tree(i32(-1), 3, 1)
    assert pos.tolist() == [3] and seq_ids.tolist() == [[0]] and leaf_seq.tolist() == [0]
    with pytest.raises(ValueError, match="branches"):
        nat.layout_tree(HAND_PARENTS, 0, 2)
    with pytest.raises(ValueError):
        nat.layout_tree(i32(0, 0), 0, 4)  # no root


def test_layout_is_the_reference_layout_and_its_mask_the_tree():
    """On random trees (and chains and stars), the native layout is the reference's node
    for node, and the mask llama.cpp builds from it is exactly ancestor-or-self."""
    rng = np.random.default_rng(23)
    for case in range(150):
        n = int(rng.integers(1, 65))
        shape = case % 3
        parents = (random_tree(rng, n) if shape == 0 else np.arange(-1, n - 1, dtype=np.int32) if shape == 1
                   else np.array([-1] + [0] * (n - 1), dtype=np.int32))
        n_past = int(rng.integers(0, 1000))
        want_pos, want_ids, want_first = reference.layout_tree(parents.tolist(), n_past, n)
        n_branches = len(want_ids[0])
        pos, seq_ids, n_seq_id, leaf_seq = nat.layout_tree(parents, n_past, n_branches)  # just enough ids
        got_ids = [row[:count].tolist() for row, count in zip(seq_ids, n_seq_id)]
        assert (pos.tolist(), got_ids, leaf_seq.tolist()) == (want_pos, want_ids, want_first), f"case {case}"
        assert reference.llama_cpp_mask(want_pos, want_ids) == reference.attention_mask(parents.tolist())
        if n_branches > 1:
            with pytest.raises(ValueError, match="branches"):
                nat.layout_tree(parents, n_past, n_branches - 1)
