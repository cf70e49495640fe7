"""Model-free drafting over the native core: chains copied from earlier text, and Token
Recycling trees.

A draft is a tree rooted at the last accepted token (not yet in the KV cache).
- `ngram` drafts a chain from the most recent earlier occurrence of the context's last
  1-4 tokens (Saxena 2023, Prompt Lookup Decoding).
- `suffix` drafts a chain from the longest suffix of the context that occurred before, in
  the context or in the history of earlier runs (a suffix automaton: SAM-Decoding, Hu et
  al. 2024), following the most frequent continuation (SuffixDecoding, Oliaro et al.
  2024); its match length and agreement say how far to trust it. The replacements the
  answer has made to the text it copies so far are applied to the chain
  (substitutions.py).
- `recycling` reads a tree out of the adjacency matrix of candidate successors that the
  model itself ranked highest the last time it saw each token (Luo et al. 2024, Token
  Recycling); `hybrid` grafts the n-gram chain onto that tree.
- `auto` lets the policy (policy.py) choose, each step, how much of a suffix chain and of
  a recycling tree to verify, nothing included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import _native as nat
from .paths import write_cache_file
from .substitutions import SubstitutionMemory

DRAFT_MODES = ("none", "ngram", "suffix", "recycling", "hybrid", "auto")
MATRIX_K = 8
NGRAM_MAX_N = 4
# Where each mode's chain comes from, and whether it grows a recycling tree.
CHAIN_SOURCE = {"none": None, "ngram": "ngram", "suffix": "suffix", "recycling": None, "hybrid": "ngram",
                "auto": "suffix"}
CHAIN_SOURCES = ("ngram", "suffix")
USES_TREE = {"recycling", "hybrid", "auto"}
# A chain stops before any token holding part of a code fence. An answer that copies a code
# block out of its prompt leaves the copy at the closing fence (the prompt goes on with the
# user's instruction), and the prompt's fence is often split into other tokens than the
# model writes ("``" + "`\n\n" against "```"): on 16 Qwen2.5-Coder edit answers, 8 of 46 lost
# bets were 16-31-row chains running past the answer's last ``` (bench/RESULTS.md). The
# usual spellings of a fence, tokenized, give the model's fence tokens.
FENCE_SPELLINGS = ("```", "``", " ```", " ``", "```\n", "``\n", " ```\n", "```\n\n", "\n```", "``,", " ``(",
                   "```python")


# The longest chain a mode drafts unless --draft-len says otherwise. A fixed mode verifies
# its whole chain at every match, so its cap is what each step pays; `auto` verifies what
# the policy picks, so its cap only bounds the choice. With llama.cpp's repacked weights a
# 64-row step costs ~25 one-row steps on a 2-core CPU (Qwen2.5-Coder-1.5B), and a copy
# that runs on is worth it: replayed over 48 edit answers, `auto` with chains up to 64
# made 1.72x plain decoding against 1.68x with up to 32 (Spec-Bench unchanged;
# bench/RESULTS.md).
FIXED_DRAFT_LEN = 32
AUTO_DRAFT_LEN = 64


@dataclass
class DraftSettings:
    """The defaults are the product's: `auto`, with the caps it may use."""

    mode: str = "auto"
    tree_size: int = 16  # recycling tree nodes, root included
    draft_len: int | None = None  # longest chain drafted; None: the mode's own (chain_cap)

    @property
    def chain_cap(self) -> int:
        if self.draft_len is not None:
            return self.draft_len
        return AUTO_DRAFT_LEN if self.mode == "auto" else FIXED_DRAFT_LEN


@dataclass
class Lookup:
    """A chain proposed for the next step and the evidence behind it."""

    tokens: np.ndarray  # int32, the chain
    match_length: int = 0  # tokens of the context suffix that matched (0: no match)
    agreement: float = 1.0  # share of earlier occurrences that continued with the first token
    origin: str = ""  # "context" | "history" ("" without a match)


@dataclass
class DraftTree:
    tokens: np.ndarray  # int32 [n], node 0 = root
    parents: np.ndarray  # int32 [n], -1 for the root, topological order
    depth: int  # depth of the deepest node (0 for a lone root)

    @property
    def size(self) -> int:
        return len(self.tokens)


@dataclass
class _Indexes:
    """The current context, indexed both ways."""

    ngram: nat.NgramIndex = field(default_factory=lambda: nat.NgramIndex(max_n=NGRAM_MAX_N, min_n=1))
    suffix: nat.SuffixAutomaton = field(default_factory=nat.SuffixAutomaton)


NO_LOOKUP = Lookup(np.zeros(0, dtype=np.int32))


