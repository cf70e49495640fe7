"""ONNX prefill vs llama.cpp prefill: equality of the first logits and of the greedy
continuation with every KV cache type, and time to first token (issues 8 and 21;
docs/DESIGN.md, NPU prefill).

Equality: for each model, KV cache type (K/V: f16/f16 the fast engine's default, f16/q8_0
the exact engine's, q8_0/q8_0, q4_0/q4_0) and prompt (Spec-Bench prompts of 100-1500
tokens, rendered with the model's chat template), the prompt body is prefilled (a) by
llama.cpp with the fast engine's settings (repacked weights, flash attention, n_ubatch =
n_batch = 512, 64 sequences), (b) by the float ONNX graph on the chosen
onnxruntime provider, handed to llama.cpp's cache; then the last prompt token and 32
greedy tokens are decoded in llama.cpp. Reported: top-1 agreement, how many 32-token
continuations are identical, and at each divergence llama.cpp's own gap between its top
two logits there (a near tie is what float rounding can flip).

Anchor (--anchor N): the candidate is llama.cpp itself, prefilling in llama_decode calls of
N tokens instead of n_batch (N = 1: the one-token decode path's kernels), against the same
batched reference. How far llama.cpp's own paths part says what to expect of any other
prefill; a quantized cache amplifies a rounding difference (a value that lands on the other
side of a rounding boundary moves by a whole q4_0 step).

Speed (--speed): TTFT (prefill + the first decode step) of both paths at 256 / 1k / 4k
prompt tokens, the two paths interleaved, median of --repeats runs each.

On this machine there is no NPU: the CPU execution provider stands in for one, so the
speed columns compare two CPU implementations, not CPU against NPU.

    python bench/prefill_equality.py [--models smollm2-135m,gemma3-270m,qwen2.5-coder-1.5b] [--prompts 5] [--json out.json]
    python bench/prefill_equality.py --anchor 7 [--models ...] [--kv q4_0/q4_0] [--json out.json]
    python bench/prefill_equality.py --speed [--lengths 256,1024,4096] [--repeats 3] [--json out.json]

--json also writes the markdown table beside it (out.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specdec_cli.bench.prompts import prompts_path  # noqa: E402
from specdec_cli.llama import (ContextConfig, LlamaContext, LlamaModel, TokenBatch,  # noqa: E402
                               repacked_weights_safe)
from specdec_cli.prefill.compare import (compare_logits, first_divergence, greedy_after_prefill,  # noqa: E402
                                         llama_prefill)
from specdec_cli.prefill.onnx_prefill import OnnxPrefiller  # noqa: E402

PROMPTS = prompts_path("spec-bench")  # the Spec-Bench prompts the package ships
N_NEW = 32
N_SEQ = 64  # the Generator shares the prompt with every draft-tree sequence
KV_TYPES = [("f16", "f16"), ("f16", "q8_0"), ("q8_0", "q8_0"), ("q4_0", "q4_0")]
MODELS = ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-1.5b")


def model_paths(names: list[str]) -> dict[str, Path]:
    from specdec_cli.registry import Registry

    registry = Registry.load()
    return {name: registry.resolve(name).path for name in names}


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
    kv: str
    candidate: str  # what is compared with llama.cpp's batched prefill: "onnx:CPU", "llama.cpp x7"
    prompt: str
    n_tokens: int
    max_abs_diff: float
    kl: float
    top1_equal: bool
    top1_margin: float  # llama.cpp's top-1 minus top-2 logit after the prompt
    continuation_equal: bool
    first_divergence: int  # index of the first differing continuation token, N_NEW when equal
    margin_at_divergence: float  # llama.cpp's top-1 minus top-2 logit there (a near tie?)
    llama_prefill_s: float
    candidate_prefill_s: float


def kv_context(model: LlamaModel, kv: tuple[str, str], n_ctx: int, threads: int) -> LlamaContext:
    return LlamaContext(model, ContextConfig(n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_seq_max=N_SEQ,
                                             n_threads=threads, kv_k=kv[0], kv_v=kv[1], flash_attn=True))


def chunked_llama_prefill(chunk: int):
    """llama.cpp's prefill in llama_decode calls of `chunk` tokens (the anchor candidate)."""
    def prefill(ctx: LlamaContext, body: np.ndarray, n_seq: int) -> None:
        ctx.decode_chain(TokenBatch(ctx.config.n_batch, n_seq), body, 0, np.arange(n_seq, dtype=np.int32), chunk)
    return prefill


