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

A row is `ggml_row_size(type, n_embd_k_gqa)` bytes: n values of f32/f16/bf16, or n/32
q8_0 / q4_0 blocks of the rotated values (kv_blocks.py has the formats and the rotation).
A chat turn's buffer is the cached prefix's rows, byte for byte as llama.cpp wrote them,
followed by the new tokens' rows: `llama_state_seq_set_data` replaces a whole sequence.

Rather than trusting this description, the layout is taken from llama.cpp itself: decode
one placeholder token (or take the cached prefix), read its state back (`probe`), and check every field against the
model before writing anything. `parse_seq_state` / `serialize_seq_state` round-trip
llama.cpp's own buffers byte for byte, which the tests check.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass, field

import numpy as np

from ..errors import option
from .errors import KVLayoutMismatch, PrefillUnavailable
from .kv_blocks import TYPE_NAMES, CacheFormat, cache_formats
from .model_spec import ModelSpec

STATE_MAGIC = 0xAF143CD8
# Cache types the handoff writes; the others llama.cpp offers (q4_1, q5_0, ...) it refuses.
HANDOFF_KV_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")


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


def _k_rows(block: KVBlock, layer: LayerKV) -> np.ndarray:
    return np.frombuffer(layer.k_data, dtype=np.uint8).reshape(block.cell_count, layer.k_row_size)


def _v_rows(block: KVBlock, layer: LayerKV) -> np.ndarray:
    """V as one row per cell, whichever way the buffer lays it out."""
    data = np.frombuffer(layer.v_data, dtype=np.uint8)
    if not block.v_trans:
        return data.reshape(block.cell_count, layer.v_row_size)
    # v_trans: for each of the v_dim values, that value (v_row_size bytes) of every cell
    by_value = data.reshape(layer.v_dim, block.cell_count, layer.v_row_size)
    return np.ascontiguousarray(by_value.transpose(1, 0, 2)).reshape(block.cell_count, -1)


@dataclass
class CacheRows:
    """Encoded cache rows of one sequence, positions 0..n-1: K [n_layer, n, k_row_bytes] and
    V [n_layer, n, v_row_bytes] uint8; `present` [n_layer, n] is False where the buffer held
    no cell (sliding-window layers keep only the window of the last position)."""

    k: np.ndarray
    v: np.ndarray
    present: np.ndarray

    @property
    def n(self) -> int:
        return self.k.shape[1]


