"""Check a GGUF file before llama.cpp sees it, and hash model files.

llama.cpp trusts the offsets and sizes in a GGUF header; a truncated or corrupt file can
make it read past the end of its memory map. `check_gguf` walks the header the same way
(magic, version, key/value pairs, tensor infos) and checks that every tensor's data lies
inside the file, so specdec can refuse such a file with a message instead of crashing.

`gguf.GGUFReader` would do the walking for us, but it turns every string of the
vocabulary into a numpy array: 4.5 s for SmolLM2-135M (49k tokens) and 17.5 s for Gemma 3
270M (262k tokens) on the 2-core dev machine. This parser skips arrays without decoding
them (about 0.1 s for Gemma) and takes the type tables from the `gguf` package.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.constants import GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC

from .errors import SpecdecError
from .paths import cache_dir, write_cache_file

# llama.cpp reads GGUF versions 2 and 3 (version 1 used 32-bit counts and is refused).
SUPPORTED_VERSIONS = (2, 3)
# ggml tensors have at most 4 dimensions (GGML_MAX_DIMS).
MAX_TENSOR_DIMS = 4
HEADER_SIZE = 24  # magic, version, tensor count, key/value count
# The smallest possible key/value pair (8-byte key length, 1-byte key, 4-byte type, 1-byte
# value) and tensor info (8-byte name length, 1-byte name, 4-byte n_dims, one 8-byte dim,
# 4-byte type, 8-byte offset): counts that could not fit in the file are corrupt.
MIN_KV_BYTES = 14
MIN_TENSOR_INFO_BYTES = 33

_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass
class GgufInfo:
    """What specdec needs to know about a model file, read from its GGUF header."""

    path: Path
    file_size: int
    version: int
    n_tensors: int
    n_params: int
    architecture: str | None = None
    name: str | None = None
    context_length: int | None = None
    n_vocab: int | None = None
    chat_template: str | None = None
    # Every scalar or string key/value pair (arrays are left out: the vocabulary alone has
    # hundreds of thousands of entries).
    metadata: dict[str, str | int | float | bool] = field(default_factory=dict)


class _Corrupt(Exception):
    """Raised inside the parser; check_gguf turns it into a SpecdecError."""


class _HeaderReader:
    """Sequential little-endian reads from the memory-mapped file, bounds-checked."""

    def __init__(self, buffer: mmap.mmap, size: int) -> None:
        self.buffer = buffer
        self.size = size
        self.offset = 0

    def take(self, n_bytes: int, what: str) -> int:
        """Advance past n_bytes and return where they start."""
        start = self.offset
        if n_bytes < 0 or start + n_bytes > self.size:
            raise _Corrupt(f"truncated while reading {what} at byte {start}")
        self.offset = start + n_bytes
        return start

    def u32(self, what: str) -> int:
        return _U32.unpack_from(self.buffer, self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return _U64.unpack_from(self.buffer, self.take(8, what))[0]

    def string(self, what: str) -> str:
        length = self.u64(what)
        start = self.take(length, what)
        return self.buffer[start : start + length].decode("utf-8", errors="replace")

    def skip_string(self, what: str) -> None:
        self.take(self.u64(what), what)

    def value_type(self, what: str) -> GGUFValueType:
        raw = self.u32(what)
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise _Corrupt(f"unknown value type {raw} for {what}") from None

    def scalar(self, value_type: GGUFValueType, what: str) -> str | int | float | bool:
        if value_type == GGUFValueType.STRING:
            return self.string(what)
        fmt = _SCALAR_FORMATS[value_type]
        return struct.unpack_from(fmt, self.buffer, self.take(struct.calcsize(fmt), what))[0]

    def skip_array(self, what: str) -> int:
        """Skip an array value; return its length."""
        item_type = self.value_type(what)
        length = self.u64(what)
        # Every string or nested array takes at least 8 bytes: a corrupt length must not
        # send the loops below through billions of iterations.
        if item_type in (GGUFValueType.STRING, GGUFValueType.ARRAY) and length * 8 > self.size - self.offset:
            raise _Corrupt(f"array {what} announces {length} items, more than the rest of the file can hold")
        if item_type == GGUFValueType.STRING:
            for _ in range(length):
                self.skip_string(what)
        elif item_type == GGUFValueType.ARRAY:
            for _ in range(length):
                self.skip_array(what)
        else:
            self.take(length * struct.calcsize(_SCALAR_FORMATS[item_type]), what)
        return length


def check_gguf(path: str | os.PathLike[str]) -> GgufInfo:
    """Validate a GGUF file and return its metadata; SpecdecError if llama.cpp must not load it."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < HEADER_SIZE:
                raise _Corrupt(f"the file has only {size} bytes")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
                return _parse(path, buffer, size)
    except FileNotFoundError:
        raise SpecdecError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise SpecdecError(f"{path} is a directory, not a GGUF file") from None
    except PermissionError:
        raise SpecdecError(f"{path} cannot be read (permission denied)") from None
    except _Corrupt as reason:
        raise SpecdecError(f"{path} is not a valid GGUF file: {reason}") from None


