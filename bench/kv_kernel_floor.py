"""The noise floor under bench/kv_quality.py's top-1 agreement: how much llama.cpp's own
f16/f16 attention kernels disagree with one another, next to what quantizing the cache adds.

Teacher-forced over the first public Spec-Bench prompt of each category (at most 400
tokens), each variant's next-token distributions are compared with two references: f16/f16
through the tiled flash-attention kernel (batched prefill) and f16/f16 without flash
attention (f32 attention matmuls). Variants: f16/f16 one query row at a time (n_ubatch 1),
and the quantized caches.

    python bench/kv_kernel_floor.py smollm2-135m
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kv_quality as kq  # noqa: E402
from specdec_cli.llama import ContextConfig, LlamaContext, TokenBatch  # noqa: E402

MAX_TOKENS = 400


def open_variant(model, kv: tuple[str, str], n_batch: int, n_ubatch: int, flash_attn: bool) -> LlamaContext:
    return LlamaContext(model, ContextConfig(n_ctx=n_batch + 64, n_batch=n_batch, n_ubatch=n_ubatch, n_seq_max=1,
                                             kv_k=kv[0], kv_v=kv[1], flash_attn=flash_attn))


def main() -> None:
    alias = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
    model = kq.LlamaModel(kq.model_path(alias))
    n_batch = MAX_TOKENS + 8
    variants = {
        "f16/f16 tiled FA": open_variant(model, ("f16", "f16"), n_batch, 512, True),
        "f16/f16 no FA": open_variant(model, ("f16", "f16"), n_batch, 512, False),
        "f16/f16 one-row FA": open_variant(model, ("f16", "f16"), n_batch, 1, True),
        "f16/q8_0": open_variant(model, ("f16", "q8_0"), n_batch, 512, True),
        "q8_0/q8_0": open_variant(model, ("q8_0", "q8_0"), n_batch, 512, True),
        "q4_0/q4_0": open_variant(model, ("q4_0", "q4_0"), n_batch, 512, True),
    }
    references = ("f16/f16 tiled FA", "f16/f16 no FA")
    agreement = {(ref, name): kq.Agreement() for ref in references for name in variants}
    batch = TokenBatch(n_batch, 1)
    for row in kq.pick_prompts(1):
        prompt = kq.chat_tokens(model, alias, row["turns"][0])[:MAX_TOKENS]
        logp = {name: kq.log_softmax(kq.decode_all(ctx, batch, prompt)[:-1]) for name, ctx in variants.items()}
        for ref in references:
            for name in variants:
                agreement[ref, name].add(logp[ref], logp[name])
    print(f"{alias}: top-1 agreement / mean KL against each reference")
    print(f"{'variant':<20} " + "  ".join(f"{'vs ' + ref:>28}" for ref in references))
    for name in variants:
        cells = []
        for ref in references:
            s = agreement[ref, name].summary()
            cells.append(f"{s['top1_agreement']:>14.4f} {s['mean_kl']:>13.2e}")
        print(f"{name:<20} " + "  ".join(cells))
    print(f"({agreement[references[0], 'f16/q8_0'].positions} positions)")


if __name__ == "__main__":
    main()
