"""ONNX prefill with the K/V handed to llama.cpp (issues 8 and 21, docs/DESIGN.md, NPU prefill).

The ONNX graph computes in float32 from dequantized weights while llama.cpp multiplies
quantized weights by 8-bit-rounded activations, so the two prefills cannot be
bit-identical; what must hold is that the first logits are close (top-1 equal, stated
tolerances) and that greedy decoding continues the same way, with every KV cache type the
CLI offers, on a first turn and on a chat turn that continues a cached prefix. The handoff
itself must be exact: llama.cpp's own K/V, parsed and written back through our buffer
builder, restore bit-identical logits; and K/V that llama.cpp computed in float32, encoded
by the handoff into q8_0 / q4_0 (rotation included), are the bytes llama.cpp caches.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from specdec_cli.errors import SpecdecError
from specdec_cli.llama import ContextConfig, LlamaContext
from specdec_cli.prefill import PrefillUnavailable, ProviderUnavailable, UnsupportedArchitecture
from specdec_cli.prefill.backend import prefill_with_fallback
from specdec_cli.prefill.compare import greedy_after_prefill, llama_prefill
from specdec_cli.prefill.kv_handoff import KVHandoff, get_seq_state, parse_seq_state, serialize_seq_state, set_seq_state
from specdec_cli.prefill.onnx_prefill import OnnxPrefiller, check_supported
from specdec_cli.prefill.providers import choose_provider, list_providers

from prefill_checks import (KV_TYPES, SMOLLM2_PROMPTS, Engine, assert_handoff_round_trip,
                            assert_layer0_bytes_are_llama_cpp_s, assert_same_continuation)

pytestmark = pytest.mark.usefixtures("exports_in_test_cache")


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf: Path):
    engine = Engine(smollm2_gguf)
    yield engine
    engine.close()


@pytest.mark.slow
@pytest.mark.parametrize("kv", KV_TYPES)
def test_handoff_round_trip_smollm2(smollm2: Engine, kv: tuple[str, str]) -> None:
    assert_handoff_round_trip(smollm2, smollm2.chat_tokens(SMOLLM2_PROMPTS[0]), kv)


@pytest.mark.slow
@pytest.mark.parametrize("kv", [("q8_0", "q8_0"), ("q4_0", "q4_0"), ("f16", "q8_0")])
def test_quantized_cache_bytes_are_llama_cpp_s(smollm2: Engine, kv: tuple[str, str]) -> None:
    assert_layer0_bytes_are_llama_cpp_s(smollm2, smollm2.chat_tokens(SMOLLM2_PROMPTS[1]), kv)


@pytest.mark.slow
def test_handoff_without_rotation(smollm2: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """LLAMA_ATTN_ROT_DISABLE=1 (read when a context is made): the handoff writes unrotated
    blocks, and they are again llama.cpp's bytes."""
    monkeypatch.setenv("LLAMA_ATTN_ROT_DISABLE", "1")
    engine = Engine.__new__(Engine)
    engine.model, engine.prefiller, engine._contexts = smollm2.model, smollm2.prefiller, {}
    try:
        tokens = smollm2.chat_tokens(SMOLLM2_PROMPTS[1])
        assert_layer0_bytes_are_llama_cpp_s(engine, tokens, ("q8_0", "q4_0"))
        state = parse_seq_state(get_seq_state(engine.ctx(("q8_0", "q4_0")), 0))
        handoff = KVHandoff.from_template(state, smollm2.prefiller.spec)
        assert handoff.k_format.rotation == handoff.v_format.rotation == 0
        assert_handoff_round_trip(engine, tokens, ("q8_0", "q4_0"))
    finally:
        for ctx in engine._contexts.values():
            ctx.close()


@pytest.mark.slow
def test_handoff_refuses_corrupt_buffer(smollm2: Engine) -> None:
    tokens = smollm2.chat_tokens(SMOLLM2_PROMPTS[1])
    greedy_after_prefill(smollm2.ctx(), tokens, 1, llama_prefill, 1)
    buf = bytearray(get_seq_state(smollm2.ctx(), 0))
    state = parse_seq_state(bytes(buf))
    state.blocks[0].layers[3].k_row_size += 2  # a row size llama.cpp's reader must reject
    with pytest.raises(PrefillUnavailable):
        set_seq_state(smollm2.ctx(), serialize_seq_state(state), 0)


@pytest.mark.slow
@pytest.mark.parametrize("kv", KV_TYPES)
def test_onnx_prefill_matches_llama_smollm2(smollm2: Engine, kv: tuple[str, str]) -> None:
    prompts = SMOLLM2_PROMPTS if kv == ("f16", "f16") else SMOLLM2_PROMPTS[:1]
    for prompt in prompts:
        assert_same_continuation(smollm2.ctx(kv), smollm2.chat_tokens(prompt), smollm2.prefiller.prefill, kv)


