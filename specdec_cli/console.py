"""The CLI's Rich consoles: styled only on a terminal, and never a line broken at 80
columns when the output goes to a file or a pipe (a log must keep "1.00 tokens/step" whole)."""

from __future__ import annotations

import os

from rich.console import Console

# Wide enough for any table's natural width: Rich wraps to the console width, which is 80
# when the output is not a terminal.
UNWRAPPED_WIDTH = 1 << 16


def stdout_console() -> Console:
    return _console(stderr=False)


def stderr_console() -> Console:
    return _console(stderr=True)


def _console(stderr: bool) -> Console:
    # Rich's own NO_COLOR handling drops colours but keeps bold and dim; no-color.org asks
    # for plain text, which no colour system at all gives.
    plain = os.environ.get("NO_COLOR", "") != ""
    console = Console(stderr=stderr, highlight=False, soft_wrap=True, color_system=None if plain else "auto")
    if not console.is_terminal:
        console.width = UNWRAPPED_WIDTH
    return console
