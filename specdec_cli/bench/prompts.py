"""Benchmark prompts: the shipped sets (Spec-Bench, code and document edits) or a JSONL file."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import UsageError

# --prompts NAME -> file shipped in specdec_cli/data.
PROMPT_SETS = {"spec-bench": "spec_bench_public.jsonl", "edits": "edits.jsonl"}
DEFAULT_SET = "spec-bench"


@dataclass
class BenchPrompt:
    question_id: str
    category: str
    text: str  # the first turn: the benchmark is single-turn


def prompts_path(name_or_path: str | os.PathLike[str] | None) -> Path:
    """A shipped set's file (`spec-bench`, `edits`), or the path given."""
    name = DEFAULT_SET if name_or_path is None else str(name_or_path)
    if name in PROMPT_SETS:
        return Path(str(resources.files("specdec_cli") / "data" / PROMPT_SETS[name]))
    return Path(name)


def load_prompts(path: str | os.PathLike[str]) -> list[BenchPrompt]:
    """Parse a Spec-Bench-style JSONL file: one {"question_id", "category", "turns"} object
    per line (other keys, like an edit task's `source`, are ignored); blank lines are
    skipped, anything else malformed is a UsageError naming the line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read prompts file {path}: {exc.strerror or exc} "
                         f"(or name a shipped set: {', '.join(PROMPT_SETS)})") from None
    prompts = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            obj = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise UsageError(f"{where}: not valid UTF-8") from None
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise UsageError(f"{where}: expected a JSON object with question_id, category, turns")
        missing = [key for key in ("question_id", "category", "turns") if key not in obj]
        if missing:
            raise UsageError(f"{where}: missing {', '.join(missing)}")
        turns = obj["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns) \
                or not turns[0].strip():
            raise UsageError(f"{where}: 'turns' must be a non-empty list of strings")
        if not isinstance(obj["category"], str) or not obj["category"]:
            raise UsageError(f"{where}: 'category' must be a non-empty string")
        prompts.append(BenchPrompt(str(obj["question_id"]), obj["category"], turns[0]))
    if not prompts:
        raise UsageError(f"{path} holds no prompts")
    return prompts


def select_prompts(prompts: list[BenchPrompt], categories: list[str] | None,
                   limit: int | None) -> list[BenchPrompt]:
    """Keep the given categories (all when None) and at most `limit` prompts of each, in
    file order."""
    known = list(dict.fromkeys(p.category for p in prompts))
    if categories:
        unknown = [c for c in categories if c not in known]
        if unknown:
            raise UsageError(f"unknown category {', '.join(unknown)} (the prompts have {', '.join(known)})")
    keep = set(categories or known)
    taken: dict[str, int] = {}
    chosen = []
    for prompt in prompts:
        if prompt.category in keep and (limit is None or taken.get(prompt.category, 0) < limit):
            taken[prompt.category] = taken.get(prompt.category, 0) + 1
            chosen.append(prompt)
    return chosen