def run_equality(name: str, path: Path, n_prompts: int, ep: str, threads: int, kv_types: list[tuple[str, str]],
                 anchor: int | None = None, save=lambda rows: None) -> list[Row]:
    model = LlamaModel(path, repacked_weights=repacked_weights_safe())  # the fast engine's weights
    if anchor:
        candidate, prefill = f"llama.cpp x{anchor}", chunked_llama_prefill(anchor)
    else:
        onnx = OnnxPrefiller(path, ep=ep, n_threads=threads)
        candidate, prefill = onnx.backend_name, onnx.prefill
    prompts = pick_prompts(model, n_prompts, PROMPTS)
    rows: list[Row] = []
    for kv in kv_types:
        ctx = kv_context(model, kv, 2048, threads)
        greedy_after_prefill(ctx, prompts[0][1][:80], 1, prefill, N_SEQ)  # warms up (ONNX: exports this variant)
        for label, tokens in prompts:
            ref = greedy_after_prefill(ctx, tokens, N_NEW, llama_prefill, N_SEQ)
            got = greedy_after_prefill(ctx, tokens, N_NEW, prefill, N_SEQ)
            cmp = compare_logits(ref.first_logits, got.first_logits)
            split = first_divergence(ref, got)
            margin = ref.margins[split] if split < len(ref.margins) else float("nan")
            rows.append(Row(name, "/".join(kv), candidate, label, len(tokens), cmp.max_abs_diff, cmp.kl,
                            cmp.top1_equal, ref.margins[0], got.tokens == ref.tokens, split, margin, ref.prefill_s,
                            got.prefill_s))
            print(f"  {'/'.join(kv):<9} {label:<22} {len(tokens):5d} tok  diff {cmp.max_abs_diff:7.4f}  "
                  f"KL {cmp.kl:.2e}  top1 {cmp.top1_equal!s:5}  same up to {split:2d} (gap {margin:.3f})  "
                  f"prefill llama {ref.prefill_s:6.2f} s, {candidate} {got.prefill_s:6.2f} s",
                  file=sys.stderr, flush=True)
            save(rows)  # a long run keeps what it has
        ctx.close()
    model.close()
    return rows


