"""`specdec chat`: the terminal side of a chat (input, slash commands, colour).

On a terminal: line editing and history through `readline` (history file in the user data
dir), multi-line input with a trailing backslash or a `\"\"\"` block, and a dim stats line
after each reply. With stdin piped: one message per line, replies printed plainly.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape

from . import cli_options as opt
from .console import stderr_console
from .errors import SpecdecError

HELP = """\
/help          this list
/reset         forget the conversation (the system prompt stays)
/system TEXT   set the system prompt (no TEXT: remove it)
/draft MODE    drafting: none | ngram | suffix | recycling | hybrid | auto
/exact on|off  the exact engine (bit-identical to plain decoding) or the fast one
/stats         statistics of the last reply and of the whole chat
/save FILE     save the conversation (.json or .md)
/exit          leave (also Ctrl-D, or Ctrl-C at the prompt)
Ctrl-C during a reply stops it; on a continuation line it drops the message.
Multi-line: end a line with \\ to continue it, or wrap the message in \"\"\" ... \"\"\"."""

# Chat-only option; the rest are the shared ones from cli_options.
Quiet = Annotated[bool, typer.Option("--quiet", "-q", envvar="SPECDEC_QUIET",
                                     help="No banner and no stats line after each reply.")]

CHAT_MAX_TOKENS = 512  # per reply
PROMPT = ">>> "
CONTINUATION = "... "
HISTORY_LENGTH = 1000


class _Leave(Exception):
    """The user asked to end the chat."""


class _Cancelled(Exception):
    """Ctrl-C on a continuation line: the message being typed is dropped."""


@dataclass
class _Screen:
    """Where each kind of output goes: replies on stdout, everything else on stderr."""

    interactive: bool
    quiet: bool
    err: Console

    def notice(self, text: str) -> None:
        self.err.print(f"[yellow]{escape(text)}[/yellow]", soft_wrap=True)

    def info(self, text: str) -> None:
        self.err.print(escape(text), soft_wrap=True)

    def dim(self, text: str) -> None:
        self.err.print(f"[dim]{escape(text)}[/dim]", soft_wrap=True)


def chat(
    model: opt.Model = None,
    system: opt.System = None,
    draft: opt.Draft = None,
    tree_size: opt.TreeSize = None,
    draft_len: opt.DraftLen = None,
    kv_cache: opt.KvCache = None,
    kv_k: opt.KvK = None,
    kv_v: opt.KvV = None,
    ctx: opt.Ctx = None,
    threads: opt.Threads = None,
    gpu_layers: opt.GpuLayers = "auto",
    temp: opt.Temp = None,
    top_k: opt.TopK = None,
    top_p: opt.TopP = None,
    seed: opt.Seed = None,
    exact: opt.Exact = None,
    no_history: opt.NoHistory = False,
    max_tokens: opt.MaxTokens(CHAT_MAX_TOKENS) = None,
    quiet: Quiet = False,
    verbose: opt.Verbose = False,
) -> None:
    """Chat with a model in the terminal; with stdin piped, one message per line."""
    from .chat import ChatSession
    from .cli_progress import assembly_progress
    from .session import RunOptions, open_session

    interactive = sys.stdin.isatty()
    screen = _Screen(interactive=interactive, quiet=quiet, err=stderr_console())
    options = RunOptions(model=model, ctx=ctx, threads=threads, kv_cache=kv_cache, kv_k=kv_k, kv_v=kv_v,
                         verbose=verbose,
                         draft=draft, tree_size=tree_size, draft_len=draft_len,
                         temperature=temp, top_k=top_k, top_p=top_p, seed=seed, exact=exact,
                         max_tokens=max_tokens, system=system, history=not no_history, gpu_layers=gpu_layers)
    built_in = {"max_tokens": CHAT_MAX_TOKENS}
    sessions = [open_session(options, progress=assembly_progress(interactive), built_in=built_in)]
    session = sessions[0]

    def open_engine(exact: bool):
        sessions[-1].close()
        sessions.append(open_session(dataclasses.replace(options, exact=exact), built_in=built_in))
        return sessions[-1].generator

    try:
        chat_session = ChatSession(session.generator, sampling=session.sampling, draft=session.draft,
                                   max_tokens=session.options.max_tokens, system=session.options.system,
                                   open_engine=open_engine)
        if interactive:
            _interactive_loop(chat_session, session.alias, screen)
        else:
            _piped_loop(chat_session, session.alias, screen)
    finally:
        sessions[-1].close()


