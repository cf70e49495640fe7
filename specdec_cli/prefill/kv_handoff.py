"""Writing externally computed K/V into llama.cpp's cache through `llama_state_seq_set_data`.

The buffer layout is the pinned llama.cpp's (llama-cpp-python 0.3.36, `src/llama-context.cpp`
`state_seq_get_data` and `src/llama-kv-cache.cpp` `state_write` / `state_write_meta` /
`state_write_data`; there is no version field, only a magic number):

    u32 magic 0xaf143cd8, i32 seq_id,
    then per KV cache block (one block; Gemma 3's "iswa" cache writes the global-layer block
    and then the sliding-window block):
      u32 n_stream; per stream: u32 cell_count, and when cell_count > 0:
        per cell: i32 pos, u32 n_seq_id (must be 1 on read), i32 seq_id
        u32 v_trans, u32 n_layer
        per layer: i32 k_type, u64 k_row_size, cell_count K rows
        per layer, v_trans == 0: i32 v_type, u64 v_row_size, cell_count V rows
        per layer, v_trans == 1: i32 v_type, u32 v_element_size, u32 n_embd_v_gqa,
                                 then for each of the n_embd_v_gqa elements its value in every cell
The reader (`state_read_meta` / `state_read_data`) refuses a mismatch of n_stream, layer
count, types, row sizes, element sizes or v_trans. The sliding-window block only holds the
cells inside the window of the sequence's last position (`is_masked_swa`).

Rather than trusting this description, the layout is taken from llama.cpp itself: decode
one placeholder token, read its state back (`probe`), and check every field against the
model before writing anything. `parse_seq_state` / `serialize_seq_state` round-trip
llama.cpp's own buffers byte for byte, which the tests check.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass, field

import numpy as np

from .errors import KVLayoutMismatch, PrefillUnavailable
from .onnx_graph import ModelSpec

STATE_MAGIC = 0xAF143CD8
GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_BF16 = 0, 1, 30
_ELEMENT_SIZE = {GGML_TYPE_F32: 4, GGML_TYPE_F16: 2, GGML_TYPE_BF16: 2}


@dataclass
class LayerKV:
    k_type: int
    k_row_size: int
    k_data: bytes            # cell_count rows of k_row_size bytes
    v_type: int
    v_row_size: int          # bytes per cell row (v_trans == 0) or per element (v_trans == 1)
    v_dim: int               # n_embd_v_gqa; only stored in the buffer when v_trans == 1
    v_data: bytes


@dataclass
class KVBlock:
    """One stream of one KV cache (the unified cache has exactly one stream)."""

    n_stream: int
    positions: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    cell_seq_ids: list[tuple[int, ...]] = field(default_factory=list)
    v_trans: int = 0
    layers: list[LayerKV] = field(default_factory=list)

    @property
    def cell_count(self) -> int:
        return len(self.positions)


@dataclass
class SeqState:
    seq_id: int
    blocks: list[KVBlock]


class _Reader:
    def __init__(self, buf: bytes):
        self.buf, self.off = buf, 0

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.buf, self.off)
        self.off += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def raw(self, n: int) -> bytes:
        if self.off + n > len(self.buf):
            raise KVLayoutMismatch("llama.cpp sequence state ends early")
        out = self.buf[self.off:self.off + n]
        self.off += n
        return out


def parse_seq_state(buf: bytes) -> SeqState:
    """Parse a `llama_state_seq_get_data` buffer of a unified (one-stream) cache."""
    r = _Reader(buf)
    if r.take("I") != STATE_MAGIC:
        raise KVLayoutMismatch("llama.cpp sequence state has an unknown magic number")
    seq_id = r.take("i")
    blocks = []
    while r.off < len(buf):
        n_stream = r.take("I")
        if n_stream != 1:
            raise KVLayoutMismatch(f"expected a unified KV cache (1 stream), got {n_stream} streams")
        cell_count = r.take("I")
        block = KVBlock(n_stream)
        blocks.append(block)
        if cell_count == 0:
            continue
        positions, seq_ids = [], []
        for _ in range(cell_count):
            pos, n_seq = r.take("iI")
            positions.append(pos)
            seq_ids.append(tuple(r.take("i") for _ in range(n_seq)))
        block.positions = np.array(positions, dtype=np.int32)
        block.cell_seq_ids = seq_ids
        block.v_trans, n_layer = r.take("II")
        for _ in range(n_layer):
            k_type, k_row = r.take("iQ")
            block.layers.append(LayerKV(k_type, k_row, r.raw(cell_count * k_row), 0, 0, 0, b""))
        for layer in block.layers:
            if block.v_trans:
                layer.v_type, layer.v_row_size, layer.v_dim = r.take("iII")
                layer.v_data = r.raw(cell_count * layer.v_row_size * layer.v_dim)
            else:
                layer.v_type, layer.v_row_size = r.take("iQ")
                layer.v_data = r.raw(cell_count * layer.v_row_size)
    return SeqState(seq_id, blocks)


def serialize_seq_state(state: SeqState) -> bytes:
    """The inverse of parse_seq_state: the exact bytes llama.cpp writes."""
    parts = [struct.pack("<Ii", STATE_MAGIC, state.seq_id)]
    for block in state.blocks:
        parts.append(struct.pack("<II", block.n_stream, block.cell_count))
        if block.cell_count == 0:
            continue
        for pos, ids in zip(block.positions.tolist(), block.cell_seq_ids):
            parts.append(struct.pack(f"<iI{len(ids)}i", pos, len(ids), *ids))
        parts.append(struct.pack("<II", block.v_trans, len(block.layers)))
        for layer in block.layers:
            parts.append(struct.pack("<iQ", layer.k_type, layer.k_row_size))
            parts.append(layer.k_data)
        for layer in block.layers:
            if block.v_trans:
                parts.append(struct.pack("<iII", layer.v_type, layer.v_row_size, layer.v_dim))
            else:
                parts.append(struct.pack("<iQ", layer.v_type, layer.v_row_size))
            parts.append(layer.v_data)
    return b"".join(parts)


def get_seq_state(ctx, seq: int) -> bytes:
    import llama_cpp as lc

    size = lc.llama_state_seq_get_size(ctx.ptr, seq)
    buf = (ctypes.c_uint8 * size)()
    written = lc.llama_state_seq_get_data(ctx.ptr, buf, size, seq)
    if written != size:
        raise KVLayoutMismatch(f"llama_state_seq_get_data wrote {written} of {size} bytes")
    return bytes(buf)


def set_seq_state(ctx, buf: bytes, seq: int) -> None:
    import llama_cpp as lc

    arr = (ctypes.c_uint8 * len(buf)).from_buffer_copy(buf)
    read = lc.llama_state_seq_set_data(ctx.ptr, arr, len(buf), seq)
    if read != len(buf):
        raise KVLayoutMismatch(f"llama.cpp refused the K/V handoff (read {read} of {len(buf)} bytes)")


def to_cache_type(values: np.ndarray, ggml_type: int) -> np.ndarray:
    """float32 values in the cache's element type, rounded as ggml rounds (nearest even)."""
    if ggml_type == GGML_TYPE_F32:
        return np.ascontiguousarray(values, dtype=np.float32)
    if ggml_type == GGML_TYPE_F16:
        return np.ascontiguousarray(values, dtype=np.float16)
    if ggml_type == GGML_TYPE_BF16:
        bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return rounded.astype(np.uint16)
    raise PrefillUnavailable(f"ONNX prefill cannot write a quantized KV cache (ggml type {ggml_type}); "
                             f"use --kv-cache f16 or --prefill llama")


