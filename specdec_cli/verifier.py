"""One verification step (docs/DESIGN.md, One step): decode a draft tree rooted at the last
accepted token in one `llama_decode` (after the tokens deferred from the step before), walk
it against the logits (greedy or speculative sampling), keep the KV cells of the accepted
path and drop the rest. With a one-node tree the step is plain decoding, so `--draft none`
runs the same kernels as every other mode. Knows llama.cpp's context and the drafter's
trees; nothing of prompts, stopping or statistics beyond its own timings."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from . import _native as nat
from .drafting import MATRIX_K, Drafter, DraftTree, single_node_tree
from .llama import LlamaContext, TokenBatch
from .metrics import GenerationStats
from .options import SamplingParams


@dataclass
class StepOutcome:
    tree: DraftTree
    accepted: list[int]  # tokens this step emits: accepted draft nodes, then the bonus token
    committed: list[int]  # tokens whose KV cells the cache now holds in order
    deferred: list[int]  # accepted tokens whose cells were out of order, re-decoded next step


def _in_order_prefix(path: np.ndarray) -> int:
    """How many accepted nodes occupy the first batch rows of the tree (path[j] == j)."""
    mismatch = np.nonzero(path != np.arange(len(path)))[0]
    return int(mismatch[0]) if len(mismatch) else len(path)


class Verifier:
    """Runs steps on one context. Every accepted token's KV cells end up in all `n_seq_max`
    shared sequences, so that the next tree's branches can each take one."""

    def __init__(self, ctx: LlamaContext, batch: TokenBatch, drafter: Drafter, *, verify_batch: int,
                 n_seq_max: int):
        self.ctx = ctx
        self.batch = batch
        self.drafter = drafter
        self.verify_batch = verify_batch
        self.n_seq_max = n_seq_max
        self.all_seqs = np.arange(n_seq_max, dtype=np.int32)
        self._logits = np.zeros((batch.capacity, ctx.model.n_vocab), dtype=np.float32)

    def step(self, deferred: list[int], root: int, n_past: int, mode: str, tree_size: int, chain: np.ndarray,
              sampling: SamplingParams, sampler, stats: GenerationStats, position: int) -> "StepOutcome":
        """One verification step: draft, decode the tree (after the deferred tokens), walk
        it, keep the cells of the accepted path and drop the rest. `position` is the output
        position the root's logits predict (tokens generated so far): sampling draws each
        position with its own random number, so the text does not depend on the tree."""
        if tree_size <= 1 and not len(chain) and not deferred:
            return self._plain_step(root, n_past, mode, sampling, sampler, stats, position)
        t0 = time.perf_counter()
        tree = self.drafter.draft(root, chain, tree_size)
        root_past = n_past + len(deferred)
        pos, seq_ids, n_seq_id, leaf_seq = nat.layout_tree(tree.parents, root_past, self.n_seq_max)
        # The root is always accepted: give it every shared sequence so that plain steps
        # need no copies afterwards. Its first id stays 0, the leftmost leaf's. A chain has
        # one branch: all its nodes can be in every sequence, and rolling back the rejected
        # tail is then one call instead of a copy per sequence.
        single_branch = tree_size <= 1
        rows = slice(None) if single_branch else slice(0, 1)
        seq_ids[rows, :] = self.all_seqs
        n_seq_id[rows] = self.n_seq_max
        t1 = time.perf_counter()
        logits = self._decode_rows(deferred, n_past, tree.tokens, pos, seq_ids, n_seq_id)
        t2 = time.perf_counter()
        topk_ids, _ = nat.topk_rows(logits, MATRIX_K if mode != "none" else 1)
        if sampler is None:
            path, bonus = nat.verify_greedy(tree.tokens, tree.parents, np.ascontiguousarray(topk_ids[:, 0]))
        else:
            path, bonus = nat.verify_sample(tree.tokens, tree.parents, logits, sampling.temperature,
                                            sampling.top_k, sampling.top_p, sampler, position)
        if mode != "none":
            self.drafter.learn(tree.tokens, topk_ids)
        in_order = _in_order_prefix(path)
        if single_branch:
            if tree.size > 1:
                self.ctx.seq_rm(-1, root_past + in_order, -1)  # every sequence: the tail nobody accepted
        else:
            self._commit(root_past, in_order, int(leaf_seq[path[in_order - 1]]), int(leaf_seq.max()) + 1)
        t3 = time.perf_counter()
        stats.draft_ms += (t1 - t0) * 1000
        stats.decode_ms += (t2 - t1) * 1000
        stats.verify_ms += (t3 - t2) * 1000
        path_tokens = tree.tokens[path].tolist()
        return StepOutcome(tree=tree, accepted=path_tokens[1:] + [int(bonus)],
                            committed=deferred + path_tokens[:in_order], deferred=path_tokens[in_order:])

    def _plain_step(self, root: int, n_past: int, mode: str, sampling: SamplingParams, sampler,
                    stats: GenerationStats, position: int) -> "StepOutcome":
        """The root alone, nothing deferred: every `none` step and most `auto` steps. The
        same one-row batch as `_step` builds (every sequence, logits on), without its tree
        layout, walk and commit: on SmolLM2 that bookkeeping was 0.18 ms of a 13 ms step."""
        tree = single_node_tree(root)
        t1 = time.perf_counter()
        self.batch.set_token(root, n_past, self.all_seqs)
        self.ctx.decode(self.batch)
        logits = self.ctx.logits(1)
        t2 = time.perf_counter()
        topk_ids, _ = nat.topk_rows(logits, MATRIX_K if mode != "none" else 1)
        if sampler is None:
            bonus = int(topk_ids[0, 0])
        else:
            _, bonus = nat.verify_sample(tree.tokens, tree.parents, logits, sampling.temperature,
                                         sampling.top_k, sampling.top_p, sampler, position)
        if mode != "none":
            self.drafter.learn(tree.tokens, topk_ids)
        stats.decode_ms += (t2 - t1) * 1000
        stats.verify_ms += (time.perf_counter() - t2) * 1000
        return StepOutcome(tree=tree, accepted=[int(bonus)], committed=[root], deferred=[])

    def _decode_rows(self, deferred: list[int], n_past: int, tokens: np.ndarray, pos: np.ndarray,
                     seq_ids: np.ndarray, n_seq_id: np.ndarray) -> np.ndarray:
        """Logits of every tree node. Deferred tokens go first, in every sequence, without
        logits. Decoded in llama_decode calls of at most `verify_batch` rows so that each
        call stays on the exact kernels; rows are in topological order, so a later call's
        nodes find their ancestors in the cache."""
        if deferred:
            n_def = len(deferred)
            tokens = np.concatenate([np.asarray(deferred, dtype=np.int32), tokens])
            pos = np.concatenate([np.arange(n_past, n_past + n_def, dtype=np.int32), pos])
            seq_ids = np.concatenate([np.broadcast_to(self.all_seqs, (n_def, len(self.all_seqs))), seq_ids])
            n_seq_id = np.concatenate([np.full(n_def, len(self.all_seqs), dtype=np.int32), n_seq_id])
        outputs = np.ones(len(tokens), dtype=np.int8)
        outputs[:len(deferred)] = 0
        n_rows, n_out = len(tokens), int(outputs.sum())
        step = self.verify_batch
        done = 0
        for start in range(0, n_rows, step):
            end = min(start + step, n_rows)
            self.batch.set_rows(tokens[start:end], pos[start:end], seq_ids[start:end], n_seq_id[start:end],
                                 outputs[start:end])
            self.ctx.decode(self.batch)
            got = int(outputs[start:end].sum())
            if got == n_out:
                return self.ctx.logits(n_out)  # all logits from one call: the zero-copy view
            self._logits[done:done + got] = self.ctx.logits(got)
            done += got
        return self._logits[:n_out]

    def _commit(self, root_past: int, kept: int, keep_seq: int, branches: int) -> None:
        """Keep the first `kept` tree nodes (the root and the accepted nodes whose cells
        directly follow it) in every shared sequence and drop every other tree cell.

        Accepted nodes further down the batch are dropped too and re-decoded next step
        (`deferred`): flash attention sums a row's visible cells in cell order, so cells
        must stay in position order for speculative logits to equal plain decoding's."""
        new_past = root_past + kept
        for s in range(branches):
            if s != keep_seq:
                self.ctx.seq_rm(s, root_past + 1, -1)
        self.ctx.seq_rm(keep_seq, new_past, -1)
        if kept > 1:
            for s in range(self.n_seq_max):
                if s != keep_seq:
                    self.ctx.seq_cp(keep_seq, s, root_past + 1, new_past)
