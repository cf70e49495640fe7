"""What `--methods` names: our draft modes, and the peers each family is paired with.

Ours: `none`, `ngram[:DRAFT_LEN]`, `suffix[:DRAFT_LEN]`, `recycling[:TREE_SIZE]`, `hybrid[:TREE_SIZE[:DRAFT_LEN]]`,
`auto[:TREE_SIZE[:DRAFT_LEN]]` (missing numbers: the session defaults) and `control` (plain
decoding timed again as a method of its own: an A/A test whose true speedup is 1.00x).
Peers: `server` / `server:SPEC_TYPE` — llama.cpp's `llama-server` without / with
`--spec-type SPEC_TYPE`; `lcp` / `lcp-pld:N` — llama-cpp-python's high-level `Llama`
without / with `LlamaPromptLookupDecoding(num_pred_tokens=N)`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

LCP_DEFAULT_PRED = 10  # LlamaPromptLookupDecoding's own default num_pred_tokens
LCP_TUNED_PRED = 2  # short drafts: on a compute-bound CPU long ones cost more than they save
# The n-gram modes of llama-server that draft without a second model, run by `--peers`.
SERVER_SPEC_TYPES = ("ngram-simple", "ngram-mod")
# Each family's baseline: its plain decoding, the reference its speedups are paired with.
BASELINES = {"specdec": "none", "server": "server", "lcp": "lcp"}


@dataclass(frozen=True)
class MethodSpec:
    name: str  # as written by the user, e.g. "hybrid:16:8"
    family: str  # "specdec" | "server" | "lcp"
    mode: str  # specdec draft mode ("none" for control); "none" for a peer's baseline
    tree_size: int | None = None
    draft_len: int | None = None
    num_pred_tokens: int | None = None  # lcp-pld
    spec_type: str | None = None  # server

    @property
    def is_baseline(self) -> bool:
        """The family's own plain decoding (`none`, `server`, `lcp`; not `control`)."""
        return BASELINES[self.family] == self.name


def _numbers(name: str, parts: list[str], most: int) -> list[int]:
    if len(parts) > most:
        raise UsageError(f"method {name!r}: too many ':' parameters")
    values = []
    for part in parts:
        if not part.isdigit() or int(part) < 1:
            raise UsageError(f"method {name!r}: {part!r} is not a positive integer")
        values.append(int(part))
    return values


def parse_method(name: str) -> MethodSpec:
    head, *params = name.strip().split(":")
    if head in ("none", "control"):
        _numbers(name, params, 0)
        return MethodSpec(name, "specdec", "none")
    if head in ("ngram", "suffix"):
        (draft_len,) = _numbers(name, params, 1) or [None]
        return MethodSpec(name, "specdec", head, draft_len=draft_len)
    if head == "recycling":
        (tree_size,) = _numbers(name, params, 1) or [None]
        return MethodSpec(name, "specdec", "recycling", tree_size=tree_size)
    if head in ("hybrid", "auto"):
        values = _numbers(name, params, 2) + [None, None]
        return MethodSpec(name, "specdec", head, tree_size=values[0], draft_len=values[1])
    if head == "lcp":
        _numbers(name, params, 0)
        return MethodSpec(name, "lcp", "none")
    if head == "lcp-pld":
        (pred,) = _numbers(name, params, 1) or [LCP_DEFAULT_PRED]
        return MethodSpec(name, "lcp", "pld", num_pred_tokens=pred)
    if head == "server":
        if len(params) > 1 or (params and not params[0]):
            raise UsageError(f"method {name!r}: use server:SPEC_TYPE, e.g. server:ngram-simple")
        return MethodSpec(name, "server", params[0] if params else "none", spec_type=params[0] if params else None)
    raise UsageError(f"unknown method {head!r} (choose from none, ngram, suffix, recycling, hybrid, auto, control, "
                     "server, server:SPEC_TYPE, lcp, lcp-pld:N)")


def parse_methods(text: str) -> list[MethodSpec]:
    """The methods in order, each family's baseline added where a family lacks it (every
    ratio needs one)."""
    names = [n for n in (part.strip() for part in text.split(",")) if n]
    if not names:
        raise UsageError("--methods is empty")
    methods = [parse_method(n) for n in dict.fromkeys(names)]
    for family, baseline in BASELINES.items():
        if family == "specdec" or any(m.family == family for m in methods):
            if not any(m.name == baseline for m in methods):
                methods.insert(0 if family == "specdec" else len(methods), parse_method(baseline))
    return methods


def peer_methods(server_path: Path | None) -> list[MethodSpec]:
    """What `--peers` adds: llama-server without and with its n-gram modes when a binary
    is known."""
    if server_path is None:
        return []
    return [parse_method(n) for n in ["server"] + [f"server:{t}" for t in SERVER_SPEC_TYPES]]


def find_llama_server(explicit: str | None) -> Path | None:
    """--llama-server PATH (must exist), else `llama-server` on PATH, else None."""
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_dir():
            path = path / "llama-server"
        if not path.is_file() or not os.access(path, os.X_OK):
            raise UsageError(f"--llama-server {explicit}: no executable found there")
        return path
    found = shutil.which("llama-server")
    return Path(found) if found else None
