"""The substitutions an answer makes to the text it copies, learned as it goes and applied
to the chains copied after them.

An edit that renames `total` to `subtotal` changes every occurrence, but a chain copied
from the prompt still spells `total`: without this, each occurrence costs a lost bet and
a few plain steps before the lookup finds its place again. Here, when a chain copied out
of a long match (MIN_COPY tokens) is wrong at some token, the divergence is kept; once the
answer is back on the chain's text (ALIGN tokens agree again), the smallest replacement
that explains the detour (S: 1-4 chain tokens, R: the tokens the answer wrote instead) is
learned, and every later chain has S replaced by R. A rewritten token the answer does not
take unlearns its substitution: prose swaps a word one way and later back, a rename is
everywhere. Replayed over 48 Qwen2.5-Coder edit answers (bench/policy_sim.py), the rename
prompts drafted 1.44x -> 1.56x plain decoding's speed; Spec-Bench answers within +-0.7%.

Pure insertions and deletions are not learned: what an answer inserts (a type hint, a
docstring line) differs from place to place, and a learned deletion would cut text from
every later chain. Learning waits for the answer's own tokens, so nothing depends on text
not yet generated; everything is forgotten at the next generation. A divergence after a
short match (a restated phrase, a line of prose) teaches nothing: with MIN_COPY 8 instead
of 16, word swaps learned from summaries cost them 0.7-1.2% in replay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_COPY = 16  # a divergence counts inside a copy: match + tokens right before it >= this
ALIGN = 3  # chain tokens that must follow the replacement in the answer
MAX_DETOUR = 8  # |S| + |R| at most
MAX_SOURCE = 4  # |S| at most
MAX_WAIT = 12  # a divergence the answer has not come back from within this many tokens is dropped
MAX_KEPT = 16  # substitutions kept, the newest first


@dataclass
class _Divergence:
    rest: list[int]  # the chain from the token the answer did not take (as far as a detour can reach)
    at: int  # the context position of that token


@dataclass
class _Proposal:
    chain: np.ndarray
    match_length: int
    at: int  # the context position of the chain's first token
    writers: np.ndarray | None  # `rewrite`'s record for the chain (None: nothing rewritten)


class SubstitutionMemory:
    """Per generation: divergences of copied chains from the answer, and the substitutions
    learned from them."""

    def __init__(self) -> None:
        self.learned: list[tuple[np.ndarray, np.ndarray]] = []
        self._n = 0  # tokens in the context so far
        # The context from position `_kept_from` on, kept only while a divergence waits: the
        # prompt and most of the answer are never needed here.
        self._kept: list[int] = []
        self._kept_from = 0
        self._waiting: list[_Divergence] = []
        self._proposal: _Proposal | None = None

    def reset(self) -> None:
        self.learned.clear()
        self._n = 0
        self._kept.clear()
        self._waiting.clear()
        self._proposal = None

    def rewrite(self, chain: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """`chain` with every learned S replaced by its R (newest substitution first, each
        occurrence left to right), and per token of it the substitution that wrote it (its
        index in `learned`, or -1); None when nothing was learned."""
        if not self.learned:  # most steps of most answers: nothing to rewrite
            return chain, None
        writers = np.full(len(chain), -1, dtype=np.int32)  # per token: the index in `learned`, or -1
        for index, (source, replacement) in enumerate(self.learned):
            if len(chain) < len(source):
                continue
            pieces, end = [], 0
            for q in np.flatnonzero(chain[:len(chain) - len(source) + 1] == source[0]):
                if q >= end and np.array_equal(chain[q:q + len(source)], source):
                    pieces.append((chain[end:q], writers[end:q]))
                    pieces.append((replacement, np.full(len(replacement), index, dtype=np.int32)))
                    end = q + len(source)
            if pieces:
                pieces.append((chain[end:], writers[end:]))
                chain = np.concatenate([p[0] for p in pieces]).astype(np.int32, copy=False)
                writers = np.concatenate([p[1] for p in pieces])
        return chain, writers

    def proposed(self, chain: np.ndarray, match_length: int, writers: np.ndarray | None) -> None:
        """The chain this step's lookup returned (`rewrite`'s output or a prefix of it, with
        `rewrite`'s writers), to be compared with what the step emits."""
        writers = None if writers is None else writers[:len(chain)]
        self._proposal = _Proposal(chain, match_length, self._n, writers) if len(chain) else None

    def observe(self, tokens: np.ndarray) -> None:
        """Tokens appended to the context (the prompt, then each step's emitted tokens)."""
        proposal, self._proposal = self._proposal, None
        if proposal is not None:
            chain = proposal.chain
            # Plain ints: a step emits a token or a few, and numpy's per-call cost is what
            # this would pay (~20 us a step on SmolLM2 after a decode had flushed the caches).
            n = min(len(chain), len(tokens))
            pairs = zip(chain[:n].tolist(), tokens[:n].tolist())
            right = next((i for i, (drafted, emitted) in enumerate(pairs) if drafted != emitted), n)
            if right < n and proposal.writers is not None and proposal.writers[right] >= 0:
                # The answer did not make this substitution here: it is not a rename of
                # everything (a paraphrase, or two spellings that alternate); forget it.
                del self.learned[proposal.writers[right]]
            elif right < len(tokens) and len(chain) > right + ALIGN and proposal.match_length + right >= MIN_COPY:
                self._waiting.append(_Divergence(chain[right:right + MAX_DETOUR + ALIGN].tolist(), proposal.at + right))
        if self._waiting:
            if not self._kept:  # a divergence of this step: it lies in `tokens`
                self._kept_from = self._n
            self._kept.extend(tokens.tolist())
        self._n += len(tokens)
        if self._waiting:
            self._realign()
        if not self._waiting:
            self._kept.clear()

    def _context(self, start: int, end: int) -> list[int]:
        """Context positions start..end-1 (all after the oldest waiting divergence)."""
        return self._kept[start - self._kept_from:end - self._kept_from]

    def _realign(self) -> None:
        still = []
        for div in self._waiting:
            detour = self._detour(div)
            if detour is None:
                if self._n - div.at < MAX_WAIT:
                    still.append(div)
                continue
            n_source, n_written = detour
            if 1 <= n_source <= MAX_SOURCE and n_written >= 1:
                self._learn(np.array(div.rest[:n_source], dtype=np.int32),
                            np.array(self._context(div.at, div.at + n_written), dtype=np.int32))
        self._waiting = still

    def _detour(self, div: _Divergence) -> tuple[int, int] | None:
        """The smallest (a, b), a + b <= MAX_DETOUR, such that the answer, b tokens after the
        divergence, goes on with the chain's text from its token a: a chain tokens were
        replaced by b written ones. None while the answer has not (yet) come back, or while
        a smaller detour cannot be checked yet (the answer is too short for it)."""
        known = self._n
        complete = True  # every detour smaller than `total` was checked
        for total in range(1, MAX_DETOUR + 1):
            checked = True
            for a in range(total + 1):
                b = total - a
                if a + ALIGN > len(div.rest):
                    continue
                if div.at + b + ALIGN > known:
                    checked = False
                elif self._context(div.at + b, div.at + b + ALIGN) == div.rest[a:a + ALIGN]:
                    return (a, b) if complete else None
            complete = complete and checked
        return None

    def _learn(self, source: np.ndarray, replacement: np.ndarray) -> None:
        for s, r in self.learned:
            if np.array_equal(s, source) and np.array_equal(r, replacement):
                return
        self.learned.insert(0, (source, replacement))
        del self.learned[MAX_KEPT:]