def _parse(path: Path, buffer: mmap.mmap, size: int) -> GgufInfo:
    reader = _HeaderReader(buffer, size)
    magic = reader.u32("the magic number")
    if magic != GGUF_MAGIC:
        found = bytes(buffer[0:4])
        raise _Corrupt(f"it does not start with the GGUF magic bytes (found {found!r})")
    version = reader.u32("the version")
    if version not in SUPPORTED_VERSIONS:
        if version & 0xFFFF == 0:
            raise _Corrupt("it is a big-endian GGUF file, which llama.cpp cannot load here")
        raise _Corrupt(f"GGUF version {version} is not supported (llama.cpp reads versions 2 and 3)")
    n_tensors = reader.u64("the tensor count")
    n_kv = reader.u64("the key/value count")
    if n_kv * MIN_KV_BYTES + n_tensors * MIN_TENSOR_INFO_BYTES > size - HEADER_SIZE:
        raise _Corrupt(
            f"its header announces {n_tensors} tensors and {n_kv} key/value pairs, "
            f"more than {size} bytes can hold"
        )

    metadata: dict[str, str | int | float | bool] = {}
    array_lengths: dict[str, int] = {}
    for index in range(n_kv):
        key = reader.string(f"key #{index}")
        if key in metadata or key in array_lengths:
            raise _Corrupt(f"duplicate key {key!r}")
        value_type = reader.value_type(key)
        if value_type == GGUFValueType.ARRAY:
            array_lengths[key] = reader.skip_array(key)
        else:
            metadata[key] = reader.scalar(value_type, key)

    n_params = 0
    data_end = 0  # relative to the start of the data section
    alignment = metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise _Corrupt(f"general.alignment is {alignment!r}, not a power of two")
    seen_names: set[str] = set()
    for index in range(n_tensors):
        name = reader.string(f"the name of tensor #{index}")
        if name in seen_names:
            raise _Corrupt(f"duplicate tensor {name!r}")
        seen_names.add(name)
        n_dims = reader.u32(f"tensor {name!r}")
        if not 1 <= n_dims <= MAX_TENSOR_DIMS:
            raise _Corrupt(f"tensor {name!r} has {n_dims} dimensions")
        dims = [reader.u64(f"tensor {name!r}") for _ in range(n_dims)]
        type_id = reader.u32(f"tensor {name!r}")
        offset = reader.u64(f"tensor {name!r}")
        if offset % alignment:
            raise _Corrupt(f"tensor {name!r} starts at offset {offset}, not a multiple of {alignment}")
        n_elements = math.prod(dims)
        n_params += n_elements
        n_bytes = _tensor_bytes(name, type_id, dims)
        if n_bytes is not None:
            data_end = max(data_end, offset + n_bytes)

    data_start = -(-reader.offset // alignment) * alignment
    if data_start + data_end > size:
        raise _Corrupt(
            f"it is truncated: its tensors need {data_start + data_end} bytes but the file has {size}"
        )

    architecture = _text(metadata.get("general.architecture"))
    chat_template = _text(metadata.get("tokenizer.chat_template"))
    return GgufInfo(
        path=path,
        file_size=size,
        version=version,
        n_tensors=n_tensors,
        n_params=n_params,
        architecture=architecture,
        name=_text(metadata.get("general.name")),
        context_length=_integer(metadata.get(f"{architecture}.context_length")),
        n_vocab=_integer(metadata.get(f"{architecture}.vocab_size"))
        or array_lengths.get("tokenizer.ggml.tokens"),
        chat_template=chat_template or None,
        metadata=metadata,
    )


def _tensor_bytes(name: str, type_id: int, dims: list[int]) -> int | None:
    """Bytes of tensor data, or None for a type this gguf package doesn't know.

    An unknown type is left to llama.cpp, which rejects it without crashing; refusing it
    here would block files written for a newer llama.cpp.
    """
    try:
        block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
    except (ValueError, KeyError):
        return None
    if dims[0] % block_size:
        raise _Corrupt(f"tensor {name!r} has a row of {dims[0]} values, not a multiple of {block_size}")
    return math.prod(dims) // block_size * type_size


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- hashing ----------------------------------------------------------------------------

HASH_CHUNK_BYTES = 1 << 20
_hashed: dict[str, dict] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file as lowercase hex, cached by (real path, size, mtime).

    Hashing a multi-GB model takes seconds to minutes; the cache lives in the user cache
    dir (SPECDEC_CACHE_DIR overrides) so `pull`, `bench` and the tuner pay for it once.
    """
    real_path = Path(path).resolve()
    stat = real_path.stat()
    key = str(real_path)
    cache = _load_hash_cache() | _hashed  # _hashed: this process's, in case the cache is read-only
    cached = cache.get(key)
    if cached and cached.get("size") == stat.st_size and cached.get("mtime_ns") == stat.st_mtime_ns:
        return cached["sha256"]
    digest = hashlib.sha256()
    with real_path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    sha256 = digest.hexdigest()
    cache[key] = _hashed[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}
    _save_hash_cache(cache)
    return sha256


def _hash_cache_file() -> Path:
    return cache_dir() / "sha256.json"


def _load_hash_cache() -> dict[str, dict]:
    try:
        loaded = json.loads(_hash_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _save_hash_cache(cache: dict[str, dict]) -> None:
    """A cache that cannot be written only costs a re-hash next time."""
    write_cache_file(_hash_cache_file(), json.dumps(cache, indent=0))
