"""Draft trees (native/draft_tree): the recycling matrix read along a template, an n-gram
or suffix chain grafted from the root."""

from __future__ import annotations

import numpy as np
import pytest

from specdec_cli import _native as nat

import reference
from native_inputs import depths_of, filled_matrix, i32, random_tree


# Template: root -> ranks 0, 1, 2; rank-0 child -> ranks 0, 1; rank-1 child -> rank 0;
# the rank-2 child -> rank 0.
TEMPLATE_PARENTS = i32(-1, 0, 0, 0, 1, 1, 2, 3)
TEMPLATE_RANKS = i32(-1, 0, 1, 2, 0, 1, 0, 0)


def small_matrix() -> nat.RecyclingMatrix:
    matrix = nat.RecyclingMatrix(n_vocab=20, k=3)
    matrix.update(
        i32(5, 7),
        np.array([[7, 8, -1], [9, 5, 6]], dtype=np.int32),  # row 5: no rank-2 candidate; row 8: empty
    )
    return matrix


def as_lists(tree) -> tuple[list[int], list[int], list[int]]:
    tokens, parents, depth = tree
    assert tokens.dtype == parents.dtype == depth.dtype == np.int32
    return tokens.tolist(), parents.tolist(), depth.tolist()


def test_build_tree_drops_missing_candidates_with_subtrees():
    tree = nat.build_tree(5, small_matrix(), TEMPLATE_PARENTS, TEMPLATE_RANKS, i32())
    # template 3 (rank 2 of row 5) is missing, so template 7 below it goes too;
    # template 6 reads the empty row of token 8. Nodes come in depth-first preorder.
    assert as_lists(tree) == ([5, 7, 9, 5, 8], [-1, 0, 1, 1, 0], [0, 1, 2, 2, 1])


def test_build_tree_ranks_beyond_k_are_missing():
    tree = nat.build_tree(5, small_matrix(), i32(-1, 0, 0), i32(-1, 0, 3), i32())
    assert as_lists(tree) == ([5, 7], [-1, 0], [0, 1])


def test_build_tree_siblings_never_repeat():
    matrix = nat.RecyclingMatrix(n_vocab=20, k=3)
    matrix.update(i32(5, 7), np.array([[7, 7, 8], [1, 2, 3]], dtype=np.int32))
    parents = i32(-1, 0, 0, 0, 1, 2)
    ranks = i32(-1, 0, 1, 2, 0, 0)
    tree = nat.build_tree(5, matrix, parents, ranks, i32())
    # The repeated 7 (template 2) is dropped with its child (template 5).
    assert as_lists(tree) == ([5, 7, 1, 8], [-1, 0, 1, 0], [0, 1, 2, 1])


def test_build_tree_grafts_chain_on_the_shared_prefix():
    matrix = small_matrix()
    tree = nat.build_tree(5, matrix, TEMPLATE_PARENTS, TEMPLATE_RANKS, i32(7, 9, 4, 2))
    tokens, parents, depth = as_lists(tree)
    assert tokens == [5, 7, 9, 4, 2, 5, 8]
    assert parents == [-1, 0, 1, 2, 3, 1, 0]
    assert depth == [0, 1, 2, 3, 4, 2, 1]

    covered = nat.build_tree(5, matrix, TEMPLATE_PARENTS, TEMPLATE_RANKS, i32(7, 5))
    assert as_lists(covered)[0] == [5, 7, 9, 5, 8]  # already in the tree: nothing added

    fresh = nat.build_tree(5, matrix, TEMPLATE_PARENTS, TEMPLATE_RANKS, i32(3, 3))
    tokens, parents, _ = as_lists(fresh)
    assert tokens[5:] == [3, 3] and parents[5:] == [0, 5]


def test_build_tree_chain_only():
    assert as_lists(nat.build_tree(4, None, None, None, i32(1, 2, 3))) == (
        [4, 1, 2, 3],
        [-1, 0, 1, 2],
        [0, 1, 2, 3],
    )
    assert as_lists(nat.build_tree(4, None, None, None, i32())) == ([4], [-1], [0])
    assert as_lists(nat.build_tree(4, None, None, None)) == ([4], [-1], [0])


