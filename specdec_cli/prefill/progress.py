"""Progress of an ONNX graph export: writing the weights of a 1.5B model takes minutes the
first time, and a run that stops for that long without a word looks hung. Plain stderr
lines, as the Generator's warnings are."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO


def export_progress(stream: TextIO | None = None) -> Callable[[int, int], None]:
    """A progress(layers done, n_layer) callback: a line rewritten in place on a terminal,
    one line at the start and one at the end elsewhere."""
    out = stream or sys.stderr
    started = False

    def update(done: int, total: int) -> None:
        nonlocal started
        live = out.isatty()
        if not started:
            started = True
            if not live:
                out.write(f"exporting the ONNX prefill graph ({total} layers; once per model and KV cache type) ...\n")
        if live:
            out.write(f"\rexporting the ONNX prefill graph: layer {done}/{total}")
        if done >= total:
            out.write("\rexported the ONNX prefill graph" + " " * 20 + "\n" if live
                      else "exported the ONNX prefill graph\n")
            started = False
        out.flush()

    return update
