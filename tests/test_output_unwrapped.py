"""Output to a file or a pipe keeps its lines whole, and NO_COLOR means plain text on a
terminal too (issue 18)."""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import pexpect
import pytest

from specdec_cli.console import stderr_console, stdout_console


@pytest.mark.slow
def test_stats_line_is_one_line_in_a_log(run_specdec) -> None:
    result = run_specdec("run", "Say hello.", "--max-tokens", "4", "--draft", "none", "--stats")
    assert result.returncode == 0, result.stderr
    stats = [line for line in result.stderr.splitlines() if "prompt tokens in" in line]
    assert len(stats) == 1 and "tokens/step" in stats[0] and "kv=" in stats[0], result.stderr
    assert "(prefill=llama)" in stats[0], result.stderr  # which prefill path read the prompt


def test_devices_lines_stay_whole_in_a_file(run_specdec) -> None:
    result = run_specdec("devices")
    assert result.returncode == 0, result.stderr
    info = json.loads(run_specdec("devices", "--json").stdout)["llama_system_info"]
    llama_line = next(line for line in result.stdout.splitlines() if line.startswith("llama.cpp"))
    assert info in llama_line, result.stdout  # 150+ characters on an x86 build, in one line


def test_tune_show_lines_stay_whole_in_a_file(run_specdec, tmp_path: Path) -> None:
    from specdec_cli.policy import CostCurve
    from specdec_cli.tuning import Profile, save_profile

    long_path = "/models/" + "a-rather-long-folder-name/" * 4 + "model.gguf"
    profile = Profile(device_key="0" * 16, device="a CPU threads=2 kv=f16/f16", model_sha256="1" * 64,
                      model_path=long_path, n_threads=2, kv_cache="f16", engine="fast", verify_batch=512,
                      quick=True, created=time.time(), prefix_tokens=300, rechecked=[],
                      curve=CostCurve(sizes=[1, 2], ms=[10.0, 17.0]))
    assert save_profile(profile, tmp_path / "cache" / "profiles" / "x.json")
    result = run_specdec("tune", "--show", SPECDEC_CACHE_DIR=str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    assert any(line.endswith(long_path) for line in result.stdout.splitlines()), result.stdout


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("make", [stdout_console, stderr_console])
def test_no_color_means_no_styling_at_all(make, monkeypatch: pytest.MonkeyPatch) -> None:
    screen = _Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.delenv("TERM", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    make().print("[dim]quiet[/dim] [bold]loud[/bold] [red]red[/red]")
    assert screen.getvalue() == "quiet loud red\n"
    monkeypatch.delenv("NO_COLOR")
    make().print("[dim]quiet[/dim]")
    assert "\x1b[" in screen.getvalue()  # on a terminal, without NO_COLOR, it is styled


@pytest.mark.slow
def test_no_color_in_a_real_terminal(specdec_env: dict[str, str], tmp_path: Path) -> None:
    child = pexpect.spawn(sys.executable, ["-m", "specdec_cli", "run", "Say hello.", "--max-tokens", "4",
                                           "--draft", "none", "--stats"],
                          env={**specdec_env, "NO_COLOR": "1", "TERM": "xterm-256color"}, cwd=str(tmp_path),
                          encoding="utf-8", timeout=120, dimensions=(24, 80))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "tokens/step" in child.before and "\x1b[" not in child.before


def test_models_list_names_the_users_file(run_specdec, specdec_env: dict[str, str]) -> None:
    result = run_specdec("models", "list")
    assert result.returncode == 0, result.stderr
    assert str(Path(specdec_env["SPECDEC_CONFIG_DIR"]) / "models.toml") in result.stdout
    listed = run_specdec("models", "list", "--json")
    assert isinstance(json.loads(listed.stdout), list)
