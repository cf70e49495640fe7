"""llama-cpp-python's high-level `Llama` as a peer, without and with its prompt-lookup
draft model (`LlamaPromptLookupDecoding`). Timed by the wall clock of create_completion;
the API returns text, so outputs are compared as text."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import psutil

from ..metrics import decode_rate
from .methods import LCP_DEFAULT_PRED, MethodSpec
from .samples import Run

WARMUP_TOKENS = 8
_GGML_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 8}


@contextmanager
def _peer_weight_layout(repacked: bool):
    """`Llama` has no option for the weight layout and loads with llama.cpp's default (the
    repacked one); where our engine keeps the plain layout, build the peers the same way by
    handing `Llama` default model params with it off."""
    import llama_cpp.llama_cpp as lc

    if repacked:
        yield
        return
    default_params = lc.llama_model_default_params

    def plain_layout_params():
        params = default_params()
        params.use_extra_bufts = False
        return params

    lc.llama_model_default_params = plain_layout_params
    try:
        yield
    finally:
        lc.llama_model_default_params = default_params


class LcpRunner:
    """Two `Llama`s: the plain one as llama-cpp-python builds it without a draft model, and
    one built with a draft model (which switches on logits for every token, as speculation
    needs), whose draft model is swapped per method."""

    family = "lcp"

    def __init__(self, model_path: Path, n_threads: int, n_ctx: int, kv: tuple[str, str], repacked: bool,
                 max_tokens: int):
        from llama_cpp import Llama
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        self.max_tokens = max_tokens
        # Same KV cache types and flash attention as our engine, so outputs are comparable.
        common = dict(model_path=str(model_path), n_ctx=n_ctx, n_threads=n_threads, n_batch=512, verbose=False,
                      type_k=_GGML_TYPES[kv[0]], type_v=_GGML_TYPES[kv[1]], flash_attn=True)
        with _peer_weight_layout(repacked):
            self.plain = Llama(**common)
            # logits_all spelled out: 0.3.36 sizes its scores array from the argument, not from
            # the draft model that forces it on, and overflows on prompts longer than n_batch.
            self.drafting = Llama(**common, logits_all=True,
                                  draft_model=LlamaPromptLookupDecoding(num_pred_tokens=LCP_DEFAULT_PRED))

    def warm_up(self, tokens, text: str, methods: list[MethodSpec]) -> None:
        for spec in methods:
            self._complete(spec, text, WARMUP_TOKENS)

    def start_prompt(self, tokens, text: str) -> None:
        pass

    def run(self, spec: MethodSpec, tokens, text: str) -> Run:
        out, n_tokens, elapsed, ttft = self._complete(spec, text, self.max_tokens)
        return Run(tokens=None, text=out, n_generated=n_tokens,
                   tokens_per_s=decode_rate(n_tokens, elapsed - ttft), ttft_s=ttft, e2e_s=elapsed,
                   tokens_per_step=None, rows_per_token=None, rss_bytes=psutil.Process().memory_info().rss)

    def close(self) -> None:
        self.plain.close()
        self.drafting.close()

    def _complete(self, spec: MethodSpec, text: str, max_tokens: int) -> tuple[str, int, float, float]:
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        llm = self.plain if spec.is_baseline else self.drafting
        # Its prefix cache overruns n_ctx with a draft model on repeated prompts, so every
        # call starts clean (its TTFT is a full prefill).
        llm.reset()
        if not spec.is_baseline:
            llm.draft_model = LlamaPromptLookupDecoding(num_pred_tokens=spec.num_pred_tokens)
        first: list[float] = []
        t0 = time.perf_counter()
        pieces = []
        for chunk in llm.create_completion(text, max_tokens=max_tokens, temperature=0.0, top_k=1, stream=True):
            if not first:
                first.append(time.perf_counter() - t0)
            pieces.append(chunk["choices"][0]["text"])
        elapsed = time.perf_counter() - t0
        out = "".join(pieces)
        n_tokens = len(llm.tokenize(out.encode(), add_bos=False, special=False))
        return out, n_tokens, elapsed, first[0] if first else elapsed
