"""Pure-Python references of the native algorithms, used as oracles in the tests: slow and
obvious where the C++ is fast and clever."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specdec_cli import policy as pol


@dataclass
class Draft:
    tokens: list[int]
    shares: list[float]
    match_length: int
    occurrences: int


def _ends(text: list[int], pattern: list[int]) -> list[int]:
    """Every index e where `pattern` ends in `text`."""
    n = len(pattern)
    return [e for e in range(n - 1, len(text)) if text[e - n + 1:e + 1] == pattern]


def _chain(text: list[int], pattern: list[int], match_length: int, max_len: int) -> Draft:
    """From the occurrences of `pattern`, repeatedly take the most frequent next token (ties:
    the one whose first occurrence after the pattern is latest); negative tokens (document
    sentinels) are never drafted."""
    draft = Draft([], [], match_length, 0)
    if match_length == 0:
        return draft
    current = list(pattern)
    for step in range(max_len + 1):
        follow: dict[int, list[int]] = {}
        for e in _ends(text, current):
            if e + 1 < len(text) and text[e + 1] >= 0:
                follow.setdefault(text[e + 1], []).append(e + 1)
        total = sum(len(v) for v in follow.values())
        if step == 0:
            draft.occurrences = total
        if step == max_len or not follow:
            break
        token = max(follow, key=lambda t: (len(follow[t]), min(follow[t])))
        draft.tokens.append(token)
        draft.shares.append(len(follow[token]) / total)
        current.append(token)
    return draft


def longest_repeated_suffix(text: list[int]) -> int:
    """Length of the longest suffix of `text` that also ends at an earlier position."""
    n = len(text)
    for length in range(n - 1, 0, -1):
        suffix = text[n - length:]
        if any(e < n - 1 for e in _ends(text, suffix)):
            return length
    return 0


def suffix_lookup(text: list[int], max_len: int) -> Draft:
    """What SuffixAutomaton.lookup drafts for the indexed text `text`."""
    length = longest_repeated_suffix(text)
    return _chain(text, text[len(text) - length:] if length else [], length, max_len)


def continuations(text: list[int]) -> list[tuple[int, int]]:
    """(token, count) after the earlier occurrences of the longest repeated suffix, most
    frequent first, ties by token id."""
    length = longest_repeated_suffix(text)
    if not length:
        return []
    counts: dict[int, int] = {}
    for e in _ends(text, text[len(text) - length:]):
        if e + 1 < len(text) and text[e + 1] >= 0:
            counts[text[e + 1]] = counts.get(text[e + 1], 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def history_text(documents: list[list[int]]) -> list[int]:
    """Documents joined as the automaton holds them: each closed by its own sentinel."""
    text: list[int] = []
    for i, doc in enumerate(documents):
        text += doc + [-(i + 1)]
    return text


def followed_lookup(documents: list[list[int]], context: list[int], max_len: int) -> Draft:
    """What SuffixAutomaton.lookup_followed drafts after following `context` through an
    automaton of `documents`: from the longest suffix of the context found in them."""
    text = history_text(documents)
    length = 0
    for candidate in range(len(context), 0, -1):
        if _ends(text, context[len(context) - candidate:]):
            length = candidate
            break
    return _chain(text, context[len(context) - length:] if length else [], length, max_len)


# --- prompt lookup (Saxena 2023, Prompt Lookup Decoding) ----------------------------------


def ngram_lookup(tokens: list[int], max_len: int, max_n: int, min_n: int) -> tuple[list[int], int]:
    """What NgramIndex.lookup drafts: for the longest order n (max_n down to min_n) whose
    last-n-token suffix occurred earlier, what followed its most recent earlier occurrence."""
    length = len(tokens)
    for n in range(max_n, min_n - 1, -1):
        if n >= length:
            continue
        suffix = tokens[length - n:]
        for end in range(length - 1, n - 1, -1):
            if tokens[end - n:end] == suffix:
                return tokens[end:end + max_len], n
    return [], 0


# --- Token Recycling (Luo et al. 2024, "Turning Trash into Treasure: Accelerating Inference
# of Large Language Models with Token Recycling", arXiv:2408.08696) --------------------------


class RecyclingMatrix:
    """The adjacency matrix of Token Recycling: for each token, the k successors the model
    ranked highest the last time that token was verified (-1: none yet). The update of
    the paper (Section 3): every verified node's row is overwritten by the model's top-k at
    that node — rejected branches included; a token verified twice in one step keeps the
    later row. An update with any bad row changes nothing."""

    EMPTY = -1

    def __init__(self, n_vocab: int, k: int) -> None:
        self.n_vocab, self.k = n_vocab, k
        self.rows: dict[int, list[int]] = {}

    def row(self, token: int) -> list[int]:
        if not 0 <= token < self.n_vocab:
            raise IndexError(token)
        return self.rows.get(token, [self.EMPTY] * self.k)

    def update(self, tokens: list[int], topk: list[list[int]]) -> None:
        if len(topk) != len(tokens) or any(len(ids) < self.k for ids in topk):
            raise ValueError("one row of at least k candidates per token")
        for token, ids in zip(tokens, topk):  # row by row, the token first
            if not 0 <= token < self.n_vocab:
                raise IndexError("token outside the vocabulary")
            if any(not self.EMPTY <= c < self.n_vocab for c in ids[:self.k]):
                raise ValueError("candidate outside the vocabulary")
        for token, ids in zip(tokens, topk):
            self.rows[token] = list(ids[:self.k])

    def candidate(self, token: int, rank: int) -> int:
        return self.row(token)[rank] if 0 <= rank < self.k else self.EMPTY

    def filled_rows(self) -> int:
        """Rows with a first candidate."""
        return sum(row[0] != self.EMPTY for row in self.rows.values())


# --- tree templates -------------------------------------------------------------------------

RANK_PRIORS = (0.5, 0.2, 0.1, 0.06, 0.04, 0.03, 0.02, 0.015)


def rank_prior(rank: int) -> float:
    """Prior acceptance of the model's rank-r candidate (native/tree_template.cpp)."""
    if rank < len(RANK_PRIORS):
        return RANK_PRIORS[rank]
    return RANK_PRIORS[-1] * 0.75 ** (rank - len(RANK_PRIORS) + 1)


