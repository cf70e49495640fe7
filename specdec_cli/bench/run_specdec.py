"""Our methods, run through the session's one Generator (the model loaded once)."""

from __future__ import annotations

import psutil

from ..drafting import DraftSettings
from .methods import MethodSpec
from .samples import Run

WARMUP_TOKENS = 8


class SpecdecRunner:
    family = "specdec"

    def __init__(self, session, max_tokens: int):
        self.session = session
        self.generator = session.generator
        self.max_tokens = max_tokens
        self._prefill_s = 0.0

    def warm_up(self, tokens, text: str, methods: list[MethodSpec]) -> None:
        """Page the weights in, build the tuner's policy, touch every code path once."""
        for spec in methods:
            self.generator.generate(tokens, max_tokens=WARMUP_TOKENS, sampling=self.session.sampling,
                                    draft=self._draft(spec))

    def start_prompt(self, tokens, text: str) -> None:
        """Prefill the prompt once: later calls reuse its KV cells, so every method's TTFT
        is this prefill plus its own first step."""
        first = self.generator.generate(tokens, max_tokens=1, sampling=self.session.sampling,
                                        draft=DraftSettings(mode="none"))
        self._prefill_s = first.stats.prefill_s

    def run(self, spec: MethodSpec, tokens, text: str) -> Run:
        result = self.generator.generate(tokens, max_tokens=self.max_tokens, sampling=self.session.sampling,
                                         draft=self._draft(spec))
        s = result.stats
        first_step_s = s.ttft_s - s.prefill_s
        return Run(tokens=result.tokens, text=result.text, n_generated=s.n_generated,
                   tokens_per_s=s.tokens_per_s, ttft_s=self._prefill_s + first_step_s,
                   e2e_s=self._prefill_s + s.decode_s, tokens_per_step=s.tokens_per_step,
                   rows_per_token=s.rows_per_token,
                   rss_bytes=psutil.Process().memory_info().rss)

    def close(self) -> None:
        pass

    def _draft(self, spec: MethodSpec) -> DraftSettings:
        defaults = self.session.draft
        return DraftSettings(mode=spec.mode, tree_size=spec.tree_size or defaults.tree_size,
                             draft_len=defaults.draft_len if spec.draft_len is None else spec.draft_len)
