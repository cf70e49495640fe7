"""The element formats of llama.cpp's KV cache, as the K/V handoff writes them: f32, f16,
bf16 rows, and q8_0 / q4_0 blocks behind the Walsh-Hadamard rotation that the pinned
llama.cpp (llama-cpp-python 0.3.36) applies to quantized K/V.

Rotation (`src/llama-kv-cache.cpp`: the constructor's `attn_rot_k` / `attn_rot_v`,
`build_input_k_rot`, `build_input_v_rot`; `src/llama-graph.cpp` `build_attn`):
- K is rotated when the K cache type is quantized and the head size is a multiple of 64
  (every layer the same size); V likewise for the V type. LLAMA_ATTN_ROT_DISABLE set to a
  non-zero number turns both off.
- K's block n is the largest power of two >= 64 that divides the head size; V's is 64.
- Each token's row (n_head_kv * head_dim values) is cut into consecutive groups of n
  values and each group multiplied by the orthonormal Hadamard matrix H_n in Sylvester
  order (`ggml_gen_hadamard`). Q is rotated with K's matrix, so Q.K is unchanged, and the
  attention output is rotated back with V's (H_n is its own inverse).
- The CPU backend computes it as a fast Walsh-Hadamard transform (`ggml-cpu/ops.cpp`
  `ggml_compute_forward_fwht_impl`): scale by 1/sqrtf(n) first, then butterflies
  (u + v, u - v) with the span doubling from 1. `fwht` repeats it operation for
  operation, so its float32 results are the backend's.

Blocks (`ggml-common.h`): block_q8_0 = {fp16 d; int8 qs[32]} (34 bytes); block_q4_0 =
{fp16 d; uint8 qs[16]} (18 bytes), element j in the low nibble of qs[j] and element
j + 16 in the high nibble. The cache is written by `set_rows` with the CPU type's
`from_float`: for q8_0 `quantize_row_q8_0` in `ggml-cpu/arch/x86/quants.c` (its AVX path:
d = amax / 127, multiplier 127 / amax, round half to even; other CPUs' paths differ from it
only on exact ties), for q4_0 `quantize_row_q4_0_ref` in `ggml-quants.c`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_Q4_0, GGML_TYPE_Q8_0, GGML_TYPE_BF16 = 0, 1, 2, 8, 30
# ggml type ids (ggml.h enum ggml_type) of the cache types llama.cpp offers, for messages too
TYPE_NAMES = {GGML_TYPE_F32: "f32", GGML_TYPE_F16: "f16", GGML_TYPE_Q4_0: "q4_0", GGML_TYPE_Q8_0: "q8_0",
              GGML_TYPE_BF16: "bf16", 3: "q4_1", 6: "q5_0", 7: "q5_1", 20: "iq4_nl"}
TYPE_IDS = {name: type_id for type_id, name in TYPE_NAMES.items()}
QUANTIZED = {"q8_0", "q4_0"}
QK = 32  # values per q8_0 / q4_0 block
_BLOCK_BYTES = {"q8_0": 2 + QK, "q4_0": 2 + QK // 2}
_ELEMENT_BYTES = {"f32": 4, "f16": 2, "bf16": 2}


def rotation_disabled() -> bool:
    """LLAMA_ATTN_ROT_DISABLE as llama.cpp reads it: `atoi(value) != 0`."""
    value = os.environ.get("LLAMA_ATTN_ROT_DISABLE", "").lstrip()
    digits = value[1:] if value[:1] in "+-" else value
    digits = digits[:len(digits) - len(digits.lstrip("0123456789"))]
    return bool(digits) and int(digits) != 0


def rotation_blocks(k_name: str, v_name: str, head_dim: int) -> tuple[int, int]:
    """Hadamard block sizes (K, V) that llama.cpp uses for these cache types; 0 = no rotation."""
    if rotation_disabled() or head_dim % 64:
        return 0, 0
    k_block = 64
    while head_dim % (k_block * 2) == 0:
        k_block *= 2
    return (k_block if k_name in QUANTIZED else 0), (64 if v_name in QUANTIZED else 0)


def hadamard(n: int) -> np.ndarray:
    """The orthonormal n x n Hadamard matrix in Sylvester order (`ggml_gen_hadamard`)."""
    h = np.ones((1, 1), dtype=np.float64)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return (h / np.sqrt(n)).astype(np.float32)


def fwht(values: np.ndarray, n: int) -> np.ndarray:
    """Rows [..., m * n] with each group of n values multiplied by H_n, in float32 exactly as
    ggml's CPU backend computes it (see the module docstring). H_n is its own inverse."""
    shape = values.shape
    x = np.ascontiguousarray(values, dtype=np.float32).reshape(-1, n) * (np.float32(1.0) / np.sqrt(np.float32(n)))
    span = 1
    while span < n:
        pairs = x.reshape(-1, n // (2 * span), 2, span)
        u, v = pairs[:, :, 0, :], pairs[:, :, 1, :]
        x = np.stack([u + v, u - v], axis=2).reshape(-1, n)
        span *= 2
    return x.reshape(shape)


def quantize_q8_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blocks [..., 32] float32 -> (fp16 d [...], int8 qs [..., 32]), ggml-cpu's x86 quantize_row_q8_0."""
    x = np.asarray(x, dtype=np.float32)
    amax = np.abs(x).max(axis=-1)
    d = (amax / np.float32(127.0)).astype(np.float16)
    with np.errstate(divide="ignore"):
        inv = np.where(amax != 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
    q = np.rint(x * inv[..., None])  # round half to even, as _mm256_round_ps(_MM_ROUND_NEAREST)
    return d, np.clip(q, -128, 127).astype(np.int8)  # _mm256_packs_* saturate


def quantize_q4_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blocks [..., 32] float32 -> (fp16 d [...], 4-bit values 0..15 [..., 32]), quantize_row_q4_0_ref."""
    x = np.asarray(x, dtype=np.float32)
    # the signed value of largest magnitude, the first one on ties (`if (amax < fabsf(v))`)
    signed_max = np.take_along_axis(x, np.abs(x).argmax(axis=-1)[..., None], axis=-1)[..., 0]
    d = signed_max / np.float32(-8.0)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1.0) / d, np.float32(0.0)).astype(np.float32)
    scaled = x * inv[..., None] + np.float32(8.5)
    q = np.minimum(np.trunc(scaled), 15)  # (int8_t) truncates; the values are >= 0.5 here
    return d.astype(np.float16), q.astype(np.uint8)


@dataclass(frozen=True)
class CacheFormat:
    """How one cache tensor (K or V) stores a token's row of `dim` values."""

    name: str       # "f32" | "f16" | "bf16" | "q8_0" | "q4_0"
    dim: int        # values per row: n_head_kv * head_dim
    rotation: int   # Hadamard block size applied before quantizing; 0 = none

    @property
    def ggml_type(self) -> int:
        return TYPE_IDS[self.name]

    @property
    def row_bytes(self) -> int:
        if self.name in _BLOCK_BYTES:
            return self.dim // QK * _BLOCK_BYTES[self.name]
        return self.dim * _ELEMENT_BYTES[self.name]

    @property
    def element_bytes(self) -> int:
        """Bytes per value of the unquantized types (the transposed V layout needs it)."""
        return _ELEMENT_BYTES[self.name]

    def encode(self, values: np.ndarray) -> np.ndarray:
        """float32 rows [n, dim] (as the model computes them, unrotated) -> cache rows
        [n, row_bytes] uint8, byte for byte what llama.cpp's CPU backend would store."""
        values = np.ascontiguousarray(values, dtype=np.float32)
        n = values.shape[0]
        if self.name == "f32":
            return values.view(np.uint8).reshape(n, -1)
        if self.name == "f16":
            return values.astype(np.float16).view(np.uint8).reshape(n, -1)
        if self.name == "bf16":
            bits = values.view(np.uint32)
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            return rounded.view(np.uint8).reshape(n, -1)
        if self.rotation:
            values = fwht(values, self.rotation)
        blocks = values.reshape(n, self.dim // QK, QK)
        if self.name == "q8_0":
            d, qs = quantize_q8_0(blocks)
            payload = qs.view(np.uint8)
        else:
            d, q = quantize_q4_0(blocks)
            payload = q[..., :QK // 2] | (q[..., QK // 2:] << 4)
        out = np.concatenate([d[..., None].view(np.uint8), payload], axis=-1)
        return out.reshape(n, self.row_bytes)

    def decode(self, rows: np.ndarray) -> np.ndarray:
        """Cache rows [n, row_bytes] uint8 -> float32 [n, dim] as llama.cpp's attention reads
        them: dequantized, still in the rotated basis when the format is rotated."""
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
        n = rows.shape[0]
        if self.name == "f32":
            return rows.view(np.float32).reshape(n, self.dim).copy()
        if self.name == "f16":
            return rows.view(np.float16).reshape(n, self.dim).astype(np.float32)
        if self.name == "bf16":
            return (rows.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(n, self.dim)
        blocks = rows.reshape(n, self.dim // QK, _BLOCK_BYTES[self.name])
        d = np.ascontiguousarray(blocks[..., :2]).view(np.float16).astype(np.float32)  # [n, nb, 1]
        if self.name == "q8_0":
            q = blocks[..., 2:].view(np.int8).astype(np.float32)
        else:
            packed = blocks[..., 2:]
            q = np.concatenate([packed & 0x0F, packed >> 4], axis=-1).astype(np.float32) - 8.0
        return (q * d).reshape(n, self.dim)

    def unrotate(self, values: np.ndarray) -> np.ndarray:
        """Attention-basis values back to the model's basis (identity when not rotated)."""
        return fwht(values, self.rotation) if self.rotation else values


def cache_formats(k_name: str, v_name: str, head_dim: int, dim: int) -> tuple[CacheFormat, CacheFormat]:
    """The K and V formats of a cache with these type names (rotation as llama.cpp decides it)."""
    k_rot, v_rot = rotation_blocks(k_name, v_name, head_dim)
    return CacheFormat(k_name, dim, k_rot), CacheFormat(v_name, dim, v_rot)