@pytest.mark.slow
@pytest.mark.parametrize("kv", [("f16", "f16"), ("q8_0", "q8_0")])
def test_chat_turn_prefilled_through_onnx_matches_llama(smollm2: Engine, kv: tuple[str, str]) -> None:
    """Turn 2: the cached turn 1 (written by llama.cpp, as the Generator leaves it) is the
    past of the ONNX chunks; only the new tokens go through the graph."""
    turn1 = [("user", SMOLLM2_PROMPTS[0]),
             ("assistant", "Once upon a time, a small robot found a brush in the grass.")]
    tokens = smollm2.chat_messages(turn1 + [("user", SMOLLM2_PROMPTS[1] + " Then tell the robot's story again.")])
    # what the cache holds after turn 1 is the longest prefix both renderings share (turn 1's
    # rendering ends with a generation prompt that turn 2's does not repeat)
    first = smollm2.chat_messages(turn1)
    n = min(len(first), len(tokens))
    cached = int(np.argmin(first[:n] == tokens[:n])) if not np.array_equal(first[:n], tokens[:n]) else n
    assert cached >= len(first) - 4
    assert len(tokens) - 1 - cached >= 32
    ctx = smollm2.ctx(kv)

    def turn2(ctx: LlamaContext, body: np.ndarray, n_seq: int) -> None:
        llama_prefill(ctx, body[:cached], n_seq)
        prefix = get_seq_state(ctx, 0)
        assert prefill_with_fallback(smollm2.prefiller, ctx, body, n_seq, start=cached)
        # the cached prefix is written back byte for byte
        state = parse_seq_state(get_seq_state(ctx, 0))
        rows = KVHandoff.from_template(state, smollm2.prefiller.spec).sequence_rows(state)
        prefix_state = parse_seq_state(prefix)
        prefix_rows = KVHandoff.from_template(prefix_state, smollm2.prefiller.spec).sequence_rows(prefix_state)
        assert np.array_equal(rows.k[:, :cached], prefix_rows.k) and np.array_equal(rows.v[:, :cached], prefix_rows.v)

    assert_same_continuation(ctx, tokens, turn2, kv)


def _write_gguf(path: Path, arch: str) -> Path:
    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_block_count(1)
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unsupported_architecture(tmp_path: Path) -> None:
    path = _write_gguf(tmp_path / "mamba.gguf", "mamba")
    with pytest.raises(UnsupportedArchitecture, match="mamba"):
        check_supported(path)
    with pytest.raises(UnsupportedArchitecture):
        OnnxPrefiller(path, ep="cpu")
    assert issubclass(UnsupportedArchitecture, SpecdecError)


def test_missing_provider_is_a_clear_error() -> None:
    assert any(ep.name == "CPUExecutionProvider" for ep in list_providers())
    with pytest.raises(ProviderUnavailable, match="onnxruntime-qnn"):
        choose_provider("qnn")
    assert choose_provider("cpu").name == "CPUExecutionProvider"


@pytest.mark.slow
def test_unsupported_kv_cache_type_is_refused(smollm2_gguf: Path, smollm2: Engine) -> None:
    ctx = LlamaContext(smollm2.model, ContextConfig(n_ctx=256, n_batch=64, n_seq_max=1, n_threads=2,
                                                    kv_k="q4_1", kv_v="f16"))
    try:
        with pytest.raises(PrefillUnavailable, match="kv_cache f16, q8_0 or q4_0"):
            KVHandoff.probe(ctx, smollm2.prefiller.spec)
        assert ctx.seq_pos_max(0) == -1  # the probe leaves the sequence empty
        # what the Generator calls: a warning, and llama.cpp prefill instead, from then on
        prefiller = OnnxPrefiller(smollm2_gguf, ep="cpu", n_threads=2)
        warnings: list[str] = []
        body = np.concatenate([smollm2.chat_tokens(p) for p in SMOLLM2_PROMPTS])
        assert not prefill_with_fallback(prefiller, ctx, body, 1, warn=warnings.append)
        assert len(warnings) == 1 and "q4_1" in warnings[0]
        assert ctx.seq_pos_max(0) == -1
        assert not prefill_with_fallback(prefiller, ctx, body, 1, warn=warnings.append) and len(warnings) == 1
    finally:
        ctx.close()


def test_backend_choice_falls_back_with_a_warning(tmp_path: Path, smollm2_gguf: Path) -> None:
    from specdec_cli.errors import UsageError
    from specdec_cli.prefill.backend import open_prefiller
    from specdec_cli.prefill.providers import npu_providers

    warnings: list[str] = []
    assert open_prefiller(smollm2_gguf, "llama", warn=warnings.append) is None
    if not npu_providers():  # auto keeps llama.cpp prefill where there is no NPU
        assert open_prefiller(smollm2_gguf, "auto", warn=warnings.append) is None
    assert warnings == []
    assert open_prefiller(_write_gguf(tmp_path / "m.gguf", "mamba"), "onnx", "cpu", warn=warnings.append) is None
    assert open_prefiller(smollm2_gguf, "onnx", "qnn", warn=warnings.append) is None
    assert len(warnings) == 2 and "mamba" in warnings[0] and "onnxruntime-qnn" in warnings[1]
    with pytest.raises(UsageError):
        open_prefiller(smollm2_gguf, "npu")
