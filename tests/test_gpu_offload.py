"""GPU offload (issue 20) on a CPU-only build: `--gpu-layers N|all|auto` and its variable,
the offload decision on made-up GPUs (offload.py), `auto` = 0 layers here, the warning
when layers are asked for without a GPU backend, and the exactness probe and the tuner
profile kept per backend and layer count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer

from specdec_cli import exactness
from specdec_cli.cli import _mount_subcommands, app
from specdec_cli.errors import UsageError
from specdec_cli.offload import (RESERVE_BYTES, GpuDevice, ModelFootprint, model_footprint, parse_gpu_layers,
                                 plan_offload)
from specdec_cli.policy import CostCurve
from specdec_cli.tuning import Profile, ProfileKey, load_profile, save_profile

GIB = 2**30
COMMANDS = ("run", "chat", "bench", "tune")


def _gpu(free_gib: float, *, name: str = "CUDA0", backend: str = "CUDA", integrated: bool = False) -> GpuDevice:
    return GpuDevice(name=name, backend=backend, description="a test GPU", integrated=integrated,
                     free_bytes=int(free_gib * GIB), total_bytes=int(free_gib * GIB) + GIB)


# 28 blocks, 1 GiB of weights, 0.5 GiB of KV cache, 0.25 GiB of logits: all of it needs
# 1.75 GiB plus the reserve.
MODEL = ModelFootprint(n_layers=28, weight_bytes=GIB, kv_bytes=GIB // 2, logits_bytes=GIB // 4)


# ---- parsing ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [("auto", "auto"), ("all", "all"), (" ALL ", "all"), ("0", "0"),
                                            ("10", "10"), ("007", "7"), ("999", "999")])
def test_layer_requests_parse(text: str, expected: str) -> None:
    assert parse_gpu_layers(text) == expected


@pytest.mark.parametrize("text", ["-1", "x", "1.5", "", "all10", "+3"])
def test_bad_layer_requests_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="GPU layers"):
        parse_gpu_layers(text)


@pytest.fixture(scope="module")
def cli():
    if not any(info.name == "models" for info in app.registered_groups):
        _mount_subcommands()
    return typer.main.get_command(app)


def _parsed(cli, command: str, args: list[str]) -> str:
    with cli.commands[command].make_context(command, args) as ctx:
        return ctx.params["gpu_layers"]


@pytest.mark.parametrize("command", COMMANDS)
def test_flag_and_variable_on_every_command(cli, command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPECDEC_GPU_LAYERS", raising=False)
    assert _parsed(cli, command, []) == "auto"
    assert _parsed(cli, command, ["-ngl", "10"]) == "10"
    assert _parsed(cli, command, ["--gpu-layers", "all"]) == "all"
    assert _parsed(cli, command, ["--gpu-layers=auto"]) == "auto"
    monkeypatch.setenv("SPECDEC_GPU_LAYERS", "12")
    assert _parsed(cli, command, []) == "12"
    assert _parsed(cli, command, ["-ngl", "0"]) == "0"  # the flag wins over the variable


@pytest.mark.parametrize("args, env", [(["-ngl", "many"], {}), (["--gpu-layers", "-3"], {}),
                                       ([], {"SPECDEC_GPU_LAYERS": "lots"})])
def test_bad_values_exit_2(run_specdec, args: list[str], env: dict[str, str]) -> None:
    result = run_specdec("run", *args, "hi", **env)
    assert result.returncode == 2, result.stderr
    assert "--gpu-layers" in result.stderr and "GPU layers" in result.stderr


# ---- the decision ----------------------------------------------------------------------

def test_auto_puts_everything_on_a_gpu_it_fits_in() -> None:
    plan = plan_offload("auto", [_gpu(8)], MODEL)
    assert plan.n_gpu_layers == 29 and plan.backend == "CUDA" and plan.devices == ("CUDA0",)
    assert "fit" in plan.reason and plan.warning is None


def test_auto_offloads_the_layers_that_fit() -> None:
    # Room for the reserve, the logits and 10 layers of (1 GiB / 29 + 0.5 GiB / 28) each.
    free = RESERVE_BYTES + MODEL.logits_bytes + 10.5 * MODEL.layer_bytes
    plan = plan_offload("auto", [_gpu(free / GIB)], MODEL)
    assert plan.n_gpu_layers == 10 and plan.backend == "CUDA"
    assert "10 of 29 layers" in plan.reason


def test_auto_stays_on_the_cpu_when_no_layer_fits() -> None:
    plan = plan_offload("auto", [_gpu(0.5)], MODEL)
    assert (plan.n_gpu_layers, plan.backend, plan.devices) == (0, "CPU", ())
    assert "not one layer fits" in plan.reason and plan.warning is None


def test_free_memory_of_every_discrete_gpu_counts_and_igpus_only_without_one() -> None:
    two = plan_offload("auto", [_gpu(1.2), _gpu(1.2, name="CUDA1")], MODEL)
    assert two.n_gpu_layers == 29 and two.devices == ("CUDA0", "CUDA1")
    mixed = plan_offload("auto", [_gpu(64, name="Vulkan1", backend="Vulkan", integrated=True), _gpu(8)], MODEL)
    assert mixed.devices == ("CUDA0",) and mixed.backend == "CUDA"
    igpu = plan_offload("auto", [_gpu(64, name="Vulkan0", backend="Vulkan", integrated=True)], MODEL)
    assert igpu.backend == "Vulkan" and igpu.n_gpu_layers == 29


def test_counts_and_all_are_taken_as_asked() -> None:
    assert plan_offload("10", [_gpu(0.1)], MODEL).n_gpu_layers == 10  # the user knows better than the estimate
    assert plan_offload("999", [_gpu(8)], MODEL).n_gpu_layers == 29  # llama.cpp's -ngl 999 idiom: all
    assert plan_offload("all", [_gpu(0.1)], MODEL).n_gpu_layers == 29
    assert plan_offload("0", [_gpu(8)], MODEL).backend == "CPU"


def test_auto_without_a_gpu_backend_is_the_cpu_without_a_warning() -> None:
    plan = plan_offload("auto", [], MODEL)
    assert (plan.n_gpu_layers, plan.backend, plan.warning) == (0, "CPU", None)
    assert plan_offload("0", [], MODEL).warning is None


@pytest.mark.parametrize("request_", ["10", "all"])
def test_layers_without_a_gpu_backend_warn_how_to_install_one(request_: str) -> None:
    plan = plan_offload(request_, [], None)
    assert (plan.n_gpu_layers, plan.backend) == (0, "CPU")
    assert "no GPU backend" in plan.warning and 'CMAKE_ARGS="-DGGML_CUDA=on"' in plan.warning
    assert "\n" not in plan.warning


def test_footprint_from_gguf_metadata() -> None:
    # SmolLM2-135M's numbers: 30 blocks, 9 heads of 64, 3 KV heads.
    metadata = {"llama.block_count": 30, "llama.embedding_length": 576, "llama.attention.head_count": 9,
                "llama.attention.head_count_kv": 3}
    fp = model_footprint(metadata, "llama", file_size=98_362_432, n_vocab=49152, n_ctx=4096, n_batch=512,
                         kv_k="f16", kv_v="q8_0")
    assert fp.n_layers == 30 and fp.weight_bytes == 98_362_432
    assert fp.kv_bytes == 30 * 4096 * 3 * 64 * (2 + 34 / 32)
    assert fp.logits_bytes == 4 * 512 * 49152
    assert model_footprint({}, "llama", file_size=1, n_vocab=1, n_ctx=64, n_batch=64, kv_k="f16", kv_v="f16") is None


def test_auto_is_zero_layers_on_this_build(smollm2_gguf: Path) -> None:
    from specdec_cli.devices import gpu_devices, offload_plan

    if gpu_devices():
        pytest.skip("this llama.cpp build has a GPU backend")
    plan = offload_plan(smollm2_gguf, "auto", n_ctx=4096, n_batch=512, kv_k="f16", kv_v="f16")
    assert (plan.n_gpu_layers, plan.backend, plan.warning) == (0, "CPU", None)


# ---- per backend: the exactness probe and the tuner profile ----------------------------

def test_exactness_is_probed_per_backend_layers_and_kv_types(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECDEC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(exactness, "_probed", {})  # rules other tests kept in memory
    model = tmp_path / "model.gguf"
    model.write_bytes(b"not really a model")
    probes = []

    def probe(path, verbose=False, n_threads=None, *, n_gpu_layers=0, kv_types=("f16", "q8_0")):
        probes.append((n_gpu_layers, kv_types))
        return exactness.ExactnessRule(False, 1 if n_gpu_layers else 32)

    monkeypatch.setattr(exactness, "probe_exactness", probe)
    assert exactness.exactness_rule(model).max_verify_batch == 32
    gpu = exactness.exactness_rule(model, backend="CUDA", n_gpu_layers=31, kv_types=("f16", "f16"))
    assert gpu.max_verify_batch == 1
    assert exactness.exactness_rule(model, backend="CUDA", n_gpu_layers=31, kv_types=("f16", "f16")) == gpu
    exactness.exactness_rule(model, backend="CUDA", n_gpu_layers=10, kv_types=("f16", "f16"))
    assert probes == [(0, ("f16", "q8_0")), (31, ("f16", "f16")), (10, ("f16", "f16"))]  # each probed once
    names = sorted(p.name.split("-", 1)[1] for p in (tmp_path / "cache" / "exactness").iterdir())
    assert names == ["CPU-0-f16-q8_0.json", "CUDA-10-f16-f16.json", "CUDA-31-f16-f16.json"]


def _key(backend: str = "CPU", gpu_layers: int = 0) -> ProfileKey:
    return ProfileKey(fingerprint="fp", n_threads=4, kv_k="f16", kv_v="f16", engine="fast", model_sha256="0" * 64,
                      backend=backend, gpu_layers=gpu_layers)


def test_profiles_are_kept_per_backend_and_layers() -> None:
    assert len({_key().path(), _key("CUDA", 29).path(), _key("CUDA", 10).path(), _key("Vulkan", 29).path()}) == 4
    assert "gpu=CUDA:29" in _key("CUDA", 29).description
    # A CPU run's key is the one profiles stored before GPU offload were found under.
    assert _key().description == "fp threads=4 kv=f16/f16 engine=fast"


def test_profile_carries_its_backend_and_older_ones_read_as_cpu(tmp_path: Path) -> None:
    key = _key("CUDA", 29)
    profile = Profile(device_key=key.device_hash, device=key.description, model_sha256="0" * 64,
                      model_path="/m.gguf", n_threads=4, kv_cache="f16", engine="fast", verify_batch=512, quick=True,
                      created=1.0, prefix_tokens=300, rechecked=[], curve=CostCurve(sizes=[1, 8], ms=[4.0, 4.4]),
                      backend="CUDA", gpu_layers=29)
    path = tmp_path / "p.json"
    assert save_profile(profile, path) and load_profile(path) == profile
    older = {k: v for k, v in profile.to_json().items() if k not in ("backend", "gpu_layers")}
    path.write_text(json.dumps(older))
    assert (load_profile(path).backend, load_profile(path).gpu_layers) == ("CPU", 0)


# ---- with the model --------------------------------------------------------------------

@pytest.mark.slow
def test_layers_without_a_gpu_backend_warn_once_and_run(run_specdec) -> None:
    from specdec_cli.devices import gpu_devices

    if gpu_devices():
        pytest.skip("this llama.cpp build has a GPU backend")
    result = run_specdec("run", "Say hello.", "--max-tokens", "6", "--json", "-ngl", "10")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "no GPU backend" in warnings[0] and "pip install" in warnings[0], result.stderr
    stats = json.loads(result.stdout)["stats"]
    assert (stats["backend"], stats["gpu_layers"]) == ("CPU", 0) and stats["n_generated"] > 0
    line = run_specdec("run", "Say hello.", "--max-tokens", "4", "--stats")
    assert line.returncode == 0 and "backend=CPU" in line.stderr and "warning" not in line.stderr


@pytest.mark.slow
def test_auto_decodes_plainly_where_no_batch_is_exact(smollm2_gguf: Path, shared_cache_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from specdec_cli import generator as generator_module
    from specdec_cli.drafting import DraftSettings
    from specdec_cli.options import EngineConfig

    monkeypatch.setenv("SPECDEC_CACHE_DIR", str(shared_cache_dir))
    monkeypatch.setattr(generator_module, "exactness_rule", lambda *args, **kwargs: exactness.ExactnessRule(False, 1))
    gen = generator_module.Generator(smollm2_gguf, EngineConfig(n_ctx=512, exact=True))
    try:
        text = "Repeat exactly: apples, pears, plums, figs. Again: apples, pears, plums, figs."
        prompt = gen.tokenize(gen.render_chat([("user", text)]))
        auto = gen.generate(prompt, max_tokens=24, draft=DraftSettings(mode="auto"))
        plain = gen.generate(prompt, max_tokens=24, draft=DraftSettings(mode="none"))
    finally:
        gen.close()
    assert auto.tokens == plain.tokens
    assert auto.stats.speculative_steps == 0 and auto.stats.tree_size == 1 and auto.stats.draft_len == 0
    assert "auto decodes plainly" in auto.stats.plain_reason and "CPU" in auto.stats.plain_reason
    assert plain.stats.plain_reason is None  # `none` asked for plain decoding: nothing to explain
