"""A multi-turn chat over one Generator: conversation state, prompt tokens that extend the
previous turn's (so the KV cache is reused), context-full handling, and saving.

The terminal side (input, slash commands, colour) lives in cli_chat.py; this module has no
I/O besides `ChatSession.save`, so it can be driven and tested in-process.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .drafting import DRAFT_MODES, DraftSettings
from .errors import SpecdecError, UsageError, option
from .generator import Generator
from .options import SamplingParams
from .metrics import GenerationStats


@dataclass
class Turn:
    user: str
    assistant: str
    finish_reason: str  # "stop" | "length" | "context" | "interrupted" (GenerationResult)
    stats: GenerationStats | None = None


@dataclass
class Conversation:
    system: str | None = None
    turns: list[Turn] = field(default_factory=list)

    def messages(self, next_user: str | None = None) -> list[tuple[str, str]]:
        out = [("system", self.system)] if self.system else []
        for turn in self.turns:
            out += [("user", turn.user), ("assistant", turn.assistant)]
        if next_user is not None:
            out.append(("user", next_user))
        return out


@dataclass
class _TokenizedHistory:
    """What the KV cache holds after a reply: the rendered text up to the end of the reply
    and its tokens exactly as the model saw and produced them."""

    text: str
    tokens: np.ndarray


@dataclass
class Reply:
    turn: Turn | None  # None when the prompt could not fit the context at all
    dropped_turns: int = 0  # oldest turns dropped to make room
    error: str | None = None


@dataclass
class ChatTotals:
    replies: int = 0
    generated: int = 0
    decode_s: float = 0.0
    steps: int = 0
    speculative_steps: int = 0
    prefilled: int = 0


class ChatSession:
    def __init__(self, generator: Generator, *, sampling: SamplingParams, draft: DraftSettings,
                 max_tokens: int = 512, system: str | None = None,
                 open_engine: Callable[[bool], Generator] | None = None):
        if max_tokens <= 0:
            raise UsageError(f"{option('max_tokens')} must be positive, got {max_tokens}")
        self.generator = generator
        self.sampling = sampling
        self.draft = draft
        self.max_tokens = max_tokens
        self.conversation = Conversation(system=system or None)
        self.totals = ChatTotals()
        self.context_tokens = 0  # tokens in the context after the last reply
        self._history: _TokenizedHistory | None = None
        self._open_engine = open_engine  # exact -> a Generator on that engine (the old one is done with)

    @property
    def n_ctx(self) -> int:
        return self.generator.ctx.n_ctx

    # ---- commands ------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every turn; the system prompt stays."""
        self.conversation.turns.clear()
        self._history = None
        self.context_tokens = 0

    def set_system(self, text: str | None) -> None:
        self.conversation.system = text or None
        self._history = None

    def set_draft(self, mode: str) -> None:
        if mode not in DRAFT_MODES:
            raise UsageError(f"unknown draft mode {mode!r} (choose from {', '.join(DRAFT_MODES)})")
        self.draft.mode = mode

    def set_exact(self, exact: bool) -> None:
        """Continue the conversation on the exact or the fast engine (`/exact on|off`): the
        next reply prefills the whole conversation into the new engine's empty cache."""
        if exact == self.generator.config.exact:
            return
        if self._open_engine is None:
            raise SpecdecError("this chat was opened without a way to switch engines")
        self.generator = self._open_engine(exact)
        self._history = None

    # ---- replying ------------------------------------------------------------------

    def reply(self, user_text: str, on_text: Callable[[str], None] | None = None) -> Reply:
        """Generate the assistant's answer to `user_text` and add the turn. Ctrl-C during
        generation ends the reply early (finish_reason "interrupted"); the partial reply
        stays in the conversation."""
        if not user_text.strip():
            raise UsageError("the message is empty")
        dropped = 0
        budget = self.n_ctx
        while True:
            text, tokens = self._prompt(user_text)
            if len(tokens) + self._reply_reserve() <= budget or not self.conversation.turns:
                break
            # Dropping turns changes the prompt's start, so the whole prompt is prefilled
            # again: drop down to half the context so that the next turns extend the cache
            # again instead of each paying a full prefill.
            self.conversation.turns.pop(0)
            self._history = None
            dropped += 1
            budget = self.n_ctx // 2
        if len(tokens) >= self.n_ctx:
            return Reply(turn=None, dropped_turns=dropped,
                         error=f"the message needs {len(tokens)} tokens but the context holds {self.n_ctx}; "
                               f"use a larger {option('n_ctx')} or a shorter message")
        result = self.generator.generate(tokens, max_tokens=self.max_tokens, sampling=self.sampling,
                                         draft=self.draft, on_text=on_text)
        turn = Turn(user=user_text, assistant=result.text, finish_reason=result.finish_reason, stats=result.stats)
        self.conversation.turns.append(turn)
        self._history = _TokenizedHistory(text=text + result.text,
                                          tokens=np.concatenate([tokens, np.asarray(result.tokens, dtype=np.int32)]))
        self.context_tokens = len(self._history.tokens)
        self._count(result.stats)
        return Reply(turn=turn, dropped_turns=dropped)

    def _reply_reserve(self) -> int:
        """Room kept free for the answer before old turns are dropped."""
        return min(self.max_tokens, self.n_ctx // 2)

    def _prompt(self, user_text: str) -> tuple[str, np.ndarray]:
        """The rendered prompt and its tokens. When the rendered history is unchanged, the
        tokens are the previous prompt's + the reply's + the new tail tokenized on its own:
        re-tokenizing the reply's text need not give back the tokens the model produced,
        and any difference would break the KV prefix and re-prefill the conversation."""
        text = self.generator.render_chat(self.conversation.messages(next_user=user_text))
        history = self._history
        if history is not None and text.startswith(history.text):
            tail = self.generator.model.tokenize(text[len(history.text):], add_special=False, parse_special=True)
            return text, np.concatenate([history.tokens, tail])
        return text, self.generator.tokenize(text, special=True)

    def _count(self, stats: GenerationStats) -> None:
        t = self.totals
        t.replies += 1
        t.generated += stats.n_generated
        t.decode_s += stats.decode_s
        t.steps += stats.steps
        t.speculative_steps += stats.speculative_steps
        t.prefilled += stats.n_prompt_prefilled

    # ---- saving --------------------------------------------------------------------

    def save(self, path: Path, model: str) -> str:
        """Write the conversation as JSON (.json) or Markdown (.md, .markdown); returns the format."""
        suffix = path.suffix.lower()
        if suffix == ".json":
            body, kind = conversation_json(self.conversation, model), "json"
        elif suffix in (".md", ".markdown"):
            body, kind = conversation_markdown(self.conversation, model), "markdown"
        else:
            raise UsageError(f"cannot tell the format of {path.name!r}: name it .json or .md")
        _write_atomic(path, body)
        return kind


def stats_line(stats: GenerationStats) -> str:
    """The one line shown after each reply."""
    spec = 100.0 * stats.speculative_steps / stats.steps if stats.steps else 0.0
    return (f"{stats.n_generated} tokens, {stats.tokens_per_s:.1f} tok/s, {stats.tokens_per_step:.2f} tokens/step, "
            f"{spec:.0f}% steps speculating, {stats.n_prompt_prefilled} prompt tokens prefilled "
            f"in {stats.prefill_s:.2f}s")


def conversation_json(conversation: Conversation, model: str) -> str:
    messages = [{"role": role, "content": content} for role, content in conversation.messages()]
    for turn, msg in zip(conversation.turns, [m for m in messages if m["role"] == "assistant"]):
        msg["finish_reason"] = turn.finish_reason
    return json.dumps({"model": model, "messages": messages}, indent=2, ensure_ascii=False) + "\n"


def conversation_markdown(conversation: Conversation, model: str) -> str:
    parts = [f"# Chat with {model}\n"]
    if conversation.system:
        parts.append(f"**System:** {conversation.system}\n")
    for turn in conversation.turns:
        parts.append(f"**User:** {turn.user}\n")
        note = " *(interrupted)*" if turn.finish_reason == "interrupted" else ""
        parts.append(f"**Assistant:** {turn.assistant}{note}\n")
    return "\n".join(parts)


def _write_atomic(path: Path, body: str) -> None:
    path = path.expanduser()
    if path.parent and not path.parent.exists():
        raise SpecdecError(f"cannot save: folder {str(path.parent)!r} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