def _interactive_loop(chat_session, alias: str, screen: _Screen) -> None:
    history = _open_history()
    if not screen.quiet:
        screen.dim(f"specdec chat with {alias} (draft {chat_session.draft.mode}); /help for commands, "
                   f"Ctrl-D to leave")
    try:
        while True:
            try:
                message = _read_message(input)
            except (EOFError, KeyboardInterrupt):
                sys.stdout.write("\n")
                return
            except _Cancelled:
                sys.stdout.write("\n")
                continue
            except UnicodeDecodeError:
                screen.notice("error: the message is not valid UTF-8")
                continue
            if message is None or not message.strip():
                continue
            try:
                _handle(message, chat_session, alias, screen)
            except _Leave:
                return
    finally:
        history.save()


def _piped_loop(chat_session, alias: str, screen: _Screen) -> None:
    for raw_line in sys.stdin.buffer:
        try:
            line = raw_line.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise SpecdecError(f"standard input is not valid UTF-8 (byte {exc.start})") from None
        if not line.strip():
            continue
        try:
            interrupted = _handle(line, chat_session, alias, screen)
        except _Leave:
            return
        if interrupted:
            raise typer.Exit(130)  # in a script, Ctrl-C stops the whole run (README exit codes)


def _handle(message: str, chat_session, alias: str, screen: _Screen) -> bool:
    """Run a slash command or answer a message; True when Ctrl-C cut the reply."""
    if message.startswith("/"):
        _command(message, chat_session, alias, screen)
        return False
    return _reply(message, chat_session, screen)


def _reply(message: str, chat_session, screen: _Screen) -> bool:
    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    try:
        reply = chat_session.reply(message, on_text=write)
    except KeyboardInterrupt:
        # Ctrl-C before the first step (during prefill): nothing was said, no turn is kept.
        sys.stdout.write("\n")
        screen.notice("[interrupted]")
        return True
    if reply.dropped_turns:
        screen.notice(f"[context full: dropped the {reply.dropped_turns} oldest turn(s)]")
    if reply.turn is None:
        screen.notice(f"error: {reply.error}")
        return False
    turn = reply.turn
    sys.stdout.write("\n" if not turn.assistant.endswith("\n") else "")
    sys.stdout.flush()
    if turn.finish_reason == "interrupted":
        screen.notice("[interrupted; the partial reply is kept]")
    elif turn.finish_reason == "context":
        screen.notice("[the context is full: reply cut; the oldest turns make room for the next message]")
    elif turn.finish_reason == "length" and screen.interactive:
        screen.notice("[reply cut at --max-tokens]")
    if screen.interactive and not screen.quiet and turn.stats is not None:
        from .chat import stats_line

        screen.dim(stats_line(turn.stats))
    return turn.finish_reason == "interrupted"


def _command(message: str, chat_session, alias: str, screen: _Screen) -> None:
    name, _, arg = message.partition(" ")
    arg = arg.strip()
    if name in ("/exit", "/quit", "/bye"):
        raise _Leave
    if name in ("/help", "/?"):
        screen.info(HELP)
    elif name == "/reset":
        chat_session.reset()
        screen.info("conversation cleared")
    elif name == "/system":
        chat_session.set_system(arg)
        screen.info(f"system prompt set: {arg}" if arg else "system prompt removed")
    elif name == "/draft":
        if not arg:
            screen.info(f"draft mode: {chat_session.draft.mode}")
            return
        try:
            chat_session.set_draft(arg)
        except SpecdecError as exc:
            screen.notice(f"error: {exc}")
            return
        screen.info(f"draft mode: {arg}")
    elif name == "/exact":
        if arg not in ("on", "off"):
            exact = chat_session.generator.config.exact
            screen.info(f"engine: {'exact' if exact else 'fast'} (/exact on|off switches)")
            return
        chat_session.set_exact(arg == "on")
        screen.info(f"engine: {'exact' if arg == 'on' else 'fast'}")
    elif name == "/stats":
        _show_stats(chat_session, alias, screen)
    elif name == "/save":
        if not arg:
            screen.notice("error: /save needs a file name (.json or .md)")
            return
        path = Path(arg).expanduser()
        try:
            kind = chat_session.save(path, alias)
        except (SpecdecError, OSError) as exc:
            screen.notice(f"error: {exc}")
            return
        screen.info(f"saved {len(chat_session.conversation.turns)} turn(s) to {path} ({kind})")
    else:
        screen.notice(f"error: unknown command {name}; /help lists them")