def tree_template(n_nodes: int, k: int = 8, max_depth: int = 8) -> tuple[list[int], list[int]]:
    """The static template Token Recycling reads its tree along (the paper's Section 3.2
    uses a fixed tree found offline; ours is grown by path score): starting from the root,
    add n_nodes - 1 times the best node not yet in the tree, where a node is (parent,
    rank), its score the product of the rank priors on its path, rank r + 1 of a parent
    only after rank r, at most k ranks and max_depth levels. Ties: higher score, then the
    shallower node, then the parent added earlier, then the lower rank. Then numbered
    breadth first, siblings by rank. Returns (parents, ranks), -1 for the root.

    Every candidate is scored afresh at every step: O(n^2), obviously greedy."""
    if n_nodes < 1 or k < 1 or max_depth < 0:
        raise ValueError("tree_template needs n_nodes >= 1, k >= 1, max_depth >= 0")
    parent, rank, score, depth = [-1], [-1], [1.0], [0]
    children = [0]  # children added so far, per node (= the next rank to add)
    while len(parent) < n_nodes:
        options = [(score[u] * rank_prior(children[u]), -depth[u] - 1, -u, -children[u], u)
                   for u in range(len(parent)) if children[u] < k and depth[u] < max_depth]
        if not options:
            raise ValueError(f"k={k} and max_depth={max_depth} allow fewer than {n_nodes} nodes")
        best_score, _, _, _, u = max(options)
        parent.append(u)
        rank.append(children[u])
        score.append(best_score)
        depth.append(depth[u] + 1)
        children[u] += 1
        children.append(0)
    order = [0]
    for u in order:  # breadth first; children were added in rank order
        order += [j for j in range(1, len(parent)) if parent[j] == u]
    new_index = {old: new for new, old in enumerate(order)}
    return ([-1] + [new_index[parent[old]] for old in order[1:]], [-1] + [rank[old] for old in order[1:]])


