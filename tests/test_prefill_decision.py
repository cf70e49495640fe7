"""`--prefill onnx` decides before building anything, and names real flags (issues 18 and
21; the library names its options, the CLI's flags in their place): an unsupported KV cache
type is known up front, and the ONNX graph (hundreds of MB) is exported only for a prompt
long enough to use it. `--prefill auto` without an NPU uses ONNX only at the prompt lengths
where `specdec tune` measured it clearly faster, and only with a graph already exported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from specdec_cli.prefill import backend, onnx_prefill
from specdec_cli.prefill.backend import measured_prefiller, open_prefiller, prefill_with_fallback
from specdec_cli.prefill.measured import PrefillSpeed, tune_prefiller
from specdec_cli.tuning import load_profile, save_profile


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


# ---- `--prefill auto` without an NPU: ONNX where `specdec tune` measured it faster ----------

def _speed(ratios: dict[int, float], provider: str = "CPUExecutionProvider", load_ms: float = 0.0) -> PrefillSpeed:
    """Timings at each length with ONNX taking `ratio` of llama.cpp's 2 ms per token."""
    lengths = sorted(ratios)
    return PrefillSpeed(provider=provider, lengths=lengths, llama_ms=[2.0] * len(lengths),
                        onnx_ms=[2.0 * ratios[n] for n in lengths], onnx_load_ms=load_ms)


def test_onnx_needs_a_clear_margin_at_the_nearest_measured_length() -> None:
    speed = _speed({256: 0.6, 1024: 0.95})  # ONNX wins short prompts only
    assert speed.onnx_faster(256) and speed.onnx_faster(448)
    assert not speed.onnx_faster(640) and not speed.onnx_faster(1024) and not speed.onnx_faster(4096)
    assert _speed({256: 0.89, 1024: 0.89}).onnx_faster(1024)
    assert not _speed({256: 0.92, 1024: 0.92}).onnx_faster(1024)  # faster, but within noise


def test_a_prompt_ending_inside_a_chunk_pays_for_the_whole_chunk() -> None:
    speed = _speed({256: 0.7, 1024: 0.7})
    assert speed.onnx_faster(64) and speed.onnx_faster(128)
    assert not speed.onnx_faster(40)  # 64 tokens' work for 40: 1.1x llama.cpp's time


def test_the_first_prompt_pays_for_loading_the_graph() -> None:
    """0.7x llama.cpp's 2 ms per token saves 0.6 ms a token: 1.5 s of loading needs a long
    prompt (a one-shot `run` always pays it; later prompts of a chat do not)."""
    speed = _speed({256: 0.7, 1024: 0.7}, load_ms=1500)
    assert speed.onnx_faster(1024) and not speed.onnx_faster(1024, loaded=False)
    assert speed.onnx_faster(8192, loaded=False)


@pytest.fixture
def no_npu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "npu_providers", lambda: [])


def test_auto_never_exports_a_graph(smollm2_gguf: Path, cache: Path, no_npu) -> None:
    assert measured_prefiller(smollm2_gguf, _speed({256: 0.3, 1024: 0.3})) is None
    assert not (cache / "onnx").exists()


class _Ctx:
    """Stands in for a llama.cpp context: the decision never reaches it."""


def test_auto_prefills_through_onnx_only_where_it_was_measured_faster(smollm2_gguf: Path, cache: Path, no_npu,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_prefill, "graph_exported", lambda *args: True)
    prefiller = measured_prefiller(smollm2_gguf, _speed({256: 0.5, 1024: 1.2}, load_ms=200))
    assert prefiller is not None and not prefiller.explicit
    through_onnx: list[int] = []

    def prefill(ctx, body, n_seq, start):  # what a real prefill leaves behind: the graph loaded
        through_onnx.append(len(body) - start)
        prefiller._sessions["kf16-vf16"] = object()

    monkeypatch.setattr(prefiller, "prefill", prefill)
    body = np.arange(1200, dtype=np.int32)
    warnings: list[str] = []
    assert not prefill_with_fallback(prefiller, _Ctx(), body[:128], 4, warn=warnings.append)  # saves < the load
    assert prefill_with_fallback(prefiller, _Ctx(), body[:300], 4, warn=warnings.append)
    assert not prefill_with_fallback(prefiller, _Ctx(), body, 4, warn=warnings.append)
    assert not prefill_with_fallback(prefiller, _Ctx(), body[:20], 4, warn=warnings.append)  # too short for any
    assert prefill_with_fallback(prefiller, _Ctx(), body[:1028], 4, start=900, warn=warnings.append)  # chat turn
    assert through_onnx == [300, 128] and warnings == []