def _show_stats(chat_session, alias: str, screen: _Screen) -> None:
    totals = chat_session.totals
    lines = [f"model {alias}, draft {chat_session.draft.mode}, "
             f"{len(chat_session.conversation.turns)} turn(s) in the conversation, "
             f"context {chat_session.context_tokens}/{chat_session.n_ctx} tokens"]
    if totals.replies:
        tps = totals.generated / totals.decode_s if totals.decode_s > 0 else 0.0
        per_step = totals.generated / totals.steps if totals.steps else 0.0
        spec = 100.0 * totals.speculative_steps / totals.steps if totals.steps else 0.0
        replies = f"{totals.replies} repl{'y' if totals.replies == 1 else 'ies'}"
        lines.append(f"all replies: {replies}, {totals.generated} tokens, {tps:.1f} tok/s, "
                     f"{per_step:.2f} tokens/step, {spec:.0f}% steps speculating, "
                     f"{totals.prefilled} prompt tokens prefilled")
    last = chat_session.conversation.turns[-1].stats if chat_session.conversation.turns else None
    if last is not None:
        lines.append(f"last reply: {last.n_generated} tokens in {last.decode_s:.2f}s ({last.tokens_per_s:.1f} tok/s), "
                     f"{last.steps} steps, {last.tokens_per_step:.2f} tokens/step, "
                     f"time to first token {last.ttft_s:.3f}s, prompt {last.n_prompt} tokens "
                     f"({last.n_prompt_prefilled} prefilled), kv {last.kv_cache}, backend {last.backend}"
                     f"{f' ({last.gpu_layers} GPU layers)' if last.gpu_layers else ''}")
        if last.plain_reason:
            lines.append(last.plain_reason)
    else:
        lines.append("no replies yet")
    screen.info("\n".join(lines))


def _read_message(read_line: Callable[[str], str]) -> Optional[str]:
    """One message: a line; lines ending in a backslash joined with the next; or a block
    between two \"\"\" markers. Ctrl-C on a continuation line drops the message."""
    line = read_line(PROMPT)
    try:
        return _read_rest(line, read_line)
    except KeyboardInterrupt:
        raise _Cancelled from None


def _read_rest(line: str, read_line: Callable[[str], str]) -> str:
    if line.lstrip().startswith('"""'):
        body = line.lstrip()[3:]
        if body.rstrip().endswith('"""') and body.strip():
            return body.rstrip()[:-3]
        lines = [body] if body else []
        while True:
            line = read_line(CONTINUATION)
            if line.rstrip().endswith('"""'):
                lines.append(line.rstrip()[:-3])
                return "\n".join(lines).strip("\n")
            lines.append(line)
    lines = []
    while line.endswith("\\"):
        lines.append(line[:-1])
        line = read_line(CONTINUATION)
    lines.append(line)
    return "\n".join(lines)


@dataclass
class _History:
    path: Path | None

    def save(self) -> None:
        if self.path is None:
            return
        import readline

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            readline.set_history_length(HISTORY_LENGTH)
            readline.write_history_file(self.path)
        except OSError:
            pass  # history is a convenience: never fail the chat over it


def _open_history() -> _History:
    """Importing readline gives input() line editing; the history file keeps up-arrow
    recall across sessions."""
    try:
        import readline
    except ImportError:  # e.g. Windows without pyreadline
        return _History(None)
    from .paths import data_dir

    path = data_dir() / "chat_history"
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    return _History(path)