def from_cache_type(data: bytes, ggml_type: int, shape: tuple[int, ...]) -> np.ndarray:
    """Cache bytes back to float32 (for comparisons and tests)."""
    if ggml_type == GGML_TYPE_F32:
        return np.frombuffer(data, dtype=np.float32).reshape(shape).copy()
    if ggml_type == GGML_TYPE_F16:
        return np.frombuffer(data, dtype=np.float16).reshape(shape).astype(np.float32)
    if ggml_type == GGML_TYPE_BF16:
        return (np.frombuffer(data, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
    raise PrefillUnavailable(f"cannot read KV cache of ggml type {ggml_type}")


@dataclass
class KVHandoff:
    """The checked layout of one context's cache: which model layers each block holds."""

    spec: ModelSpec
    template: SeqState
    block_layers: list[list[int]]   # model layer index of every layer entry, per block
    block_is_swa: list[bool]

    @classmethod
    def probe(cls, ctx, spec: ModelSpec) -> "KVHandoff":
        """Decode one placeholder token into sequence 0, read llama.cpp's buffer for it, and
        check it against the model. Sequence 0 is left empty."""
        from ..llama import TokenBatch

        batch = TokenBatch(1, 1)
        batch.set_chain(np.zeros(1, dtype=np.int32), 0, np.zeros(1, dtype=np.int32), all_outputs=False)
        ctx.decode(batch)
        try:
            template = parse_seq_state(get_seq_state(ctx, 0))
        finally:
            ctx.seq_rm(0, -1, -1)
        return cls.from_template(template, spec)

    @classmethod
    def from_template(cls, template: SeqState, spec: ModelSpec) -> "KVHandoff":
        global_layers = [il for il in range(spec.n_layer) if not spec.is_swa(il)]
        swa_layers = [il for il in range(spec.n_layer) if spec.is_swa(il)]
        if spec.has_swa:
            expected = [(global_layers, False), (swa_layers, True)]
        else:
            expected = [(list(range(spec.n_layer)), False)]
        if len(template.blocks) != len(expected):
            raise KVLayoutMismatch(f"llama.cpp's state has {len(template.blocks)} cache blocks, "
                                   f"expected {len(expected)} for {spec.arch}")
        for block, (layers, _) in zip(template.blocks, expected):
            if len(block.layers) != len(layers):
                raise KVLayoutMismatch(f"llama.cpp's cache block has {len(block.layers)} layers, "
                                       f"expected {len(layers)}")
            for layer in block.layers:
                for ggml_type in (layer.k_type, layer.v_type):
                    if ggml_type not in _ELEMENT_SIZE:
                        to_cache_type(np.zeros(1, np.float32), ggml_type)  # raises the clear error
                if layer.k_row_size != spec.kv_dim * _ELEMENT_SIZE[layer.k_type]:
                    raise KVLayoutMismatch(f"K row size {layer.k_row_size} does not match the model")
                v_size = layer.v_row_size if block.v_trans else layer.v_row_size // spec.kv_dim
                if v_size != _ELEMENT_SIZE[layer.v_type] or (block.v_trans and layer.v_dim != spec.kv_dim):
                    raise KVLayoutMismatch("V layout does not match the model")
        return cls(spec, template, [layers for layers, _ in expected], [swa for _, swa in expected])

    def build(self, keys: np.ndarray, values: np.ndarray, seq: int) -> bytes:
        """The set_data buffer for K/V of positions 0..n-1 ([n_layer, n, kv_dim] float32)."""
        n = keys.shape[1]
        blocks = []
        for tmpl, layer_ids, is_swa in zip(self.template.blocks, self.block_layers, self.block_is_swa):
            positions = np.arange(n, dtype=np.int32)
            if is_swa:
                # what state_write keeps: cells not masked for the sequence's last position
                positions = positions[(n - 1) - positions < self.spec.n_swa]
            layers = []
            for il, t in zip(layer_ids, tmpl.layers):
                k = to_cache_type(keys[il, positions], t.k_type)
                v = to_cache_type(values[il, positions], t.v_type)
                v_bytes = np.ascontiguousarray(v.T).tobytes() if tmpl.v_trans else v.tobytes()
                layers.append(LayerKV(t.k_type, t.k_row_size, k.tobytes(), t.v_type, t.v_row_size, t.v_dim, v_bytes))
            blocks.append(KVBlock(1, positions, [(seq,)] * len(positions), tmpl.v_trans, layers))
        return serialize_seq_state(SeqState(seq, blocks))

    def write_sequence(self, ctx, keys: np.ndarray, values: np.ndarray, seq: int = 0) -> None:
        if keys.shape != values.shape or keys.shape[0] != self.spec.n_layer or keys.shape[2] != self.spec.kv_dim:
            raise KVLayoutMismatch(f"K/V of shape {keys.shape} / {values.shape} do not fit the model")
        if keys.shape[1] > ctx.n_ctx:
            raise PrefillUnavailable(f"the prompt ({keys.shape[1]} tokens) does not fit the context ({ctx.n_ctx})")
        set_seq_state(ctx, self.build(keys, values, seq), seq)


def read_sequence_kv(state: SeqState, handoff: KVHandoff) -> tuple[np.ndarray, np.ndarray]:
    """K/V of a parsed sequence as float32 [n_layer, n_cells, kv_dim] (from the first block's
    cells; sliding-window layers only cover the cells their block holds, the rest stay NaN)."""
    spec = handoff.spec
    n = state.blocks[0].cell_count
    keys = np.full((spec.n_layer, n, spec.kv_dim), np.nan, dtype=np.float32)
    values = np.full_like(keys, np.nan)
    for block, layer_ids in zip(state.blocks, handoff.block_layers):
        if block.cell_count == 0:
            continue
        idx = block.positions.astype(np.int64)
        for il, layer in zip(layer_ids, block.layers):
            keys[il, idx] = from_cache_type(layer.k_data, layer.k_type, (block.cell_count, spec.kv_dim))
            if block.v_trans:
                v = from_cache_type(layer.v_data, layer.v_type, (spec.kv_dim, block.cell_count)).T
            else:
                v = from_cache_type(layer.v_data, layer.v_type, (block.cell_count, spec.kv_dim))
            values[il, idx] = v
    return keys, values
