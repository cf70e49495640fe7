"""Hostile values for every numeric and text option of `specdec run` (issue 18): whatever
the value, the exit code is 0, 1 or 2, there is no traceback and no native abort, and
stdout carries nothing but generated text.

The options come from the CLI itself, so a new option is fuzzed without editing this file.
To keep it quick, the runs share one cache dir, generate a token or two, and go one per CPU
at a time (most are refused in a second, before any model loads); each case's result is
then checked by its own test."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import typer

from specdec_cli import cli

pytestmark = pytest.mark.slow

# Stopping at the first space ends even a run with a huge --max-tokens within a few tokens.
BASE = {"PROMPT": "hi", "--max-tokens": "2", "--ctx": "256", "--stop": " "}
NOT_UTF8 = b"\xff\xfe"
NUMERIC_VALUES = ["0", "-1", "nan", "inf", "", NOT_UTF8]  # and the type's own huge value:
HUGE = {int: str(1 << 70), float: "1e308"}
# "~no-such-user/...": a path that cannot even be expanded; 20,000 characters: too long for a path.
TEXT_VALUES = ["", "-1", "~no-such-user/x.gguf", "x" * 20000, NOT_UTF8]
# Printed by the engine or the CLI, never part of generated text.
NOT_TEXT = ("Traceback", "error:", "warning:", "GGML", "llama_", "ggml_")


def _run_options() -> list[tuple[str, type]]:
    """(flag, value type: int, float or str) for every option of `run` that takes a value,
    and the prompt."""
    if not any(info.name == "models" for info in cli.app.registered_groups):
        cli._mount_subcommands()
    run = typer.main.get_command(cli.app).commands["run"]
    hints = typing.get_type_hints(cli.run, include_extras=True)
    found = [("PROMPT", str)]
    for param in run.params:
        if param.param_type_name == "option" and not param.is_flag:
            long = next(opt for opt in param.opts if opt.startswith("--"))
            annotated = typing.get_args(hints[param.name])[0]  # inside Annotated[...], maybe Optional[...]
            found.append((long, next((t for t in (int, float) if t in (annotated, *typing.get_args(annotated))), str)))
    return found


CASES = [(flag, value) for flag, kind in _run_options()
         for value in (TEXT_VALUES if kind is str else [*NUMERIC_VALUES, HUGE[kind]])]


def _args(flag: str, value: str | bytes) -> list[str | bytes]:
    args: list[str | bytes] = []
    for name, setting in {**BASE, flag: value}.items():
        args += [setting] if name == "PROMPT" else [name, setting]
    if flag == "PROMPT":
        args.insert(len(args) - 1, "--")  # a prompt like "-1" is text, not an option
    return args


@pytest.fixture(scope="module")
def outcomes(shared_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list:
    """Every case's finished process, run one per CPU at a time, in the environment that
    conftest's (per-test) specdec_env builds: one shared cache dir, own config, data and
    Hugging Face dirs (a data dir per case: runs add to a per-model history there)."""
    root = tmp_path_factory.mktemp("fuzz")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("HF_", "SPECDEC_", "HUGGINGFACE_")) and key != "NO_COLOR"}
    env.update(SPECDEC_CONFIG_DIR=str(root / "config"), SPECDEC_CACHE_DIR=str(shared_cache_dir),
               HF_HOME=str(root / "hf"), NO_COLOR="1")

    def run(index: int) -> subprocess.CompletedProcess:
        try:
            return subprocess.run([sys.executable, "-m", "specdec_cli", "run", *_args(*CASES[index])], cwd=root,
                                  env={**env, "SPECDEC_DATA_DIR": str(root / f"data-{index}")},
                                  stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
        except subprocess.TimeoutExpired as exc:  # fails this case only
            return subprocess.CompletedProcess(exc.cmd, "timed out", exc.stdout or b"", exc.stderr or b"")

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(run, range(len(CASES))))


@pytest.mark.parametrize("index", range(len(CASES)),
                         ids=[f"{flag}={value[:12]!r}" for flag, value in CASES])
def test_hostile_value(outcomes: list, index: int) -> None:
    done = outcomes[index]
    stdout, stderr = done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace")
    assert done.returncode in (0, 1, 2), (done.returncode, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    if done.returncode != 0:
        assert stdout == "", stdout[:500]
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, stderr[-3000:]  # one line says why
    for marker in NOT_TEXT:
        assert marker not in stdout, stdout[:500]
