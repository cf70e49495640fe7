"""Does drafting from the history pay on repeated work? (issue 16)

The shipped edit set asks for one edit of each CPython function. Here every code task is
asked a second time with another instruction on the same source (rename -> add a
docstring, add type hints -> remove comments, ...), as a user editing the same file again
would. First pass: the original tasks, with a fresh history recording them. Second pass:
the new tasks, each generated with the history and without it, interleaved (ABBA per
prompt). Reported: tokens per step and decode tok/s of both, paired per prompt, and
whether the outputs are equal (they must be in --exact mode; in the fast mode up to
near-ties).

    python bench/history_check.py -m qwen2.5-coder-1.5b --limit 12 --max-tokens 256 --out bench/history_qwen.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

from specdec_cli.bench.prompts import load_prompts, prompts_path
from specdec_cli.drafting import DraftSettings

# The second request for a function, chosen to differ from the first one's kind.
SECOND_INSTRUCTION = {
    "code-fstring": "Add a concise docstring to the function below. Change nothing else.",
    "code-remove-comments": "Add type hints to the parameters and the return value of the function below. "
                            "Change nothing else.",
    "code-refactor": "Remove every comment from the function below. Change nothing else.",
    "code-docstring": "Rename the function below to `{name}_v2`. Change nothing else.",
    "code-type-hints": "Remove every comment from the function below and keep everything else as it is.",
    "code-rename": "Add a concise docstring to the function below. Change nothing else.",
}
CLOSING = "Return the complete edited function only, in one code block."


def second_task(category: str, text: str) -> str | None:
    """The same source with another instruction, or None for a task that is not code."""
    code = re.search(r"```python\n(.*?)```", text, re.S)
    if category not in SECOND_INSTRUCTION or code is None:
        return None
    name = re.search(r"def (\w+)", code.group(1))
    instruction = SECOND_INSTRUCTION[category].format(name=name.group(1) if name else "function")
    return f"{instruction}\n\n```python\n{code.group(1)}```\n\n{CLOSING}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--limit", type=int, default=12, help="code tasks to use")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--draft", default="auto", choices=["auto", "suffix"])
    parser.add_argument("--exact", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    tasks = [p for p in load_prompts(prompts_path("edits")) if second_task(p.category, p.text)][:args.limit]
    with tempfile.TemporaryDirectory() as cache:
        # A fresh history in a temporary folder; tuner profiles come from the user's cache.
        from specdec_cli.history import History
        from specdec_cli.session import RunOptions, open_session

        session = open_session(RunOptions(model=args.model, exact=args.exact, history=False))
        generator = session.generator
        generator.history = History(Path(cache) / "history.tokens")
        draft = DraftSettings(mode=args.draft, tree_size=session.draft.tree_size, draft_len=session.draft.draft_len)

        def generate(text: str, history: bool):
            tokens = generator.tokenize(generator.render_chat([("user", text)]))
            keep, generator.history = generator.history, generator.history if history else None
            try:
                return generator.generate(tokens, max_tokens=args.max_tokens, draft=draft)
            finally:
                generator.history = keep

        for i, task in enumerate(tasks):
            first = generate(task.text, history=True)
            print(f"first pass {i + 1}/{len(tasks)} {task.question_id}: {first.stats.n_generated} tokens",
                  file=sys.stderr)
        rows = []
        for i, task in enumerate(tasks):
            text = second_task(task.category, task.text)
            runs = {}
            for name in (("history", "alone") if i % 2 == 0 else ("alone", "history")):
                runs[name] = generate(text, history=name == "history")
            h, a = runs["history"].stats, runs["alone"].stats
            rows.append({"question_id": task.question_id, "category": task.category,
                         "tokens_per_step": {"history": h.tokens_per_step, "alone": a.tokens_per_step},
                         "tokens_per_s": {"history": h.tokens_per_s, "alone": a.tokens_per_s},
                         "chains_from_history": h.chains_from.get("history", 0),
                         "same_output": runs["history"].tokens == runs["alone"].tokens})
            print(f"second pass {i + 1}/{len(tasks)} {task.question_id}: tok/step {h.tokens_per_step:.2f} with history, "
                  f"{a.tokens_per_step:.2f} without", file=sys.stderr)
        session.close()

    def mean(key: str, name: str) -> float:
        return statistics.fmean(r[key][name] for r in rows)

    summary = {"model": session.alias, "engine": "exact" if args.exact else "fast", "draft": args.draft,
               "tasks": len(rows), "max_tokens": args.max_tokens,
               "tokens_per_step": {"history": round(mean("tokens_per_step", "history"), 3),
                                   "alone": round(mean("tokens_per_step", "alone"), 3)},
               "median_speedup": round(statistics.median(r["tokens_per_s"]["history"] / r["tokens_per_s"]["alone"]
                                                         for r in rows), 3),
               "same_output": sum(r["same_output"] for r in rows), "rows": rows}
    summary["tokens_per_step_gain"] = round(summary["tokens_per_step"]["history"]
                                            / summary["tokens_per_step"]["alone"] - 1, 3)
    text = json.dumps(summary, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
