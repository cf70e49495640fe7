"""`specdec chat` driven as a user drives it: in a pseudo-terminal (pexpect) and with piped
stdin, on the real default model; plus KV reuse between turns, counted from the stats."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pexpect
import pytest

pytestmark = pytest.mark.slow  # every test here talks to the real model

PROMPT = ">>> "


def _spawn(args: list[str], env: dict[str, str], cwd: Path) -> pexpect.spawn:
    child = pexpect.spawn(sys.executable, ["-m", "specdec_cli", "chat", *args], env=env, cwd=str(cwd),
                          encoding="utf-8", timeout=90, dimensions=(50, 200))
    # Loading may include the one-time exactness probe of the model (exactness.py).
    child.expect_exact(PROMPT, timeout=300)  # the model is loaded
    return child


def _say(child: pexpect.spawn, text: str) -> str:
    """Send a line, wait for the next prompt, return what appeared on screen in between."""
    child.sendline(text)
    child.expect_exact(PROMPT)
    return child.before


def test_chat_in_a_terminal(specdec_env: dict[str, str], tmp_path: Path) -> None:
    child = _spawn(["--draft", "none", "--max-tokens", "12", "--system", "You are a helpful assistant."],
                   specdec_env, tmp_path)
    first = _say(child, "What is the capital of France?")
    assert "Paris" in first
    assert "tok/s" in first and "tokens/step" in first  # the stats line after the reply
    second = _say(child, "And of Italy?")
    assert "Rome" in second
    stats = _say(child, "/stats")
    assert "2 turn(s)" in stats and "prefilled" in stats
    reset = _say(child, "/reset")
    assert "conversation cleared" in reset
    assert "0 turn(s)" in _say(child, "/stats")
    assert "/reset" in _say(child, "/help")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert (Path(specdec_env["SPECDEC_DATA_DIR"]) / "chat_history").read_text().count("And of Italy?") == 1


def test_exact_switches_the_engine_and_keeps_the_conversation(specdec_env: dict[str, str], tmp_path: Path) -> None:
    child = _spawn(["--draft", "none", "--max-tokens", "12"], specdec_env, tmp_path)
    assert "engine: fast" in _say(child, "/exact")
    assert "Paris" in _say(child, "What is the capital of France?")
    assert "engine: exact" in _say(child, "/exact on")
    assert "Rome" in _say(child, "And of Italy?")  # the conversation carried over to the new engine
    assert "2 turn(s)" in _say(child, "/stats")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_the_reply_and_keeps_it(specdec_env: dict[str, str], tmp_path: Path) -> None:
    child = _spawn(["--draft", "none", "--max-tokens", "3000", "--quiet"], specdec_env, tmp_path)
    try:
        _interrupt_and_save(child, tmp_path)
    finally:
        child.terminate(force=True)  # never leave a 3000-token reply running after a failure


def _interrupt_and_save(child: pexpect.spawn, tmp_path: Path) -> None:
    message = "Count from 1 to 1000, one number per line."  # a reply far longer than the test
    child.sendline(message)
    child.expect_exact(message + "\r\n")  # the terminal's echo of the line
    child.expect(r"[\s\S]{40}")  # the reply is streaming
    child.sendintr()
    child.expect_exact(PROMPT, timeout=30)
    assert "interrupted" in child.before
    saved = tmp_path / "chat.json"
    assert "saved 1 turn(s)" in _say(child, f"/save {saved}")
    doc = json.loads(saved.read_text())
    assistant = doc["messages"][-1]
    assert assistant["role"] == "assistant" and assistant["finish_reason"] == "interrupted"
    assert len(assistant["content"]) >= 40
    child.sendintr()  # Ctrl-C at an empty prompt leaves
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_d_leaves(specdec_env: dict[str, str], tmp_path: Path) -> None:
    child = _spawn(["--quiet"], specdec_env, tmp_path)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_piped_stdin_one_message_per_line(run_specdec) -> None:
    result = run_specdec("chat", "--draft", "none", "--max-tokens", "8",
                         input="What is the capital of France?\n\nAnd of Italy?\n")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 2
    assert "Paris" in lines[0] and "Rome" in lines[1]
    assert ">>>" not in result.stdout


@pytest.fixture
def open_chat(specdec_env: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    """open_chat(ctx) -> a ChatSession on the default model (greedy, no drafting, 16-token replies)."""
    from specdec_cli.chat import ChatSession
    from specdec_cli.session import RunOptions, open_session

    for key in ("SPECDEC_CONFIG_DIR", "SPECDEC_CACHE_DIR", "SPECDEC_DATA_DIR", "HF_HOME"):
        monkeypatch.setenv(key, specdec_env[key])
    sessions = []

    def open_chat(ctx: int = 512) -> ChatSession:
        session = open_session(RunOptions(draft="none", ctx=ctx), progress=False)
        sessions.append(session)
        return ChatSession(session.generator, sampling=session.sampling, draft=session.draft, max_tokens=16,
                           system="You are a helpful assistant.")

    yield open_chat
    for session in sessions:
        session.close()


@pytest.fixture
def chat_session(open_chat):
    return open_chat()


def test_later_turns_prefill_only_the_new_tokens(chat_session) -> None:
    generator = chat_session.generator
    first = chat_session.reply("Name three colours.")
    assert first.turn.stats.n_prompt_prefilled == first.turn.stats.n_prompt
    previous = first.turn.stats.n_prompt + first.turn.stats.n_generated
    for message in ("Name three animals.", "Name three fruits."):
        reply = chat_session.reply(message)
        stats = reply.turn.stats
        # New tokens: the template's end of the last reply, the new user turn, the assistant header.
        new_part = generator.render_chat([("user", message)])
        assert stats.n_prompt > previous
        assert stats.n_prompt_prefilled <= stats.n_prompt - previous + 2
        assert stats.n_prompt_prefilled < len(generator.tokenize(new_part)) + 8
        previous = stats.n_prompt + stats.n_generated


def test_full_context_drops_the_oldest_turns(open_chat) -> None:
    chat_session = open_chat(ctx=256)
    filler = " ".join(f"item{i}" for i in range(16))  # about 50 tokens a message
    dropped = 0
    for i in range(5):
        dropped += chat_session.reply(f"Tell me about number {i}. Ignore this list: {filler}").dropped_turns
        assert chat_session.context_tokens <= chat_session.n_ctx
    assert dropped > 0
    turns = chat_session.conversation.turns
    assert turns[-1].user.startswith("Tell me about number 4.")
    assert not turns[0].user.startswith("Tell me about number 0.")
    assert chat_session.conversation.messages()[0] == ("system", "You are a helpful assistant.")


def test_save_markdown(chat_session, tmp_path: Path) -> None:
    chat_session.reply("Say hello.")
    path = tmp_path / "chat.md"
    assert chat_session.save(path, "smollm2-135m") == "markdown"
    text = path.read_text()
    assert text.startswith("# Chat with smollm2-135m")
    assert "**System:** You are a helpful assistant." in text and "**User:** Say hello." in text
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