# --- draft trees ----------------------------------------------------------------------------


def depths(parents: list[int]) -> list[int]:
    """Depth of every node of a tree in topological order (root 0)."""
    depth = [0] * len(parents)
    for j in range(1, len(parents)):
        depth[j] = depth[parents[j]] + 1
    return depth


def build_tree(root: int, matrix: RecyclingMatrix | None, template_parents: list[int], template_ranks: list[int],
               chain: list[int]) -> tuple[list[int], list[int], list[int]]:
    """The draft tree of one step: the template read out of the matrix from the root
    token (node j's token is candidate ranks[j] of its parent's token; a node whose
    candidate is missing or repeats a sibling's token is dropped with its subtree), then
    the chain grafted from the root: it shares the path the tree already has and hangs
    the rest below it. Returned depth-first, children in the order they were added, as
    (tokens, parents, depths)."""
    children: dict[int, list[int]] = {0: []}
    token = [root]

    def child_with(node: int, t: int) -> int | None:
        return next((c for c in children[node] if token[c] == t), None)

    def add(node: int, t: int) -> int:
        token.append(t)
        children[len(token) - 1] = []
        children[node].append(len(token) - 1)
        return len(token) - 1

    if matrix is not None:
        node_of = {0: 0}
        for j in range(1, len(template_parents)):
            parent = node_of.get(template_parents[j])
            if parent is None:
                continue
            t = matrix.candidate(token[parent], template_ranks[j])
            if t != RecyclingMatrix.EMPTY and child_with(parent, t) is None:
                node_of[j] = add(parent, t)
    node = 0
    for t in chain:
        found = child_with(node, t)
        node = add(node, t) if found is None else found

    tokens, parents = [], []

    def visit(node: int, parent: int) -> None:
        index = len(tokens)
        tokens.append(token[node])
        parents.append(parent)
        for child in children[node]:
            visit(child, index)

    visit(0, -1)
    return tokens, parents, depths(parents)


# --- batch layout: one llama_decode over the tree ------------------------------------------


def chain_before_stop(chain: list[int], stops: list[int]) -> int:
    """How many leading tokens of `chain` come before the first one in `stops`."""
    return next((i for i, token in enumerate(chain) if token in stops), len(chain))


def ancestors_or_self(parents: list[int], node: int) -> set[int]:
    found = set()
    while node != -1:
        found.add(node)
        node = int(parents[node])
    return found


def attention_mask(parents: list[int]) -> list[list[bool]]:
    """What a tree needs: node q attends to node k exactly when k is q or an ancestor."""
    return [[k in ancestors_or_self(parents, q) for k in range(len(parents))] for q in range(len(parents))]


def layout_tree(parents: list[int], n_past: int, n_seq_max: int) -> tuple[list[int], list[list[int]], list[int]]:
    """Positions and sequence ids of the tree's nodes in one llama_decode: position =
    n_past + depth; the leaves, in index order, are branches 0, 1, ...; a node carries the
    (sorted) ids of every branch through it; its first id is its leftmost leaf's.
    Returns (pos, seq_ids per node, first id per node)."""
    leaves = [j for j in range(len(parents)) if j not in set(parents[1:])]
    if len(leaves) > n_seq_max:
        raise ValueError(f"{len(leaves)} branches, n_seq_max={n_seq_max}")
    ids = [sorted(b for b, leaf in enumerate(leaves) if node in ancestors_or_self(parents, leaf))
           for node in range(len(parents))]
    return [n_past + d for d in depths(parents)], ids, [row[0] for row in ids]


