"""`specdec history show|clear`: the per-model history of earlier prompts and outputs that
`--draft suffix` and `auto` copy from (history.py)."""

from __future__ import annotations

import json
import sys

import typer

from . import cli_options as opt
from .console import stdout_console

history_app = typer.Typer(help="The history of earlier prompts and outputs that drafting copies from.",
                          no_args_is_help=True)


def _history(model: str | None):
    from .gguf_file import file_sha256
    from .history import History, history_path
    from .registry import Registry

    resolved = Registry.load().resolve(model)
    return resolved.alias, History(history_path(file_sha256(resolved.path)))


@history_app.command("show")
def show(model: opt.Model = None, as_json: opt.Json = False) -> None:
    """How many documents and tokens the model's history holds, and where."""
    from .history import MAX_TOKENS

    alias, history = _history(model)
    stats = history.stats()
    if as_json:
        sys.stdout.write(json.dumps({"model": alias, "path": str(stats.path), "documents": stats.documents,
                                     "tokens": stats.tokens, "max_tokens": MAX_TOKENS,
                                     "file_bytes": stats.file_bytes}) + "\n")
        return
    stdout_console().print(f"{alias}: {stats.documents} documents, {stats.tokens:,} tokens "
                           f"(bound {MAX_TOKENS:,}), {stats.file_bytes:,} bytes in {stats.path}", soft_wrap=True)


@history_app.command("clear")
def clear(model: opt.Model = None) -> None:
    """Forget the model's history (drafting starts from the current prompt alone)."""
    alias, history = _history(model)
    stats = history.stats()
    history.clear()
    stdout_console().print(f"{alias}: cleared {stats.documents} documents ({stats.tokens:,} tokens)", soft_wrap=True)
