"""KV cache formats of the ONNX prefill handoff (issue 21): the q8_0 / q4_0 encoders give
the bytes of this machine's ggml CPU quantizers (called through ctypes), the Hadamard
rotation is the orthonormal transform llama.cpp applies, and it is chosen as llama.cpp
chooses it. No model is loaded."""

from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest

from specdec_cli.prefill.kv_blocks import (GGML_TYPE_Q4_0, GGML_TYPE_Q8_0, CacheFormat, fwht, hadamard,
                                           rotation_blocks, rotation_disabled)


class _TypeTraitsCpu(ctypes.Structure):
    # ggml-cpu.h struct ggml_type_traits_cpu
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p), ("vec_dot_type", ctypes.c_int),
                ("nrows", ctypes.c_int64)]


def _ggml_from_float(type_id: int):
    """ggml-cpu's from_float for a type: what `set_rows` uses to write the KV cache."""
    import llama_cpp

    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-cpu.so"))
    lib.ggml_get_type_traits_cpu.restype = ctypes.POINTER(_TypeTraitsCpu)
    address = lib.ggml_get_type_traits_cpu(type_id).contents.from_float
    return ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(address)


def _awkward_rows(n_rows: int, dim: int) -> np.ndarray:
    """Random rows of very different scales, plus zeros, exact ties and a lone large value."""
    rng = np.random.default_rng(21)
    x = rng.standard_normal((n_rows, dim)).astype(np.float32) * rng.uniform(1e-3, 50, (n_rows, 1)).astype(np.float32)
    x[0] = 0.0
    x[1] = np.round(x[1] * 2) / 2  # values on .5 steps: rounding ties
    x[2, :32] = 0.25
    x[3, 7] = -1000.0
    x[4, :32] = np.linspace(-1, 1, 32)  # the largest magnitude twice, with both signs
    return x


@pytest.mark.parametrize(("name", "type_id"), [("q8_0", GGML_TYPE_Q8_0), ("q4_0", GGML_TYPE_Q4_0)])
def test_encoder_matches_ggml_quantizer(name: str, type_id: int) -> None:
    x = _awkward_rows(2000, 256)
    fmt = CacheFormat(name, 256, 0)
    expected = np.zeros((len(x), fmt.row_bytes), dtype=np.uint8)
    _ggml_from_float(type_id)(x.ctypes.data, expected.ctypes.data, x.size)
    got = fmt.encode(x)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected), f"{int((got != expected).sum())} bytes differ"


@pytest.mark.parametrize("name", ["f16", "q8_0", "q4_0"])
def test_decode_then_encode_gives_the_same_bytes(name: str) -> None:
    """What the handoff relies on to write a chat's cached prefix back: rows read out and
    written again are the rows llama.cpp wrote, also through the rotation."""
    fmt = CacheFormat(name, 256, 128 if name != "f16" else 0)
    rows = fmt.encode(_awkward_rows(500, 256))
    again = fmt.encode(fmt.unrotate(fmt.decode(rows)))
    assert np.array_equal(again, rows)


def test_fwht_is_the_orthonormal_hadamard_transform() -> None:
    x = _awkward_rows(64, 512)
    for n in (64, 128, 256):
        h = hadamard(n)
        assert np.allclose(h @ h, np.eye(n), atol=1e-6)
        expected = (x.reshape(-1, n).astype(np.float64) @ h.T.astype(np.float64)).reshape(x.shape)
        assert np.allclose(fwht(x, n), expected, rtol=1e-5, atol=1e-4 * np.abs(x).max())
        assert np.allclose(fwht(fwht(x, n), n), x, rtol=1e-5, atol=1e-5 * np.abs(x).max())


def test_rotation_is_chosen_as_llama_cpp_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLAMA_ATTN_ROT_DISABLE", raising=False)
    # K: the largest power of two >= 64 dividing the head size; V: 64; quantized types only
    assert rotation_blocks("q8_0", "q4_0", 64) == (64, 64)
    assert rotation_blocks("q8_0", "q8_0", 128) == (128, 64)
    assert rotation_blocks("q4_0", "q4_0", 256) == (256, 64)
    assert rotation_blocks("q8_0", "q8_0", 192) == (64, 64)
    assert rotation_blocks("f16", "q8_0", 64) == (0, 64)
    assert rotation_blocks("f16", "f16", 128) == (0, 0)
    assert rotation_blocks("q8_0", "q8_0", 96) == (0, 0)  # not a multiple of 64
    for value, disabled in (("1", True), ("0", False), (" 2x", True), ("yes", False), ("", False), ("-1", True)):
        monkeypatch.setenv("LLAMA_ATTN_ROT_DISABLE", value)
        assert rotation_disabled() is disabled, value
    monkeypatch.setenv("LLAMA_ATTN_ROT_DISABLE", "1")
    assert rotation_blocks("q8_0", "q4_0", 128) == (0, 0)


def test_row_sizes_are_ggml_row_sizes() -> None:
    # ggml_row_size: blocks of 32 values, 34 bytes (q8_0) or 18 bytes (q4_0)
    assert CacheFormat("q8_0", 192, 64).row_bytes == 6 * 34
    assert CacheFormat("q4_0", 256, 128).row_bytes == 8 * 18
    assert CacheFormat("f16", 192, 0).row_bytes == 384