def summarize(rows: list[Row]) -> str:
    lines = ["| model | K/V cache | candidate | prompts (tokens) | top-1 equal | 32-token continuation identical | "
             "logit gap at each divergence (llama.cpp's top-1 minus top-2) | max abs logit diff | KL (mean) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model, kv, candidate in dict.fromkeys((r.model, r.kv, r.candidate) for r in rows):
        sel = [r for r in rows if (r.model, r.kv, r.candidate) == (model, kv, candidate)]
        gaps = ", ".join(f"{r.margin_at_divergence:.3f} (token {r.first_divergence})"
                         for r in sel if not r.continuation_equal) or "-"
        lengths = f"{len(sel)} ({min(r.n_tokens for r in sel)}-{max(r.n_tokens for r in sel)})"
        lines.append(f"| {model} | {kv} | {candidate} | {lengths} | {sum(r.top1_equal for r in sel)}/{len(sel)} | "
                     f"{sum(r.continuation_equal for r in sel)}/{len(sel)} | {gaps} | "
                     f"{max(r.max_abs_diff for r in sel):.3f} | {np.mean([r.kl for r in sel]):.1e} |")
    return "\n".join(lines)


@dataclass
class SpeedRow:
    model: str
    n_tokens: int
    llama_ttft_s: list[float] = field(default_factory=list)
    onnx_ttft_s: list[float] = field(default_factory=list)
    # CPU seconds of this process over the same span: on a shared machine, what the path
    # costs apart from the time it waited for a core (with 1 thread, wall = CPU when idle)
    llama_cpu_s: list[float] = field(default_factory=list)
    onnx_cpu_s: list[float] = field(default_factory=list)


def run_speed(name: str, path: Path, lengths: list[int], repeats: int, ep: str, threads: int,
              save=lambda rows: None) -> list[SpeedRow]:
    """TTFT of both paths per prompt length, interleaved (llama, onnx, llama, onnx, ...) so
    that a change in the machine's load hits both; the fast engine's f16 cache."""
    model = LlamaModel(path, repacked_weights=repacked_weights_safe())  # the fast engine's
    ctx = kv_context(model, ("f16", "f16"), max(lengths) + 64, threads)
    onnx = OnnxPrefiller(path, ep=ep, n_threads=threads)
    source = np.concatenate([t for _, t in pick_prompts(model, 40, PROMPTS)])
    greedy_after_prefill(ctx, source[:200], 1, onnx.prefill, N_SEQ)  # export, first-run costs
    greedy_after_prefill(ctx, source[:200], 1, llama_prefill, N_SEQ)
    rows = []
    for n in lengths:
        row = SpeedRow(name, n)
        tokens = source[:n]
        for _ in range(repeats):
            for prefill, ttft, cpu in ((llama_prefill, row.llama_ttft_s, row.llama_cpu_s),
                                       (onnx.prefill, row.onnx_ttft_s, row.onnx_cpu_s)):
                c0 = time.process_time()
                ttft.append(greedy_after_prefill(ctx, tokens, 1, prefill, N_SEQ).ttft_s)
                cpu.append(time.process_time() - c0)
        rows.append(row)
        print(f"  {name} {n:5d} tok  llama {statistics.median(row.llama_ttft_s):7.2f} s  "
              f"onnx {statistics.median(row.onnx_ttft_s):7.2f} s  ({row.llama_ttft_s} / {row.onnx_ttft_s}; "
              f"CPU s {row.llama_cpu_s} / {row.onnx_cpu_s})",
              file=sys.stderr, flush=True)
        save(rows)
    ctx.close()
    model.close()
    return rows


def summarize_speed(rows: list[SpeedRow]) -> str:
    lines = ["| model | prompt tokens | llama.cpp TTFT s (median) | ONNX CPU EP TTFT s (median) | ONNX / llama.cpp | "
             "runs (llama.cpp; ONNX) | CPU s, median (llama.cpp; ONNX) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        llama, onnx = statistics.median(r.llama_ttft_s), statistics.median(r.onnx_ttft_s)
        runs = f"{', '.join(f'{x:.2f}' for x in r.llama_ttft_s)}; {', '.join(f'{x:.2f}' for x in r.onnx_ttft_s)}"
        cpu = (f"{statistics.median(r.llama_cpu_s):.2f}; {statistics.median(r.onnx_cpu_s):.2f}"
               if r.llama_cpu_s else "-")
        lines.append(f"| {r.model} | {r.n_tokens} | {llama:.2f} | {onnx:.2f} | {onnx / llama:.2f}x | {runs} | {cpu} |")
    return "\n".join(lines)


def machine_state() -> str:
    load = os.getloadavg()
    return f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} on {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=5)
    parser.add_argument("--ep", default="auto", help="onnxruntime execution provider (auto = NPU if any, else CPU)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the rows here and the table beside it (.md)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated aliases ({', '.join(MODELS)})")
    parser.add_argument("--kv", default=",".join("/".join(kv) for kv in KV_TYPES),
                        help="comma-separated K/V cache types to compare (K/V each)")
    parser.add_argument("--anchor", type=int, default=None, metavar="N",
                        help="compare llama.cpp's batched prefill with its own prefill in calls of N tokens, not ONNX")
    parser.add_argument("--speed", action="store_true", help="measure TTFT of both paths instead")
    parser.add_argument("--lengths", default="256,1024,4096")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from specdec_cli.llama import default_threads
    from specdec_cli.prefill.providers import choose_provider

    threads = args.threads or default_threads()
    provider = choose_provider(args.ep)
    t0 = time.time()
    note = ("the CPU execution provider stands in for an NPU on this machine (no NPU present)"
            if not provider.is_npu else f"provider: {provider.name} ({provider.description})")
    models = model_paths(args.models.split(","))
    before = machine_state()
    if args.speed:
        speed: list[SpeedRow] = []

        def save_speed(model_rows: list[SpeedRow]) -> None:
            if args.json:
                args.json.write_text(json.dumps({"provider": provider.name, "threads": threads, "before": before,
                                                 "rows": [asdict(r) for r in speed + model_rows]}, indent=1))

        for name, path in models.items():
            print(f"{name}: {path}", file=sys.stderr)
            speed += run_speed(name, path, [int(x) for x in args.lengths.split(",")], args.repeats, args.ep, threads,
                               save_speed)
        report = (f"TTFT, median of {args.repeats} interleaved runs, {threads} threads, onnxruntime provider "
                  f"{provider.name}; {note}. Machine: {before} before, {machine_state()} after "
                  f"({time.time() - t0:.0f} s).\n\n{summarize_speed(speed)}\n")
        print(report)
        if args.json:
            args.json.write_text(json.dumps({"provider": provider.name, "threads": threads, "before": before,
                                             "after": machine_state(), "rows": [asdict(r) for r in speed]}, indent=1))
            args.json.with_suffix(".md").write_text(report)
        return
    kv_types = [tuple(kv.split("/")) for kv in args.kv.split(",")]
    rows: list[Row] = []

    def save(model_rows: list[Row]) -> None:
        if args.json:
            args.json.write_text(json.dumps({"provider": provider.name, "threads": threads, "before": before,
                                             "rows": [asdict(r) for r in rows + model_rows]}, indent=1))

    for name, path in models.items():
        print(f"{name}: {path}", file=sys.stderr)
        rows += run_equality(name, path, args.prompts, args.ep, threads, kv_types, args.anchor, save)
    against = (f"llama.cpp prefill in calls of {args.anchor} tokens" if args.anchor
               else f"ONNX prefill (onnxruntime provider {provider.name}; {note})")
    report = (f"{against} vs llama.cpp's batched prefill, {N_NEW}-token greedy continuation, {threads} threads. "
              f"Machine: {before} before, {machine_state()} after ({time.time() - t0:.0f} s)\n\n{summarize(rows)}\n")
    print(report)
    if args.json:
        args.json.with_suffix(".md").write_text(report)


if __name__ == "__main__":
    main()
