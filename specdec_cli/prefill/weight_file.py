"""One external-data file holds the weights of every graph variant of a model.

The prefill graph comes in one variant per KV cache format (the attention has to read K/V
rounded as the cache holds them), but the variants share every weight. ONNX lets an
initializer live in an external file at an (offset, length) (`TensorProto.data_location =
EXTERNAL`, onnx/onnx.proto3), so the first export writes `<name>.data` and a list of what
lies where (`<name>.data.json`); a later variant only references the same bytes. The
variants ask for the same tensors in the same order; one that asks for anything else finds
the file stale (`StaleWeights`) and the file is written anew.

Weights are produced one at a time (dequantized from the GGUF on demand) and written
straight to disk, so an export never holds more than one tensor in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

ALIGN = 4096  # page-aligned tensors let onnxruntime map them instead of copying


class StaleWeights(Exception):
    """The data file does not hold the tensors this graph asks for."""


@dataclass(frozen=True)
class Entry:
    offset: int
    length: int
    dims: tuple[int, ...]
    dtype: str


def read_manifest(data_path: Path) -> dict[str, Entry] | None:
    """The data file's list of tensors, or None when either file is missing or they disagree."""
    try:
        raw = json.loads(data_path.with_name(data_path.name + ".json").read_text())
        entries = {name: Entry(e["offset"], e["length"], tuple(e["dims"]), e["dtype"]) for name, e in raw.items()}
        size = data_path.stat().st_size
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if any(e.offset + e.length > size for e in entries.values()):
        return None
    return entries


class WeightFile:
    """Hands out initializers that point into `data_name`: reading a manifest (`existing`)
    or appending to `out` (an open binary file), never both."""

    def __init__(self, data_name: str, *, existing: dict[str, Entry] | None = None, out: BinaryIO | None = None):
        if (existing is None) == (out is None):
            raise ValueError("a WeightFile either reads a manifest or writes a file")
        self.data_name = data_name
        self.existing = existing
        self.out = out
        self.written: dict[str, Entry] = {}

    def tensor(self, name: str, dims: tuple[int, ...], dtype: str, make: Callable[[], np.ndarray]):
        """An external initializer `name` of this shape and numpy dtype; `make()` produces
        the values when they have to be written."""
        from onnx import TensorProto, helper

        length = int(np.prod(dims, dtype=np.int64)) * np.dtype(dtype).itemsize
        if self.existing is not None:
            entry = self.existing.get(name)
            if entry is None or (entry.length, entry.dims, entry.dtype) != (length, tuple(dims), dtype):
                raise StaleWeights(name)
        else:
            values = np.ascontiguousarray(make(), dtype=dtype)
            if values.shape != tuple(dims):
                raise ValueError(f"{name}: made {values.shape}, declared {dims}")
            offset = -(-self.out.tell() // ALIGN) * ALIGN
            self.out.write(b"\0" * (offset - self.out.tell()))
            self.out.write(values.tobytes())
            entry = Entry(offset, length, tuple(dims), dtype)
            self.written[name] = entry
        tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), dims=dims)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.data_name), ("offset", str(entry.offset)), ("length", str(length))):
            item = tensor.external_data.add()
            item.key, item.value = key, value
        return tensor

    def manifest_json(self) -> str:
        return json.dumps({name: {"offset": e.offset, "length": e.length, "dims": list(e.dims), "dtype": e.dtype}
                           for name, e in self.written.items()})