def test_build_tree_rejects_bad_input():
    matrix = small_matrix()
    with pytest.raises(ValueError):
        nat.build_tree(5, matrix, i32(-1, 2, 0), i32(-1, 0, 0), i32())  # not topological
    with pytest.raises(ValueError):
        nat.build_tree(5, matrix, i32(-1, 0), i32(-1), i32())  # length mismatch
    with pytest.raises(ValueError):
        nat.build_tree(5, matrix, TEMPLATE_PARENTS, TEMPLATE_RANKS, i32(1, 20))  # outside the vocabulary
    with pytest.raises(ValueError):
        nat.build_tree(-1, None, None, None, i32())


def test_build_tree_from_full_template_is_well_formed():
    matrix = filled_matrix(n_vocab=300, k=8, rows=300)
    parents_tmpl, ranks_tmpl = nat.tree_template(80)
    tokens, parents, depth = nat.build_tree(17, matrix, parents_tmpl, ranks_tmpl, i32(1, 2, 3, 4))
    assert 80 <= len(tokens) <= 84
    assert np.array_equal(depth, depths_of(parents))
    for node in range(len(tokens)):
        siblings = tokens[1:][parents[1:] == node]
        assert len(set(siblings.tolist())) == len(siblings)


def random_rows(rng: np.random.Generator, n_rows: int, n_vocab: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and top-k rows as the model's read-out gives them, with some repeated and
    some missing (-1) candidates, so that siblings repeat and subtrees drop."""
    tokens = rng.integers(0, n_vocab, size=n_rows).astype(np.int32)
    topk = rng.integers(0, n_vocab, size=(n_rows, k)).astype(np.int32)
    topk[rng.random((n_rows, k)) < 0.1] = -1
    return tokens, topk


def test_build_tree_is_the_reference_tree_over_a_learning_matrix():
    """Token Recycling (Luo et al. 2024) step by step: draft a tree from the matrix along a
    template, with a chain grafted on; then every node's row is overwritten by (random)
    top-k rows, as the Generator does after verifying. The native tree and matrix stay
    the reference's after every step."""
    rng = np.random.default_rng(31)
    n_vocab, k = 24, 4  # a small vocabulary: rows get reused, chains meet the tree
    native, expected = nat.RecyclingMatrix(n_vocab, k), reference.RecyclingMatrix(n_vocab, k)
    sizes = []
    for step in range(300):
        if step % 3 == 0:
            parents, ranks = nat.tree_template(int(rng.integers(1, 40)), k=k, max_depth=6)
        else:  # any topological template, ranks past k included (missing candidates)
            parents = random_tree(rng, int(rng.integers(1, 30)))
            ranks = np.concatenate([[-1], rng.integers(0, k + 2, size=len(parents) - 1)]).astype(np.int32)
        chain = rng.integers(0, n_vocab, size=int(rng.integers(0, 6))).astype(np.int32)
        root = int(rng.integers(n_vocab))
        tokens, tree_parents, depth = nat.build_tree(root, native, parents, ranks, chain)
        want = reference.build_tree(root, expected, parents.tolist(), ranks.tolist(), chain.tolist())
        assert (tokens.tolist(), tree_parents.tolist(), depth.tolist()) == want, f"step {step}"
        sizes.append(len(tokens))

        learned_tokens, topk = random_rows(rng, len(tokens), n_vocab, k)
        learned_tokens[: len(tokens) // 2] = tokens[: len(tokens) // 2]  # the verified nodes' own tokens
        native.update(learned_tokens, topk)
        expected.update(learned_tokens.tolist(), topk.tolist())
    assert native.filled_rows() == expected.filled_rows()
    assert all(native.row(t).tolist() == expected.row(t) for t in range(n_vocab))
    assert max(sizes) > 20 and min(sizes) == 1  # big trees and bare roots both occurred


def test_chain_before_stop_matches_the_reference():
    """A drafted chain ends just before its first stop token (a code fence): the native scan
    against the reference, on chains with none, one and several stops, and without stops."""
    rng = np.random.default_rng(5)
    for _ in range(300):
        chain = rng.integers(0, 12, size=int(rng.integers(0, 70))).astype(np.int32)
        stops = rng.choice(12, size=int(rng.integers(0, 4)), replace=False).astype(np.int32)
        assert nat.chain_before_stop(chain, stops) == reference.chain_before_stop(chain.tolist(), stops.tolist())
    assert nat.chain_before_stop(i32(4, 5, 6, 5), i32(5)) == 1
    assert nat.chain_before_stop(i32(4, 5, 6), i32()) == 3
