"""What the prefill graph reads from a GGUF file: metadata, tensor infos, tensor bytes.

gguf-py's GGUFReader builds a numpy view of every element of every metadata array; the
tokenizer arrays of a 150k-262k token vocabulary make that 30-45 s here, which ONNX
prefill paid before deciding anything. This reader walks the header once (format: ggml's
docs/gguf.md), keeps scalars and short arrays, skips long ones, and maps tensor data only
when a weight is dequantized.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
SHORT_ARRAY = 1024  # arrays up to this many numbers are kept (sliding-window patterns, ...)
# gguf value type -> struct format of one value (8 = string, 9 = array)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ne: tuple[int, ...]  # ggml order: ne[0] is the row length
    type_id: int
    offset: int          # from the start of the file


class GgufFile:
    """Header of one GGUF file; `raw(name)` maps a tensor's bytes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.metadata: dict[str, object] = {}
        self.tensors: dict[str, TensorInfo] = {}
        with open(self.path, "rb") as f:
            self._f = f
            self._parse()
        self._data: np.ndarray | None = None

    def _read(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        buf = self._f.read(size)
        if len(buf) != size:
            raise ValueError(f"{self.path.name} ends inside its GGUF header")
        values = struct.unpack("<" + fmt, buf)
        return values[0] if len(values) == 1 else values

    def _string(self) -> str:
        return self._f.read(self._read("Q")).decode("utf-8", errors="replace")

    def _value(self, value_type: int):
        if value_type == _STRING:
            return self._string()
        if value_type == _ARRAY:
            item_type, count = self._read("IQ")
            if item_type in _SCALARS and count <= SHORT_ARRAY:
                return list(self._read(f"{count}{_SCALARS[item_type]}")) if count else []
            self._skip_array(item_type, count)
            return None
        if value_type not in _SCALARS:
            raise ValueError(f"{self.path.name}: unknown GGUF value type {value_type}")
        return self._read(_SCALARS[value_type])

    def _skip_array(self, item_type: int, count: int) -> None:
        if item_type == _STRING:
            for _ in range(count):
                self._f.seek(self._read("Q"), 1)
        elif item_type in _SCALARS:
            self._f.seek(count * struct.calcsize(_SCALARS[item_type]), 1)
        else:
            for _ in range(count):
                self._value(item_type)

    def _parse(self) -> None:
        if self._f.read(4) != GGUF_MAGIC:
            raise ValueError(f"{self.path.name} is not a GGUF file")
        _version, n_tensors, n_kv = self._read("IQQ")
        for _ in range(n_kv):
            key = self._string()
            value = self._value(self._read("I"))
            if value is not None:
                self.metadata[key] = value
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._read("I")
            ne = tuple(self._read(f"{n_dims}Q")) if n_dims > 1 else (self._read("Q"),)
            type_id, offset = self._read("IQ")
            infos.append((name, ne, type_id, offset))
        alignment = int(self.metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        data_start = -(-self._f.tell() // alignment) * alignment
        self.tensors = {name: TensorInfo(name, ne, type_id, data_start + offset)
                        for name, ne, type_id, offset in infos}

    def raw(self, name: str) -> np.ndarray:
        """A tensor's bytes as rows [n_rows, row_bytes] (uint8, memory-mapped), the form
        gguf-py's `dequantize` takes."""
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        info = self.tensors[name]
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(info.type_id)]
        row_bytes = info.ne[0] // block * block_bytes
        n_rows = int(np.prod(info.ne[1:], dtype=np.int64)) if len(info.ne) > 1 else 1
        if self._data is None:
            self._data = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._data[info.offset:info.offset + n_rows * row_bytes].reshape(n_rows, row_bytes)

    def type_name(self, name: str) -> str:
        from gguf.constants import GGMLQuantizationType

        return GGMLQuantizationType(self.tensors[name].type_id).name