class Drafter:
    """Keeps the context indexes, the history automaton and the recycling matrix; proposes
    one tree per step."""

    def __init__(self, n_vocab: int, matrix: nat.RecyclingMatrix | None = None,
                 history: nat.SuffixAutomaton | None = None, stop_tokens: np.ndarray | None = None,
                 substitutions: bool = True):
        self.context = _Indexes()
        self.history = history
        # Suffix chains only (None: off; bench/policy_sim.py replays llama-server's rules without).
        self.substitutions = SubstitutionMemory() if substitutions else None
        # No chain runs into these tokens (fence_tokens): it ends just before the first one.
        self.stop_tokens = np.zeros(0, dtype=np.int32) if stop_tokens is None else stop_tokens
        self.matrix = matrix if matrix is not None else nat.RecyclingMatrix(n_vocab, MATRIX_K)
        self._templates: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._indexed = CHAIN_SOURCES

    def reset_context(self, indexed: tuple[str, ...] = CHAIN_SOURCES) -> None:
        """A new context, indexed for the lookups of the sources in `indexed`: a generation
        looks chains up from one source, and extending the other index too cost ~5 us of
        every step."""
        self.context.ngram.reset()
        self.context.suffix.reset()
        self._indexed = indexed
        if self.history is not None:
            self.history.follow_reset()
        if self.substitutions is not None:
            self.substitutions.reset()

    def observe(self, tokens: np.ndarray) -> None:
        """Append accepted tokens (the root included) to the context."""
        tokens = np.ascontiguousarray(tokens, dtype=np.int32)
        if "ngram" in self._indexed:
            self.context.ngram.extend(tokens)
        if "suffix" in self._indexed:
            self.context.suffix.extend(tokens)
        if self.history is not None:
            self.history.follow(tokens)
        if self.substitutions is not None:
            self.substitutions.observe(tokens)

    def template(self, n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
        if n_nodes not in self._templates:
            self._templates[n_nodes] = nat.tree_template(n_nodes, MATRIX_K)
        return self._templates[n_nodes]

    def lookup(self, source: str | None, max_len: int) -> Lookup:
        """The chain the source proposes after the context: `ngram`, or `suffix` (the
        longer of the context's and the history's matches, the context's on a tie, with the
        answer's substitutions applied)."""
        if source is None or max_len <= 0:
            return NO_LOOKUP
        if source not in self._indexed:
            raise ValueError(f"the context is not indexed for {source!r} lookups")
        if source == "ngram":
            tokens, n = self.context.ngram.lookup(max_len)
            return self._before_stop(Lookup(tokens, n, 1.0, "context" if n else ""))  # no counts: unanimous
        best = _suffix_lookup(self.context.suffix.lookup(max_len), "context")
        if self.history is not None:
            other = _suffix_lookup(self.history.lookup_followed(max_len), "history")
            if other.match_length > best.match_length and len(other.tokens):
                best = other
        if self.substitutions is None:
            return self._before_stop(best)
        rewritten, writers = self.substitutions.rewrite(best.tokens)
        best.tokens = rewritten[:max_len]
        found = self._before_stop(best)
        self.substitutions.proposed(found.tokens, found.match_length, writers)
        return found

    def _before_stop(self, found: Lookup) -> Lookup:
        if not len(self.stop_tokens) or not len(found.tokens):
            return found
        n = nat.chain_before_stop(found.tokens, self.stop_tokens)
        if n == len(found.tokens):
            return found
        return Lookup(found.tokens[:n], found.match_length, found.agreement, found.origin)

    def draft(self, root: int, chain: np.ndarray, tree_size: int) -> DraftTree:
        """A tree of at most `tree_size` recycling nodes (1: none) with `chain` grafted
        onto the root."""
        if tree_size > 1:
            parents, ranks = self.template(tree_size)
            tokens, tree_parents, depth = nat.build_tree(root, self.matrix, parents, ranks, chain)
        elif len(chain):
            tokens, tree_parents, depth = nat.build_tree(root, None, *self.template(1), chain)
        else:
            return single_node_tree(root)  # plain decoding: most `auto` steps
        return DraftTree(tokens, tree_parents, int(depth.max()))

    def learn(self, tree_tokens: np.ndarray, topk_ids: np.ndarray) -> None:
        """Token Recycling's update: every verified node's row becomes the model's top-k
        after it — candidates from rejected branches are recycled, not thrown away."""
        self.matrix.update(tree_tokens, topk_ids)

    def save_matrix(self, path: Path) -> None:
        write_cache_file(path, lambda tmp: self.matrix.save(str(tmp)))


def _suffix_lookup(found, origin: str) -> Lookup:
    tokens, shares, match_length, _ = found
    if not len(tokens):
        return Lookup(tokens, int(match_length), 0.0, "")
    return Lookup(tokens, int(match_length), float(shares[0]), origin)


def fence_tokens(tokenize: Callable[[str], np.ndarray], token_bytes: Callable[[int], bytes]) -> np.ndarray:
    """The model's tokens that hold two or more backquotes, as its tokenizer spells the
    usual code fences (FENCE_SPELLINGS): a dozen tokenizer calls, where reading the whole
    vocabulary would cost ~0.3 s at every start."""
    found = {int(t) for text in FENCE_SPELLINGS for t in tokenize(text) if b"``" in token_bytes(int(t))}
    return np.array(sorted(found), dtype=np.int32)


_ROOT_PARENTS = np.array([-1], dtype=np.int32)
_ROOT_PARENTS.flags.writeable = False  # shared by every plain step's tree


def single_node_tree(root: int) -> DraftTree:
    """Plain decoding as a tree: the root alone."""
    return DraftTree(np.array([root], dtype=np.int32), _ROOT_PARENTS, 0)
