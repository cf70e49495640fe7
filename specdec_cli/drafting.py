"""Model-free drafting: prompt lookup (n-gram) and Token Recycling, over the native core.

A draft is a tree rooted at the last accepted token (not yet in the KV cache). `ngram`
drafts a chain copied from an earlier occurrence of the context's suffix (Saxena 2023,
Prompt Lookup Decoding); `recycling` reads a tree out of the adjacency matrix of
candidate successors that the model itself ranked highest the last time it saw each token
(Luo et al. 2024, Token Recycling); `hybrid` grafts the n-gram chain onto that tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _native as nat
from .paths import write_cache_file

DRAFT_MODES = ("none", "ngram", "recycling", "hybrid", "auto")
MATRIX_K = 8


@dataclass
class DraftSettings:
    mode: str = "none"
    tree_size: int = 32  # recycling tree nodes, root included
    draft_len: int = 8  # longest n-gram continuation drafted
    ngram_max_n: int = 4

    @property
    def uses_matrix(self) -> bool:
        return self.mode in ("recycling", "hybrid", "auto")

    @property
    def uses_ngram(self) -> bool:
        return self.mode in ("ngram", "hybrid", "auto")


@dataclass
class DraftTree:
    tokens: np.ndarray  # int32 [n], node 0 = root
    parents: np.ndarray  # int32 [n], -1 for the root, topological order
    depth: int  # depth of the deepest node (0 for a lone root)
    ngram_match: int  # length of the n-gram that matched (0 = none), a confidence signal

    @property
    def size(self) -> int:
        return len(self.tokens)


class Drafter:
    """Keeps the context index and the recycling matrix; proposes one tree per step."""

    def __init__(self, n_vocab: int, settings: DraftSettings, matrix: nat.RecyclingMatrix | None = None):
        self.settings = settings
        self.index = nat.NgramIndex(max_n=settings.ngram_max_n, min_n=1)
        self.matrix = matrix if matrix is not None else nat.RecyclingMatrix(n_vocab, MATRIX_K)
        self._templates: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._empty = np.zeros(0, dtype=np.int32)

    def reset_context(self) -> None:
        self.index.reset()

    def observe(self, tokens: np.ndarray) -> None:
        """Append accepted tokens (the root included) to the n-gram index."""
        self.index.extend(np.ascontiguousarray(tokens, dtype=np.int32))

    def template(self, n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
        if n_nodes not in self._templates:
            self._templates[n_nodes] = nat.tree_template(n_nodes, MATRIX_K)
        return self._templates[n_nodes]

    def lookup(self, max_len: int) -> tuple[np.ndarray, int]:
        if max_len <= 0:
            return self._empty, 0
        return self.index.lookup(max_len)

    def draft(self, root: int, mode: str, tree_size: int, draft_len: int) -> DraftTree:
        """A draft tree of at most `tree_size` recycling nodes plus `draft_len` chain nodes."""
        if mode == "none" or (tree_size <= 1 and draft_len <= 0):
            return single_node_tree(root)  # plain decoding: no lookup (most `auto` steps)
        chain, match = self.lookup(draft_len) if mode in ("ngram", "hybrid") else (self._empty, 0)
        if mode in ("recycling", "hybrid") and tree_size > 1:
            parents, ranks = self.template(tree_size)
            tokens, tree_parents, depth = nat.build_tree(root, self.matrix, parents, ranks, chain)
        elif len(chain):
            tokens, tree_parents, depth = nat.build_tree(root, None, *self.template(1), chain)
        else:
            return single_node_tree(root)
        return DraftTree(tokens, tree_parents, int(depth.max()), match)

    def learn(self, tree_tokens: np.ndarray, topk_ids: np.ndarray) -> None:
        """Token Recycling's update: every verified node's row becomes the model's top-k
        after it — candidates from rejected branches are recycled, not thrown away."""
        self.matrix.update(tree_tokens, topk_ids)

    def save_matrix(self, path: Path) -> None:
        write_cache_file(path, lambda tmp: self.matrix.save(str(tmp)))


def single_node_tree(root: int) -> DraftTree:
    """Plain decoding as a tree: the root alone."""
    return DraftTree(np.array([root], dtype=np.int32), np.array([-1], dtype=np.int32), 0, 0)
