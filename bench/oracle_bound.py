"""How fast could any drafter be here? Decoding with drafts that are always right.

For each prompt, plain decoding (`--draft none`) gives the answer. Then the same engine
decodes that answer again as if a drafter had proposed it exactly: each step verifies k
rows (the last accepted token and the next k-1 tokens of the answer) and keeps all of them,
so a step of k rows yields k tokens at the real context length. No drafter, ours or
llama.cpp's, can verify fewer rows per token; with chains capped at k none can do better
than this rate, whatever it matches. Interleaved per prompt with llama-server's plain
decoding and its n-gram modes, so the ratio "oracle / best llama-server mode" is the
ceiling on what model-free drafting can reach over llama-server on this machine with
llama.cpp's kernels (issue 16's wall-clock target asks 1.25x).

    python bench/oracle_bound.py -m qwen2.5-coder-1.5b --prompts edits --limit 2 --out bench/oracle_qwen_edits.json

Rates are counted as the bench counts ours: tokens after the first step over the time
after it (llama-server's predicted_per_second counts its tokens after the prompt pass).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np

from specdec_cli import _native as nat
from specdec_cli.bench.methods import find_llama_server, parse_methods
from specdec_cli.bench.prompts import load_prompts, prompts_path, select_prompts
from specdec_cli.bench.run_server import LlamaServer
from specdec_cli.drafting import DraftSettings
from specdec_cli.session import RunOptions, open_session

# llama-server's plain decoding and its n-gram modes (parse_methods also adds our `none`).
SERVER_METHODS = [spec for spec in parse_methods("server,server:ngram-simple,server:ngram-mod")
                  if spec.family == "server"]


def oracle_rate(generator, prompt: np.ndarray, answer: list[int], k: int) -> tuple[float, int]:
    """Decode `answer` after `prompt` in steps of k rows whose drafts are the answer itself.
    Returns (tokens per second after the first step, rows whose greedy token differed from
    the answer: fast-mode near-ties between a k-row and a one-row call)."""
    ctx, batch, seqs = generator.ctx, generator._batch, generator._all_seqs
    generator._drop_uncommitted(0)  # a cold cache: the prompt is prefilled as for `none`
    body = prompt[:-1]
    ctx.decode_chain(batch, body, 0, seqs, generator.config.n_batch)
    n_past, root, pos, differ = len(body), int(prompt[-1]), 0, 0
    t_first = time.perf_counter()
    first_tokens = 0
    while pos < len(answer):
        n_rows = min(k, len(answer) - pos)  # the last step predicts the answer's last tokens only
        rows = np.array([root] + answer[pos:pos + n_rows - 1], dtype=np.int32)
        batch.set_chain(rows, n_past, seqs, all_outputs=True)
        ctx.decode(batch)
        predicted, _ = nat.topk_rows(ctx.logits(len(rows)), 1)
        expected = np.array(answer[pos:pos + len(rows)], dtype=np.int32)
        differ += int(np.count_nonzero(predicted[:len(expected), 0] != expected))
        n_past += len(rows)
        pos += len(rows)
        root = answer[pos - 1]
        if not first_tokens:
            first_tokens, t_first = len(rows), time.perf_counter()
    elapsed = time.perf_counter() - t_first
    generator._drop_uncommitted(0)
    done = len(answer) - first_tokens
    return (done / elapsed if elapsed > 0 and done > 0 else float("nan")), differ


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--prompts", default="edits")
    parser.add_argument("--limit", type=int, default=2, help="prompts per category, as `specdec bench --limit`")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chains", default="8,16,32,64", help="oracle step sizes k (rows = tokens per step)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    chains = [int(k) for k in args.chains.split(",")]

    session = open_session(RunOptions(model=args.model, threads=args.threads, kv_cache="f16", history=False))
    generator = session.generator
    binary = find_llama_server(os.environ.get("SPECDEC_LLAMA_SERVER"))
    if binary is None:
        raise SystemExit("llama-server not found: set SPECDEC_LLAMA_SERVER (bench/build_llama_server.sh)")
    servers = {spec.name: LlamaServer(binary, generator.model_path, spec.spec_type, args.threads, generator.ctx.n_ctx,
                                      ("f16", "f16")) for spec in SERVER_METHODS}
    prompts = select_prompts(load_prompts(prompts_path(args.prompts)), None, args.limit)
    rows = []
    try:
        for spec in prompts:
            tokens = generator.tokenize(generator.render_chat([("user", spec.text)]))
            if not rows:  # warm-up: page the weights in on every side
                generator.generate(tokens, max_tokens=8, draft=DraftSettings(mode="none"))
                for server in servers.values():
                    server.complete([int(t) for t in tokens], 8)
            plain = generator.generate(tokens, max_tokens=args.max_tokens, draft=DraftSettings(mode="none"))
            row = {"question_id": spec.question_id, "n_prompt": len(tokens), "n_generated": len(plain.tokens),
                   "none": plain.stats.tokens_per_s}
            for k in chains:
                row[f"oracle:{k}"], row[f"oracle:{k}:differ"] = oracle_rate(generator, tokens, plain.tokens, k)
            for name, server in servers.items():
                row[name] = float(server.complete([int(t) for t in tokens], args.max_tokens)["timings"]
                                  ["predicted_per_second"])
            best_server = max(row[name] for name in servers)
            # An answer of at most k tokens is one step: no rate after the first one (nan).
            row["oracle_best"] = max(row[f"oracle:{k}"] for k in chains if not math.isnan(row[f"oracle:{k}"]))
            row["oracle_vs_best_server"] = row["oracle_best"] / best_server
            row["none_vs_server"] = row["none"] / row["server"]
            rows.append(row)
            print(f"{spec.question_id}: {len(tokens)}+{len(plain.tokens)} tokens; none {row['none']:.1f}, "
                  + ", ".join(f"oracle {k} {row[f'oracle:{k}']:.1f}" for k in chains)
                  + ", " + ", ".join(f"{n} {row[n]:.1f}" for n in servers)
                  + f" -> oracle/best server {row['oracle_vs_best_server']:.3f}x", flush=True)
    finally:
        for server in servers.values():
            server.close()
        session.close()
    summary = {"prompts": len(rows),
               "median_oracle_vs_best_server": statistics.median(r["oracle_vs_best_server"] for r in rows),
               "median_none_vs_server": statistics.median(r["none_vs_server"] for r in rows)}
    for k in chains:
        ratios = [r[f"oracle:{k}"] / r["none"] for r in rows if not math.isnan(r[f"oracle:{k}"])]
        summary[f"median_oracle_{k}_vs_none"] = statistics.median(ratios) if ratios else None
    print(json.dumps(summary, indent=1))
    if args.out:
        clean = [{key: None if isinstance(value, float) and math.isnan(value) else value
                  for key, value in row.items()} for row in rows]  # JSON has no nan
        args.out.write_text(json.dumps({"model": args.model, "threads": args.threads, "max_tokens": args.max_tokens,
                                        "prompts": args.prompts, "summary": summary, "rows": clean}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