def llama_cpp_mask(pos: list[int], seq_ids: list[list[int]]) -> list[list[bool]]:
    """The mask llama.cpp builds for that batch (pinned llama.cpp, llama_kv_cache::
    set_input_kq_mask): query q sees the cells that hold q's FIRST sequence id at a
    position up to q's."""
    n = len(pos)
    return [[seq_ids[q][0] in seq_ids[k] and pos[k] <= pos[q] for k in range(n)] for q in range(n)]


# --- greedy verification ------------------------------------------------------------------


def verify_greedy(tokens: list[int], parents: list[int], argmax: list[int]) -> tuple[list[int], int]:
    """The longest accepted path: a node is accepted when its parent is and its token is
    the target's greedy choice (argmax) at its parent; the root always is. Siblings carry
    distinct tokens, so the accepted nodes form one path. Returns (path from the root,
    the bonus token: the argmax at the path's last node)."""
    accepted = {0}
    for j in range(1, len(parents)):  # topological order: a parent is decided first
        if parents[j] in accepted and tokens[j] == argmax[parents[j]]:
            accepted.add(j)
    deepest = max(accepted, key=lambda j: len(ancestors_or_self(parents, j)))
    path = sorted(ancestors_or_self(parents, deepest), key=lambda j: len(ancestors_or_self(parents, j)))
    return path, argmax[deepest]


# --- sampling -------------------------------------------------------------------------------


def target_distribution(logits: np.ndarray, temp: float, top_k: int, top_p: float) -> np.ndarray:
    """The distribution Sampler draws from: temperature, then top-k, then top-p (ties to
    the lower id), renormalised. numpy float64 array over the vocabulary."""
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


# --- the speculation policy's per-step state and choice (policy.py, native/policy.cpp) ----------


