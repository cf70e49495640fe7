"""Drafter acceptance and overhead on Spec-Bench prompts (issue 3's measurement).

For every prompt: plain greedy decoding, then each drafter configuration, in one process
with one Generator (the prompt is prefilled once and reused). Reports per category and
overall: mean tokens per verification step, tokens/s relative to plain decoding in the
same run, the native drafting + verification time per step, and whether the output
matched plain decoding token for token.

    python bench/acceptance.py --limit 2 --max-tokens 128 --out bench/acceptance.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path

from specdec_cli.drafting import DraftSettings
from specdec_cli.generator import Generator
from specdec_cli.options import EngineConfig
from specdec_cli.registry import Registry

CONFIGS = [("ngram", 1, 8), ("recycling", 8, 0), ("recycling", 32, 0), ("recycling", 64, 0),
           ("hybrid", 8, 8), ("hybrid", 32, 8), ("hybrid", 64, 8)]


@dataclass
class Run:
    category: str
    question_id: int
    config: str
    mean_accepted: float
    tokens_per_s: float
    speedup: float
    overhead_us_per_step: float  # drafting + layout + top-k + verification + KV commit
    step_ms: float
    matched: bool


def config_name(mode: str, tree: int, chain: int) -> str:
    return f"{mode}:{tree}:{chain}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", default=None)
    parser.add_argument("--limit", type=int, default=2, help="prompts per category")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--categories", default=None, help="comma-separated; default: all")
    args = parser.parse_args()

    resolved = Registry.load().resolve(args.model)
    gen = Generator(resolved.path, EngineConfig(n_ctx=4096, n_threads=args.threads,
                                                n_seq_max=max(tree for _, tree, _ in CONFIGS)),
                    chat_template=resolved.entry.chat_template)
    rows = [json.loads(line) for line in
            files("specdec_cli").joinpath("data/spec_bench_public.jsonl").read_text().splitlines()]
    per_category: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        wanted = args.categories is None or row["category"] in args.categories.split(",")
        if wanted and len(per_category[row["category"]]) < args.limit:
            per_category[row["category"]].append(row)
    runs: list[Run] = []
    started = time.time()
    for category, prompts in per_category.items():
        for row in prompts:
            prompt = gen.tokenize(gen.render_chat([("user", row["turns"][0])]), special=True)[-3000:]
            plain = gen.generate(prompt, max_tokens=args.max_tokens, draft=DraftSettings(mode="none"))
            for mode, tree, chain in CONFIGS:
                res = gen.generate(prompt, max_tokens=args.max_tokens,
                                   draft=DraftSettings(mode=mode, tree_size=tree, draft_len=chain))
                s = res.stats
                runs.append(Run(category, row["question_id"], config_name(mode, tree, chain), s.tokens_per_step,
                                s.tokens_per_s, s.tokens_per_s / plain.stats.tokens_per_s,
                                1000 * (s.draft_ms + s.verify_ms) / s.steps,
                                (s.draft_ms + s.decode_ms + s.verify_ms) / s.steps, res.tokens == plain.tokens))
            done = [r for r in runs if r.question_id == row["question_id"]]
            print(f"[{time.time() - started:6.0f}s] {category} {row['question_id']}: " + ", ".join(
                f"{r.config} {r.mean_accepted:.2f}/step {r.speedup:.2f}x {r.overhead_us_per_step:.0f}us"
                f"{'' if r.matched else ' MISMATCH'}" for r in done), file=sys.stderr, flush=True)
    gen.close()
    summary = summarize(runs)
    if args.out:
        args.out.write_text(json.dumps({"runs": [asdict(r) for r in runs], "summary": summary}, indent=1))
    print(markdown(summary))


def summarize(runs: list[Run]) -> dict:
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for r in runs:
        groups[(r.category, r.config)].append(r)
        groups[("overall", r.config)].append(r)
    return {f"{cat}|{cfg}": {
        "mean_accepted": round(statistics.mean(r.mean_accepted for r in rs), 3),
        "median_speedup": round(statistics.median(r.speedup for r in rs), 3),
        "overhead_us_per_step": round(statistics.mean(r.overhead_us_per_step for r in rs), 1),
        "overhead_share": round(statistics.mean(r.overhead_us_per_step / 1000 / r.step_ms for r in rs), 4),
        "matched": f"{sum(r.matched for r in rs)}/{len(rs)}",
    } for (cat, cfg), rs in groups.items()}


def markdown(summary: dict) -> str:
    lines = ["| category | config | tokens/step | speedup (median) | native overhead/step | share | lossless |",
             "|---|---|---|---|---|---|---|"]
    for key, v in sorted(summary.items()):
        cat, cfg = key.split("|")
        lines.append(f"| {cat} | {cfg} | {v['mean_accepted']:.2f} | {v['median_speedup']:.2f}x | "
                     f"{v['overhead_us_per_step']:.0f} us | {100 * v['overhead_share']:.1f}% | {v['matched']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
