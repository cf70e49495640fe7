"""What a run can be asked for, owned by the library: the choices each option takes and
the checks on their values, in words that name no command-line flag (the CLI adds its own
flag names; `session.RunOptions` carries the values)."""

from __future__ import annotations

# KV cache types offered to users (llama.KV_CACHE_TYPES knows more; these are the ones
# whose cost and quality bench/kv_quality.py measured).
KV_CHOICES = ("f16", "q8_0", "q4_0")
