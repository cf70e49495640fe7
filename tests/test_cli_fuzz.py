"""Hostile values for every numeric and text option of `specdec run` (issue 18): whatever
the value, the exit code is 0, 1 or 2, there is no traceback and no native abort, and
stdout carries nothing but generated text.

The options come from the CLI itself, so a new option is fuzzed without editing this file.
One cache dir for all runs (conftest's run_specdec) and two tokens per generation keep it
quick; most values are refused before the model loads."""

from __future__ import annotations

import subprocess
import sys
import typing
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


CASES = [pytest.param(flag, value, id=f"{flag}={value[:12]!r}")
         for flag, kind in _run_options()
         for value in (TEXT_VALUES if kind is str else [*NUMERIC_VALUES, HUGE[kind]])]


@pytest.mark.parametrize("flag, value", CASES)
def test_hostile_value(specdec_env: dict[str, str], tmp_path: Path, flag: str, value: str | bytes) -> None:
    settings = {**BASE, flag: value}
    args: list[str | bytes] = []
    for name, setting in settings.items():
        args += [setting] if name == "PROMPT" else [name, setting]
    if flag == "PROMPT":
        args.insert(len(args) - 1, "--")  # a prompt like "-1" is text, not an option
    done = subprocess.run([sys.executable, "-m", "specdec_cli", "run", *args], cwd=tmp_path, env=specdec_env,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    stdout, stderr = done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace")
    assert done.returncode in (0, 1, 2), (done.returncode, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    if done.returncode != 0:
        assert stdout == "", stdout[:500]
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, stderr[-3000:]  # one line says why
    for marker in NOT_TEXT:
        assert marker not in stdout, stdout[:500]