@dataclass
class KVHandoff:
    """The checked layout of one context's cache: which model layers each block holds, and
    the format of K and V (one type per cache in llama.cpp)."""

    spec: ModelSpec
    template: SeqState
    block_layers: list[list[int]]   # model layer index of every layer entry, per block
    block_is_swa: list[bool]
    k_format: CacheFormat
    v_format: CacheFormat

    @classmethod
    def probe(cls, ctx, spec: ModelSpec) -> "KVHandoff":
        """Check llama.cpp's buffer layout against the model: sequence 0's own state when it
        holds cells (a chat's cached prefix), else the state of one placeholder token decoded
        into sequence 0 and removed again."""
        from ..llama import TokenBatch

        if ctx.seq_pos_max(0) >= 0:
            return cls.from_template(parse_seq_state(get_seq_state(ctx, 0)), spec)
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
        first = template.blocks[0].layers[0] if template.blocks[0].layers else None
        if first is None:
            raise KVLayoutMismatch("llama.cpp's probe state holds no cells")
        k_name, v_name = (TYPE_NAMES.get(t, f"ggml type {t}") for t in (first.k_type, first.v_type))
        for name in (k_name, v_name):
            if name not in HANDOFF_KV_TYPES:
                raise PrefillUnavailable(f"ONNX prefill cannot write a {name} KV cache; "
                                         f"use {option('kv_cache')} f16, q8_0 or q4_0, or {option('prefill')} llama")
        k_format, v_format = cache_formats(k_name, v_name, spec.head_dim, spec.kv_dim)
        for block, (layers, _) in zip(template.blocks, expected):
            if len(block.layers) != len(layers):
                raise KVLayoutMismatch(f"llama.cpp's cache block has {len(block.layers)} layers, "
                                       f"expected {len(layers)}")
            for layer in block.layers:
                if (layer.k_type, layer.v_type) != (k_format.ggml_type, v_format.ggml_type):
                    raise KVLayoutMismatch("the KV cache mixes types across layers")
                if layer.k_row_size != k_format.row_bytes:
                    raise KVLayoutMismatch(f"K row size {layer.k_row_size} does not match the model "
                                           f"({k_format.row_bytes} bytes of {k_name})")
                if block.v_trans:
                    ok = v_name not in ("q8_0", "q4_0") and layer.v_row_size == v_format.element_bytes \
                        and layer.v_dim == spec.kv_dim
                else:
                    ok = layer.v_row_size == v_format.row_bytes
                if not ok:
                    raise KVLayoutMismatch("V layout does not match the model")
        return cls(spec, template, [layers for layers, _ in expected], [swa for _, swa in expected],
                   k_format, v_format)

    def encode(self, keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Float K/V [n_layer, n, kv_dim] (the model's basis) -> cache rows [n_layer, n, bytes]."""
        if keys.shape != values.shape or keys.shape[0] != self.spec.n_layer or keys.shape[2] != self.spec.kv_dim:
            raise KVLayoutMismatch(f"K/V of shape {keys.shape} / {values.shape} do not fit the model")
        k = np.stack([self.k_format.encode(keys[il]) for il in range(self.spec.n_layer)])
        v = np.stack([self.v_format.encode(values[il]) for il in range(self.spec.n_layer)])
        return k, v

    def build(self, keys: np.ndarray, values: np.ndarray, seq: int) -> bytes:
        """The set_data buffer for float K/V of positions 0..n-1 ([n_layer, n, kv_dim])."""
        k, v = self.encode(keys, values)
        return self.build_rows(CacheRows(k, v, np.ones(k.shape[:2], dtype=bool)), seq)

    def build_rows(self, rows: CacheRows, seq: int) -> bytes:
        """The set_data buffer for encoded rows of positions 0..n-1."""
        n = rows.n
        blocks = []
        for tmpl, layer_ids, is_swa in zip(self.template.blocks, self.block_layers, self.block_is_swa):
            positions = np.arange(n, dtype=np.int32)
            if is_swa:
                # what state_write keeps: cells not masked for the sequence's last position
                positions = positions[(n - 1) - positions < self.spec.n_swa]
            if not rows.present[layer_ids][:, positions].all():
                raise KVLayoutMismatch("a cache row the sequence needs is missing")
            layers = []
            for il, t in zip(layer_ids, tmpl.layers):
                v = rows.v[il, positions]
                if tmpl.v_trans:
                    el = t.v_row_size
                    v_bytes = np.ascontiguousarray(v.reshape(len(positions), -1, el).transpose(1, 0, 2)).tobytes()
                else:
                    v_bytes = v.tobytes()
                layers.append(LayerKV(t.k_type, t.k_row_size, rows.k[il, positions].tobytes(), t.v_type,
                                      t.v_row_size, t.v_dim, v_bytes))
            blocks.append(KVBlock(1, positions, [(seq,)] * len(positions), tmpl.v_trans, layers))
        return serialize_seq_state(SeqState(seq, blocks))

    def sequence_rows(self, state: SeqState) -> CacheRows:
        """The encoded rows of a parsed sequence that holds positions 0..n-1 (n = the cells of
        its first block, which has every layer's or the global layers' cells)."""
        spec = self.spec
        if len(state.blocks) != len(self.block_layers):
            raise KVLayoutMismatch("llama.cpp's sequence state has another block layout than the probe's")
        n = state.blocks[0].cell_count
        if n and not np.array_equal(np.sort(state.blocks[0].positions), np.arange(n)):
            raise KVLayoutMismatch("the cached sequence does not hold positions 0..n-1")
        k = np.zeros((spec.n_layer, n, self.k_format.row_bytes), dtype=np.uint8)
        v = np.zeros((spec.n_layer, n, self.v_format.row_bytes), dtype=np.uint8)
        present = np.zeros((spec.n_layer, n), dtype=bool)
        for block, layer_ids in zip(state.blocks, self.block_layers):
            if block.cell_count == 0:
                continue
            idx = block.positions.astype(np.int64)
            if idx.max() >= n:
                raise KVLayoutMismatch("a sliding-window cell lies past the sequence's last position")
            for il, layer in zip(layer_ids, block.layers):
                k[il, idx] = _k_rows(block, layer)
                v[il, idx] = _v_rows(block, layer)
                present[il, idx] = True
        return CacheRows(k, v, present)

    def attention_values(self, rows: CacheRows) -> tuple[np.ndarray, np.ndarray]:
        """Float K/V [n_layer, n, kv_dim] as llama.cpp's attention reads the rows (dequantized,
        in the rotated basis where the cache is rotated); rows not present are 0."""
        keys = np.stack([self.k_format.decode(rows.k[il]) for il in range(self.spec.n_layer)])
        values = np.stack([self.v_format.decode(rows.v[il]) for il in range(self.spec.n_layer)])
        keys[~rows.present] = 0.0
        values[~rows.present] = 0.0
        return keys, values

    def write_rows(self, ctx, rows: CacheRows, seq: int = 0) -> None:
        if rows.n > ctx.n_ctx:
            raise PrefillUnavailable(f"the prompt ({rows.n} tokens) does not fit the context ({ctx.n_ctx})")
        set_seq_state(ctx, self.build_rows(rows, seq), seq)

    def write_sequence(self, ctx, keys: np.ndarray, values: np.ndarray, seq: int = 0) -> None:
        k, v = self.encode(keys, values)
        self.write_rows(ctx, CacheRows(k, v, np.ones(k.shape[:2], dtype=bool)), seq)


def read_sequence_kv(state: SeqState, handoff: KVHandoff) -> tuple[np.ndarray, np.ndarray]:
    """K/V of a parsed sequence as float32 [n_layer, n_cells, kv_dim] in the model's basis
    (dequantized and rotated back); cells a sliding-window block does not hold are NaN."""
    rows = handoff.sequence_rows(state)
    keys, values = handoff.attention_values(rows)
    keys = np.stack([handoff.k_format.unrotate(keys[il]) for il in range(handoff.spec.n_layer)])
    values = np.stack([handoff.v_format.unrotate(values[il]) for il in range(handoff.spec.n_layer)])
    keys[~rows.present] = np.nan
    values[~rows.present] = np.nan
    return keys, values
