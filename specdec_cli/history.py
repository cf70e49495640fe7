"""A bounded, persistent history of earlier prompts and outputs per model, so that repeated
work (the same document edited again, an agent's tool output seen before, a chat turn
restating an earlier answer) drafts from it (SuffixDecoding, Oliaro et al. 2024, keeps
such a global index of earlier outputs).

The file is a header and then one record per document: a record marker, the token count,
a CRC-32 of the tokens and the tokens. Documents are appended one write each; a record
torn by a crash fails its CRC and is dropped at the next load (the file is rewritten
without it). When the file holds more than its bound, it is rewritten atomically without
the oldest documents. A file that is not a history at all is reported and started afresh.

For one generation only the documents that share an 8-token sequence with the prompt are
indexed (the most overlapping first, up to INDEXED_TOKENS): building a suffix automaton
over millions of tokens for every run would cost more than it saves.
"""

from __future__ import annotations

import hashlib
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _native as nat
from .paths import cache_dir, write_cache_file

HEADER = b"specdec history\x00" + struct.pack("<I", 1)
RECORD = struct.Struct("<III")  # marker, n_tokens, crc32
MARKER = 0x52484453  # "SDHR"
MAX_TOKENS = 8_000_000  # the bound: oldest documents go first
SLACK = 1.25  # rewrite once the file holds this much more than the bound
INDEXED_TOKENS = 262_144  # history indexed for one generation
MIN_DOCUMENT = 16  # shorter documents are not worth keeping
NGRAM = 8  # length of the token sequences a document must share with the prompt
_BITMAP_BITS = 22


@dataclass
class HistoryStats:
    path: Path
    documents: int
    tokens: int
    file_bytes: int


def history_path(model_sha256: str) -> Path:
    return cache_dir() / "history" / f"{model_sha256[:16]}.tokens"


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")
    sys.stderr.flush()


def _record(tokens: np.ndarray) -> bytes:
    data = np.ascontiguousarray(tokens, dtype="<i4").tobytes()
    return RECORD.pack(MARKER, len(tokens), zlib.crc32(data)) + data


class History:
    """The history file of one model; documents are loaded on first use."""

    def __init__(self, path: Path, max_tokens: int = MAX_TOKENS):
        self.path = path
        self.max_tokens = max_tokens
        self._documents: list[np.ndarray] | None = None
        self._digests: set[bytes] = set()

    # ---- reading -----------------------------------------------------------------------

    def documents(self) -> list[np.ndarray]:
        if self._documents is None:
            self._documents = self._load()
            self._digests = {_digest(d) for d in self._documents}
        return self._documents

    def _load(self) -> list[np.ndarray]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            _warn(f"cannot read the history {self.path} ({exc.strerror or exc}); drafting without it")
            return []
        if not raw.startswith(HEADER):
            _warn(f"{self.path} is not a specdec history; starting a fresh one")
            self._rewrite([])
            return []
        documents, offset = [], len(HEADER)
        while offset + RECORD.size <= len(raw):
            marker, n, crc = RECORD.unpack_from(raw, offset)
            data = raw[offset + RECORD.size:offset + RECORD.size + 4 * n]
            if marker != MARKER or len(data) != 4 * n or zlib.crc32(data) != crc:
                break
            documents.append(np.frombuffer(data, dtype="<i4").astype(np.int32))
            offset += RECORD.size + 4 * n
        if offset != len(raw):  # a torn last write, or damage: keep what checked out
            _warn(f"the history {self.path} has a damaged record after {len(documents)} documents; "
                  f"dropping the rest")
            self._rewrite(documents)
        return documents

    def stats(self) -> HistoryStats:
        docs = self.documents()
        size = self.path.stat().st_size if self.path.is_file() else 0
        return HistoryStats(self.path, len(docs), sum(len(d) for d in docs), size)

    # ---- writing -----------------------------------------------------------------------

    def add(self, documents: list[np.ndarray]) -> None:
        """Append documents (those long enough and not stored already)."""
        known = self.documents()
        fresh = []
        for doc in documents:
            doc = np.ascontiguousarray(doc, dtype=np.int32)
            digest = _digest(doc)
            if len(doc) >= MIN_DOCUMENT and digest not in self._digests:
                self._digests.add(digest)
                fresh.append(doc)
        if not fresh:
            return
        known.extend(fresh)
        total = sum(len(d) for d in known)
        if total > self.max_tokens * SLACK:
            while known and total > self.max_tokens:
                total -= len(known.pop(0))
            self._digests = {_digest(d) for d in known}
            self._rewrite(known)
            return
        try:
            if not self.path.is_file():
                self._rewrite(known[:-len(fresh)])
            with open(self.path, "ab") as handle:
                handle.write(b"".join(_record(d) for d in fresh))
        except OSError as exc:
            _warn(f"cannot add to the history {self.path} ({exc.strerror or exc}); it stays as it was")

    def clear(self) -> None:
        self._documents, self._digests = [], set()
        self.path.unlink(missing_ok=True)

    def _rewrite(self, documents: list[np.ndarray]) -> None:
        write_cache_file(self.path, HEADER + b"".join(_record(d) for d in documents))

    # ---- drafting ----------------------------------------------------------------------

    def automaton_for(self, prompt: np.ndarray) -> nat.SuffixAutomaton | None:
        """A suffix automaton over the documents that share an 8-token sequence with the
        prompt, most shared first, up to INDEXED_TOKENS; None when none does."""
        docs = self.documents()
        if not docs or len(prompt) < NGRAM:
            return None
        bitmap = np.zeros(1 << _BITMAP_BITS, dtype=bool)
        bitmap[_ngram_hashes(prompt) >> np.uint64(64 - _BITMAP_BITS)] = True
        lengths = np.array([len(d) for d in docs])
        flat = np.concatenate(docs)
        hit = bitmap[_ngram_hashes(flat) >> np.uint64(64 - _BITMAP_BITS)]
        # An n-gram counts for the document it starts in (ones spanning a boundary are noise).
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        hits = np.add.reduceat(np.concatenate([hit, np.zeros(NGRAM - 1, dtype=bool)]).astype(np.int64), starts)
        order = sorted((i for i in range(len(docs)) if hits[i] > 0), key=lambda i: (-hits[i], -i))
        if not order:
            return None
        automaton, budget = nat.SuffixAutomaton(), INDEXED_TOKENS
        for i in order:
            if lengths[i] > budget:
                continue
            automaton.extend(docs[i])
            automaton.end_document()
            budget -= lengths[i]
        return automaton


def _digest(tokens: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(tokens, dtype="<i4").tobytes(), digest_size=16).digest()


def _ngram_hashes(tokens: np.ndarray) -> np.ndarray:
    """A 64-bit polynomial hash of every NGRAM-token window (numpy wraps uint64 overflow)."""
    t = np.ascontiguousarray(tokens, dtype=np.int64).astype(np.uint64)
    n = len(t) - NGRAM + 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(NGRAM):
            h = h * np.uint64(0x9E3779B97F4A7C15) + t[j:j + n] + np.uint64(1)
        # mix the high bits, which pick the bitmap slot
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(32)
    return h
