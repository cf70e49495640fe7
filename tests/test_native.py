"""Tests of the native core (specdec_cli._native): drafting, tree layout, verification.

Fast and model-free: every input is crafted or drawn from seeded generators.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from specdec_cli import _native as nat


def i32(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int32)


# --- prompt lookup (n-gram index) -------------------------------------------------------


def reference_lookup(tokens: list[int], max_len: int, max_n: int, min_n: int) -> tuple[list[int], int]:
    """Brute-force prompt lookup: the specification NgramIndex must match."""
    length = len(tokens)
    for n in range(max_n, min_n - 1, -1):
        if n >= length:
            continue
        suffix = tokens[length - n :]
        for end in range(length - 1, n - 1, -1):
            if tokens[end - n : end] == suffix:
                return tokens[end : end + max_len], n
    return [], 0


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
        expected = reference_lookup(tokens[:fed].tolist(), 5, max_n, min_n)
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


# --- Token Recycling matrix ---------------------------------------------------------------


def test_matrix_starts_empty():
    matrix = nat.RecyclingMatrix(n_vocab=50, k=4)
    assert (matrix.n_vocab, matrix.k, matrix.filled_rows()) == (50, 4, 0)
    assert matrix.row(7).tolist() == [-1, -1, -1, -1]
    assert nat.RecyclingMatrix(10).k == 8


def test_matrix_update_and_row():
    matrix = nat.RecyclingMatrix(n_vocab=50, k=3)
    topk = np.array([[1, 2, 3, 40, 41], [4, 5, 6, 42, 43]], dtype=np.int32)  # extra columns ignored
    matrix.update(i32(10, 20), topk)
    assert matrix.row(10).tolist() == [1, 2, 3]
    assert matrix.row(20).tolist() == [4, 5, 6]
    assert matrix.filled_rows() == 2

    matrix.update(i32(10, 10), np.array([[7, 8, 9], [11, 12, -1]], dtype=np.int32))
    assert matrix.row(10).tolist() == [11, 12, -1]  # the later duplicate wins
    assert matrix.filled_rows() == 2


def test_matrix_rejects_bad_updates_without_changing():
    matrix = nat.RecyclingMatrix(n_vocab=50, k=3)
    matrix.update(i32(1), np.array([[2, 3, 4]], dtype=np.int32))
    with pytest.raises(ValueError):
        matrix.update(i32(1, 2), np.array([[2, 3, 4]], dtype=np.int32))  # row count
    with pytest.raises(ValueError):
        matrix.update(i32(1), np.array([[2, 3]], dtype=np.int32))  # fewer than k columns
    with pytest.raises(ValueError):
        matrix.update(i32(5, 1), np.array([[2, 3, 4], [9, 50, 1]], dtype=np.int32))  # id >= n_vocab
    with pytest.raises(IndexError):
        matrix.update(i32(50), np.array([[2, 3, 4]], dtype=np.int32))
    with pytest.raises(IndexError):
        matrix.row(-1)
    assert matrix.row(1).tolist() == [2, 3, 4]
    assert matrix.row(5).tolist() == [-1, -1, -1]
    assert matrix.filled_rows() == 1


def filled_matrix(n_vocab: int = 300, k: int = 8, rows: int = 120, seed: int = 7) -> nat.RecyclingMatrix:
    rng = np.random.default_rng(seed)
    matrix = nat.RecyclingMatrix(n_vocab=n_vocab, k=k)
    tokens = rng.choice(n_vocab, size=rows, replace=False).astype(np.int32)
    topk = np.stack([rng.choice(n_vocab, size=k, replace=False) for _ in range(rows)]).astype(np.int32)
    matrix.update(tokens, topk)
    return matrix


def test_matrix_save_load_round_trip(tmp_path):
    matrix = filled_matrix()
    path = tmp_path / "matrix.bin"
    matrix.save(str(path))
    matrix.save(path)  # overwrites; os.PathLike works too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["matrix.bin"]  # no temporary left behind

    loaded = nat.RecyclingMatrix.load(str(path), 300, 8)
    assert loaded.filled_rows() == matrix.filled_rows() == 120
    for token in range(300):
        assert np.array_equal(loaded.row(token), matrix.row(token))


def test_matrix_load_rejects_mismatch(tmp_path):
    path = tmp_path / "matrix.bin"
    filled_matrix().save(str(path))
    with pytest.raises(ValueError, match="n_vocab"):
        nat.RecyclingMatrix.load(str(path), 301, 8)
    with pytest.raises(ValueError):
        nat.RecyclingMatrix.load(str(path), 300, 4)


def corrupt(path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "damage",
    ["magic", "version", "payload_bit", "truncated_payload", "truncated_header", "trailing", "empty"],
)
def test_matrix_load_rejects_corrupt_files(tmp_path, damage: str):
    path = tmp_path / "matrix.bin"
    filled_matrix().save(str(path))
    raw = path.read_bytes()
    if damage == "magic":
        corrupt(path, 0, b"XXXX")
    elif damage == "version":
        corrupt(path, 8, (7).to_bytes(4, "little"))
    elif damage == "payload_bit":
        corrupt(path, 32 + 4 * 1000, bytes([raw[32 + 4 * 1000] ^ 0x10]))
    elif damage == "truncated_payload":
        path.write_bytes(raw[:-4])
    elif damage == "truncated_header":
        path.write_bytes(raw[:20])
    elif damage == "trailing":
        path.write_bytes(raw + b"\0")
    elif damage == "empty":
        path.write_bytes(b"")
    with pytest.raises(ValueError):
        nat.RecyclingMatrix.load(str(path), 300, 8)


def test_matrix_load_missing_file_is_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        nat.RecyclingMatrix.load(str(tmp_path / "absent.bin"), 300, 8)
    with pytest.raises(OSError):
        nat.RecyclingMatrix(10, 2).save(str(tmp_path / "no" / "such" / "dir" / "m.bin"))


# --- top-k over logits rows ----------------------------------------------------------------


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


# --- tree templates ------------------------------------------------------------------------


def depths_of(parents: np.ndarray) -> np.ndarray:
    depth = np.zeros(len(parents), dtype=np.int64)
    for j in range(1, len(parents)):
        depth[j] = depth[parents[j]] + 1
    return depth


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


# --- draft trees ----------------------------------------------------------------------------

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


# --- batch layout ----------------------------------------------------------------------------

#   0 -> 1 -> 3
#        1 -> 4
#   0 -> 2 -> 5
HAND_PARENTS = i32(-1, 0, 0, 1, 1, 2)


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


def random_tree(rng: np.random.Generator, n: int) -> np.ndarray:
    parents = [-1] + [int(rng.integers(0, j)) for j in range(1, n)]
    return np.array(parents, dtype=np.int32)


def ancestors_or_self(parents: np.ndarray, node: int) -> set[int]:
    found = set()
    while node != -1:
        found.add(node)
        node = int(parents[node])
    return found


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


# --- greedy verification ------------------------------------------------------------------------

HAND_TOKENS = i32(5, 7, 8, 9, 4, 2)


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


# --- sampling and speculative sampling ------------------------------------------------------------

TEMP, TOP_K, TOP_P = 0.8, 10, 0.9


def target_distribution(logits: np.ndarray, temp: float, top_k: int, top_p: float) -> np.ndarray:
    """Reference: temperature, then top-k, then top-p (ties to the lower id), renormalised."""
    vocab = len(logits)
    scaled = logits.astype(np.float64) / temp
    order = np.lexsort((np.arange(vocab), -scaled))
    kept = order[:top_k] if 0 < top_k < vocab else order
    weights = np.exp(scaled[kept] - scaled[kept].max())
    weights /= weights.sum()
    if top_p < 1.0:
        cut = int(np.argmax(np.cumsum(weights) >= top_p)) + 1
        kept, weights = kept[:cut], weights[:cut] / weights[:cut].sum()
    probs = np.zeros(vocab)
    probs[kept] = weights
    return probs


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


def small_vocab_logits(rows: int, seed: int, vocab: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, vocab)) * 1.5).astype(np.float32)


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
