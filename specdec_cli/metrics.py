"""The speed figures specdec reports, defined once for the engine, chat, tune and bench.

- decode rate (tok/s): generated tokens over the time spent generating them, from the
  first decoding step to the last (prefill excluded). llama-server's `predicted_per_second`
  is the same quantity.
- time to first token (TTFT): from the start of a request to its first generated token:
  the prompt's prefill plus the first decoding step.
- end-to-end time: what a user waits for the whole answer: TTFT plus the rest of decoding.
- tokens per step: tokens a verification step emits (accepted drafts + the bonus token),
  averaged over steps; an end-of-generation token counts as emitted, so plain decoding
  reads exactly 1.0. For llama-server: predicted / (predicted - accepted drafts).
"""

from __future__ import annotations


def decode_rate(n_tokens: int, seconds: float) -> float:
    return n_tokens / seconds if seconds > 0 else 0.0


def tokens_per_step(n_emitted: int, steps: int) -> float:
    return n_emitted / steps if steps > 0 else 0.0


def server_tokens_per_step(n_predicted: int, n_draft_accepted: int) -> float:
    """llama-server: every forward pass emits one token plus the drafts it accepted."""
    return tokens_per_step(n_predicted, n_predicted - n_draft_accepted)
