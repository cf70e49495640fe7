"""Turning accepted tokens into streamed text: UTF-8 decoded incrementally (a token may end
inside a character), with stop strings cut out and never streamed half-way."""

from __future__ import annotations

import codecs
from typing import Callable


class TextStream:
    """Turns accepted token bytes into text, holding back what could still become a stop string."""

    def __init__(self, stop: tuple[str, ...], on_text: Callable[[str], None] | None):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._on_text = on_text
        self.text = ""
        self._emitted = 0
        self.stopped = False

    def push(self, data: bytes) -> None:
        self.text += self._decoder.decode(data)
        for s in self._stop:
            cut = self.text.find(s)
            if cut >= 0:
                self.text = self.text[:cut]
                self.stopped = True
        self._flush(final=self.stopped)

    def finish(self) -> None:
        if not self.stopped:
            self.text += self._decoder.decode(b"", final=True)
        self._flush(final=True)

    def _flush(self, final: bool) -> None:
        upto = len(self.text) if final else max(self._emitted, len(self.text) - self._hold)
        if upto > self._emitted and self._on_text is not None:
            self._on_text(self.text[self._emitted:upto])
        self._emitted = max(self._emitted, upto)