class ReferencePolicy:
    """What `SpeculationPolicy` decides, in the same order of floating-point operations:
    per-depth acceptance counts per statistics key (global with a Beta prior, and the
    generation's own shrunk towards it), shadow predictions scored against the produced
    tokens, and an exhaustive scan of every (tree size, chain length). The constants are
    read from policy.py at each call, so that a test's monkeypatch applies to both."""

    def __init__(self, curve, *, verify_batch: int, max_tree: int, max_chain: int):
        self.pol = pol
        self.curve, self.verify_batch = curve, verify_batch
        self.keys = [(n, u, k) for n in pol.MATCH_BUCKETS for u in (False, True) for k in range(pol.MAX_STREAK + 1)]
        zeros = [0.0] * pol.MAX_DEPTH
        self.counts = {key: {"trials": list(zeros), "hits": list(zeros), "local_trials": list(zeros),
                             "local_hits": list(zeros)} for key in self.keys}
        self.trees = {t: [0.0, 0.0] for t in pol.TREE_SIZES}  # [total accepted, steps]
        self.shadows: list[list] = []  # [chain, key, matched]
        self.streak = 0
        self.pending: tuple[int, int, list[int]] | None = None
        self.steps = {"plain": 0, "ngram": 0, "tree": 0, "hybrid": 0}
        self.set_limits(max_tree, max_chain)

    def set_limits(self, max_tree: int, max_chain: int) -> None:
        self.max_chain = max(0, min(max_chain, self.pol.MAX_DEPTH))
        self.tree_sizes = [t for t in self.pol.TREE_SIZES if t <= max_tree]

    def reset(self) -> None:
        self.shadows, self.pending, self.streak = [], None, 0
        decay = self.pol.GENERATION_DECAY
        for c in self.counts.values():
            c["local_trials"], c["local_hits"] = [0.0] * self.pol.MAX_DEPTH, [0.0] * self.pol.MAX_DEPTH
            c["trials"], c["hits"] = [t * decay for t in c["trials"]], [h * decay for h in c["hits"]]

    def rate(self, key: tuple, depth: int) -> float:
        pol, c = self.pol, self.counts[key]
        prior = pol.MATCH_PRIOR_ACCEPT[key[0]] * (1.0 if key[1] else pol.SPLIT_PRIOR_FACTOR)
        global_rate = (c["hits"][depth] + prior * pol.PRIOR_WEIGHT) / (c["trials"][depth] + pol.PRIOR_WEIGHT)
        return (c["local_hits"][depth] + global_rate * pol.LOCAL_WEIGHT) / (c["local_trials"][depth] + pol.LOCAL_WEIGHT)

    def tree_mean(self, size: int) -> float:
        total, count = self.trees[size]
        return (total + self.pol._recycling_prior(size) * self.pol.PRIOR_WEIGHT) / (count + self.pol.PRIOR_WEIGHT)

    def key(self, match_n: int, agreement: float) -> tuple:
        return (self.pol.match_bucket(match_n), agreement >= self.pol.UNANIMOUS, min(self.streak, self.pol.MAX_STREAK))

    def choose(self, chain: list[int], match_n: int, n_deferred: int = 0, agreement: float = 1.0,
               depth: int | None = None) -> tuple[int, int, float, float]:
        """(tree size, chain length, expected tokens, cost ms) of the best option."""
        pol = self.pol
        chain = [int(t) for t in chain[:self.max_chain]]
        gains, first_hit = [0.0], 0.0
        if chain:
            key = self.key(match_n, agreement)
            self.shadows.append([chain, key, 0])
            survive = 1.0
            for d in range(len(chain)):
                survive *= self.rate(key, d)
                gains.append(gains[-1] + survive)
            first_hit = self.rate(key, 0)
        row_extra = 0.0 if depth is None else self.curve.row_extra(depth)

        def cost(rows: int) -> float:
            return self.curve.step_ms(rows, self.verify_batch) + rows * row_extra

        overhead = pol.SPECULATIVE_STEP_OVERHEAD * self.curve.at(1)
        best_rate, best = pol.SPECULATION_MARGIN / cost(n_deferred + 1), (1, 0, 1.0)
        for t in [1] + self.tree_sizes:
            tree_gain = self.tree_mean(t) if t > 1 else 0.0
            for d in range(0 if t > 1 else 1, len(gains)):
                expected = 1.0 + gains[d] + ((1.0 - first_hit) * tree_gain if d else tree_gain)
                rate = expected / (cost(n_deferred + t + d) + overhead)
                if rate > best_rate:
                    best_rate, best = rate, (t, d, expected)
        t, d, expected = best
        self.pending = (t, d, chain[:d])
        return t, d, expected, cost(n_deferred + t + d) + (overhead if t + d > 1 else 0.0)

    def observe(self, produced: list[int]) -> None:
        newest_hit, alive = False, []
        for shadow in self.shadows:
            chain, key, _ = shadow
            c, done = self.counts[key], False
            for tok in produced:
                depth = shadow[2]
                if depth >= len(chain) or depth >= self.pol.MAX_DEPTH:
                    done = True
                    break
                hit = chain[depth] == tok
                for name in ("trials", "local_trials") + (("hits", "local_hits") if hit else ()):
                    c[name][depth] += 1
                if depth == 0:
                    newest_hit = hit
                if not hit:
                    done = True
                    break
                shadow[2] += 1
            if not done and shadow[2] < len(chain):
                alive.append(shadow)
        self.shadows = alive
        self.streak = self.streak + 1 if newest_hit else 0
        if self.pending is None:
            return
        t, d, chain = self.pending
        self.pending = None
        self.steps["plain" if t == 1 and d == 0 else "ngram" if t == 1 else "tree" if d == 0 else "hybrid"] += 1
        if t > 1 and (not chain or not produced or produced[0] != chain[0]):
            self.trees[t][0] += float(len(produced) - 1)
            self.trees[t][1] += 1
