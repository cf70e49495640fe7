"""`--prefill onnx` decides before building anything, and names real flags (issues 18 and
21; the library names its options, the CLI's flags in their place): an unsupported KV cache
type is known up front, and the ONNX graph (hundreds of MB) is exported only for a prompt
long enough to use it."""

from __future__ import annotations

from pathlib import Path

import pytest

from specdec_cli.prefill.backend import open_prefiller


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SPECDEC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("kv_types", [("q4_1", "f16"), ("f16", "q5_0")])
def test_unsupported_kv_cache_is_refused_before_any_export(smollm2_gguf: Path, cache: Path, kv_types) -> None:
    warnings: list[str] = []
    assert open_prefiller(smollm2_gguf, "onnx", "cpu", kv_types=kv_types, warn=warnings.append) is None
    assert len(warnings) == 1 and "kv_cache f16" in warnings[0] and "--" not in warnings[0], warnings
    assert not (cache / "onnx").exists()


def test_the_cli_reads_its_flags_in_the_warning(smollm2_gguf: Path, cache: Path, cli_flag_names) -> None:
    warnings: list[str] = []
    assert open_prefiller(smollm2_gguf, "onnx", "cpu", kv_types=("q4_1", "f16"), warn=warnings.append) is None
    assert len(warnings) == 1 and warnings[0].startswith("--prefill onnx:") and "--kv-cache f16" in warnings[0]


@pytest.mark.parametrize("kv_types", [("f16", "f16"), ("f16", "q8_0"), ("q4_0", "q4_0")])
def test_graph_is_exported_only_when_a_prompt_needs_it(smollm2_gguf: Path, cache: Path, kv_types) -> None:
    prefiller = open_prefiller(smollm2_gguf, "onnx", "cpu", kv_types=kv_types)
    assert prefiller is not None
    assert not (cache / "onnx").exists()


@pytest.mark.slow
def test_run_with_onnx_prefill_and_a_short_prompt_builds_nothing(run_specdec, tmp_path: Path) -> None:
    cache = tmp_path / "fresh-cache"
    result = run_specdec("run", "hi", "--prefill", "onnx", "--max-tokens", "2", SPECDEC_CACHE_DIR=str(cache))
    assert result.returncode == 0, result.stderr
    assert not (cache / "onnx").exists()
    assert result.stderr.count("--prefill onnx:") == 1 and "too few" in result.stderr, result.stderr
    quantized = run_specdec("run", "hi", "--prefill", "onnx", "--kv-cache", "q8_0", "--max-tokens", "2",
                            SPECDEC_CACHE_DIR=str(cache))
    assert quantized.returncode == 0, quantized.stderr
    assert "too few" in quantized.stderr and not (cache / "onnx").exists()


def test_cli_choices_are_the_backends() -> None:
    from specdec_cli.cli_options import PREFILL_CHOICES
    from specdec_cli.prefill.backend import PREFILL_MODES

    assert PREFILL_CHOICES == PREFILL_MODES
