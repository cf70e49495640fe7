"""Verification (native/verify) of a draft tree against the target's logits: the greedy
walk, checked against the reference (tests/reference.py) on random trees, and sample-and-
match, which keeps the target distribution (SpecInfer's acceptance for point-mass drafts,
Miao et al. 2023)."""

from __future__ import annotations

import numpy as np
import pytest

from specdec_cli import _native as nat

import reference
from native_inputs import HAND_PARENTS, TEMP, TOP_K, TOP_P, chi_square_p_value, i32, random_tree, small_vocab_logits
from reference import target_distribution

HAND_TOKENS = i32(5, 7, 8, 9, 4, 2)  # the tokens of HAND_PARENTS' nodes


def logits_with_argmax(argmax: list[int], vocab: int = 10) -> np.ndarray:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((len(argmax), vocab)).astype(np.float32)
    logits[np.arange(len(argmax)), argmax] = 10.0
    return logits


def greedy(tokens, parents, argmax_tokens: list[int]) -> tuple[list[int], int]:
    ids, _ = nat.topk_rows(logits_with_argmax(argmax_tokens), 1)
    path, bonus = nat.verify_greedy(tokens, parents, ids[:, 0].copy())
    assert path.dtype == np.int32
    return path.tolist(), bonus


def test_greedy_walks_the_matching_branch():
    # node 0 wants 7 (node 1), node 1 wants 4 (node 4), node 4 wants 3: no such child.
    assert greedy(HAND_TOKENS, HAND_PARENTS, [7, 4, 0, 0, 3, 0]) == ([0, 1, 4], 3)
    assert greedy(HAND_TOKENS, HAND_PARENTS, [8, 0, 2, 0, 0, 6]) == ([0, 2, 5], 6)


def test_greedy_rejects_everything():
    assert greedy(HAND_TOKENS, HAND_PARENTS, [1, 4, 2, 0, 0, 0]) == ([0], 1)
    assert greedy(i32(5), i32(-1), [3]) == ([0], 3)


def test_greedy_rejects_mismatched_sizes():
    with pytest.raises(ValueError):
        nat.verify_greedy(HAND_TOKENS, HAND_PARENTS, i32(1, 2))


def random_draft(rng: np.random.Generator, n: int, vocab: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, parents, argmax) of a random tree as build_tree makes them (siblings carry
    distinct tokens), whose target mostly agrees with one of each node's children."""
    parents = random_tree(rng, n) if rng.random() < 0.7 else np.arange(-1, n - 1, dtype=np.int32)  # or a chain
    tokens = [int(rng.integers(vocab))]
    children: dict[int, list[int]] = {}
    for j in range(1, n):
        taken = {tokens[c] for c in children.get(int(parents[j]), [])}
        tokens.append(int(rng.choice([t for t in range(vocab) if t not in taken])))
        children.setdefault(int(parents[j]), []).append(j)
    argmax = [tokens[int(rng.choice(children[u]))] if u in children and rng.random() < 0.8 else int(rng.integers(vocab))
              for u in range(n)]
    return np.array(tokens, dtype=np.int32), parents, np.array(argmax, dtype=np.int32)


def test_greedy_is_the_longest_accepted_path_of_the_reference():
    rng = np.random.default_rng(19)
    lengths = []
    for case in range(400):
        tokens, parents, argmax = random_draft(rng, int(rng.integers(1, 49)))
        path, bonus = nat.verify_greedy(tokens, parents, argmax)
        expected = reference.verify_greedy(tokens.tolist(), parents.tolist(), argmax.tolist())
        assert (path.tolist(), bonus) == expected, f"case {case}"
        lengths.append(len(path))
    assert max(lengths) > 10 and min(lengths) == 1  # deep acceptances and full rejections both occur


# A tree over V=16 drafted from the logits themselves:
#   root -> likely (node 1), mid (node 2), impossible (node 3)
#   node 1 -> likely (node 4), another (node 5)
def sampling_tree(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p_root = target_distribution(logits[0], TEMP, TOP_K, TOP_P)
    p_node1 = target_distribution(logits[1], TEMP, TOP_K, TOP_P)
    by_root = np.argsort(-p_root, kind="stable")
    by_node1 = np.argsort(-p_node1, kind="stable")
    impossible = int(np.flatnonzero(p_root == 0)[0])
    tokens = i32(0, by_root[0], by_root[2], impossible, by_node1[0], by_node1[1])
    parents = i32(-1, 0, 0, 0, 1, 1)
    return tokens, parents, np.ascontiguousarray(logits[[0, 1, 2, 3, 4, 5]])


def test_verify_sample_preserves_the_target_distribution():
    logits = small_vocab_logits(6, seed=21)
    tokens, parents, tree_logits = sampling_tree(logits)
    p_root = target_distribution(tree_logits[0], TEMP, TOP_K, TOP_P)
    p_node1 = target_distribution(tree_logits[1], TEMP, TOP_K, TOP_P)

    sampler = nat.Sampler(seed=2024)
    first = np.zeros(16, dtype=np.int64)
    second_after_node1 = np.zeros(16, dtype=np.int64)
    accepted_nodes = 0
    for i in range(40_000):  # the tree is 2 deep: positions 4i..4i+2 are this walk's alone
        path, bonus = nat.verify_sample(tokens, parents, tree_logits, TEMP, TOP_K, TOP_P, sampler, 4 * i)
        emitted = [int(tokens[node]) for node in path[1:]] + [bonus]
        accepted_nodes += len(path) - 1
        assert 3 not in path.tolist()
        first[emitted[0]] += 1
        if len(path) >= 2 and path[1] == 1:
            second_after_node1[emitted[1]] += 1

    assert chi_square_p_value(first, p_root) > 1e-3
    assert second_after_node1.sum() > 10_000
    assert chi_square_p_value(second_after_node1, p_node1) > 1e-3
    # Drafts do get accepted: about p(node 1) + p(node 2) at the root alone.
    assert accepted_nodes / 40_000 > 0.9 * (p_root[tokens[1]] + p_root[tokens[2]])


def test_verify_sample_is_deterministic_per_seed():
    logits = small_vocab_logits(6, seed=21)
    tokens, parents, tree_logits = sampling_tree(logits)

    def run(seed: int) -> list[tuple[list[int], int]]:
        sampler = nat.Sampler(seed)
        results = []
        for i in range(200):
            path, bonus = nat.verify_sample(tokens, parents, tree_logits, TEMP, TOP_K, TOP_P, sampler, 4 * i)
            results.append((path.tolist(), bonus))
        return results

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_verify_sample_rejects_bad_input():
    logits = small_vocab_logits(6, seed=21)
    tokens, parents, tree_logits = sampling_tree(logits)
    sampler = nat.Sampler(0)
    with pytest.raises(ValueError):
        nat.verify_sample(tokens, parents, tree_logits, 0.0, TOP_K, TOP_P, sampler, 0)
    with pytest.raises(ValueError):
        nat.verify_sample(tokens, parents, tree_logits[:4].copy(), TEMP, TOP_K, TOP_P, sampler, 0)
    with pytest.raises(ValueError):
        nat.verify_sample(tokens, parents, np.full((6, 16), -np.inf, dtype=np.float32), TEMP, 0, 1.0, sampler, 0)