@pytest.mark.parametrize("case", ["never faster", "other provider", "prefill llama", "ep named", "kv unsupported",
                                  "q4_0 cache", "no profile"])
def test_auto_keeps_llama_cpp_unless_the_profile_says_onnx(smollm2_gguf: Path, cache: Path, no_npu, case: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_prefill, "graph_exported", lambda *args: True)
    speed = {"never faster": _speed({256: 0.95, 1024: 1.5}),
             "other provider": _speed({256: 0.5}, "QNNExecutionProvider"), "no profile": None}.get(case, _speed({256: 0.5, 1024: 0.5}))
    mode, ep = ("llama", None) if case == "prefill llama" else ("auto", "cpu" if case == "ep named" else None)
    kv_types = {"kv unsupported": ("q4_1", "f16"), "q4_0 cache": ("q4_0", "q4_0")}.get(case, ("f16", "f16"))
    assert measured_prefiller(smollm2_gguf, speed, mode, ep, kv_types=kv_types) is None


def test_auto_leaves_a_q4_0_cache_to_llama_cpp_even_with_an_npu(smollm2_gguf: Path, cache: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX into a q4_0 cache parted from llama.cpp at a gap of 1.17 on SmolLM2, where
    llama.cpp's own prefill paths agree: `auto` does not choose that; `--prefill onnx` may."""
    monkeypatch.setattr(backend, "npu_providers", lambda: ["QNNExecutionProvider"])
    assert open_prefiller(smollm2_gguf, "auto", kv_types=("q4_0", "q4_0")) is None
    warnings: list[str] = []
    assert open_prefiller(smollm2_gguf, "onnx", "cpu", kv_types=("q4_0", "q4_0"), warn=warnings.append) is not None
    assert len(warnings) == 1 and "q4_0" in warnings[0] and "near ties" in warnings[0]
    assert open_prefiller(smollm2_gguf, "onnx", "cpu", kv_types=("f16", "q8_0"), warn=warnings.append) is not None
    assert len(warnings) == 1  # no warning for the caches whose divergences stayed at near ties


def test_tune_times_onnx_only_with_an_exported_graph_or_when_asked(smollm2_gguf: Path, cache: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    assert tune_prefiller(smollm2_gguf, ("f16", "f16"), export=False) is None
    assert not (cache / "onnx").exists()
    monkeypatch.setattr(onnx_prefill, "graph_exported", lambda *args: True)
    onnx_prefill.export_dir(smollm2_gguf).mkdir(parents=True)
    assert tune_prefiller(smollm2_gguf, ("f16", "f16"), export=False) is not None


def _profile_json(**extra) -> dict:
    """A stored profile as `specdec tune` wrote it before it timed prefill."""
    return {"version": 2, "device_key": "k", "device": "cpu threads=2 kv=f16/f16 engine=fast", "model_sha256": "0" * 64,
            "model_path": "/m.gguf", "n_threads": 2, "kv_cache": "f16", "engine": "fast", "verify_batch": 512,
            "quick": True, "created": 1.5, "prefix_tokens": 300, "rechecked": [], "backend": "CPU", "gpu_layers": 0,
            "curve": {"sizes": [1, 2], "ms": [13.0, 21.0], "depth": 300, "row_cell_ms": 0.006}, **extra}


def test_profiles_keep_their_prefill_timings_and_old_ones_still_load(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(_profile_json()))
    old = load_profile(path)
    assert old is not None and old.prefill is None
    old.prefill = _speed({256: 0.5, 1024: 0.8})
    assert save_profile(old, path) and load_profile(path) == old


def test_malformed_prefill_timings_make_the_profile_corrupt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(_profile_json(prefill={"provider": "CPUExecutionProvider", "lengths": [256, 1024],
                                                      "llama_ms": [2.0], "onnx_ms": [1.0, 1.0]})))
    assert load_profile(path) is None and "corrupt" in capsys.readouterr().err


@pytest.mark.slow
def test_tune_times_prefill_and_run_auto_follows_it(run_specdec, tmp_path: Path) -> None:
    """`tune --measure-prefill` exports the graph and stores both paths' timings; `run` with
    `--prefill auto` then prefills through ONNX exactly when they say so, and with the graph
    removed it prefills with llama.cpp and exports nothing."""
    cache = tmp_path / "fresh-cache"
    tuned = run_specdec("tune", "--quick", "--measure-prefill", "--json", SPECDEC_CACHE_DIR=str(cache), timeout=600)
    assert tuned.returncode == 0, tuned.stderr
    assert "exported the ONNX prefill graph" in tuned.stderr
    doc = json.loads(tuned.stdout)["prefill"]
    assert doc["lengths"] == [256, 1024] and doc["provider"] == "CPUExecutionProvider"
    assert min(doc["llama_ms"] + doc["onnx_ms"]) > 0 and set(doc["auto"]) <= {"onnx", "loaded", "llama"}
    speed = PrefillSpeed.from_json(doc)
    assert doc["onnx_load_ms"] > 0
    prompt = "Summarize the following notes in one line. " + "The meeting moved to Tuesday at noon. " * 36

    def run_auto() -> dict:
        result = run_specdec("run", prompt, "--json", "--max-tokens", "2", SPECDEC_CACHE_DIR=str(cache), timeout=300)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["stats"]

    stats = run_auto()
    assert 200 <= stats["n_prompt"] <= 400
    # a new process: the prompt pays for loading the graph
    assert stats["prefill_backend"] == ("onnx:CPU" if speed.onnx_faster(stats["n_prompt"] - 1, loaded=False)
                                        else "llama")
    shutil.rmtree(cache / "onnx")
    assert run_auto()["prefill_backend"] == "llama"
    assert not (cache / "onnx").exists()


@pytest.mark.slow
def test_the_measured_prefiller_is_built_only_for_a_prompt_it_would_take(smollm2_gguf: Path, cache: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the ONNX prefiller costs ~0.2 s (onnxruntime, the GGUF's layout): a `run`
    whose prompt llama.cpp prefills anyway must not pay it. A 2-token prompt builds
    nothing; a prompt long enough that ONNX wins, graph load included, builds it once."""
    from specdec_cli import generator as generator_module
    from specdec_cli.drafting import DraftSettings
    from specdec_cli.options import EngineConfig

    built: list[int] = []

    def fake_measured_prefiller(*args, **kwargs):
        built.append(1)
        return None  # as without an exported graph: llama.cpp prefills

    monkeypatch.setattr(generator_module, "measured_prefiller", fake_measured_prefiller)
    gen = generator_module.Generator(smollm2_gguf, EngineConfig(n_ctx=1024, n_threads=2))
    try:
        gen.use_measured_prefill(_speed({256: 0.5, 1024: 0.5}, load_ms=300.0))  # wins from ~375 new tokens
        plain = DraftSettings(mode="none")
        gen.generate(gen.tokenize("hi", special=False), max_tokens=1, draft=plain)
        assert built == []
        gen.generate(np.arange(100, 700, dtype=np.int32), max_tokens=1, draft=plain)
        gen.generate(np.arange(100, 800, dtype=np.int32), max_tokens=1, draft=plain)
        assert built == [1]
    finally:
        gen.close()
