"""The README's option lists are checked against the real CLI, so that they cannot drift
apart again (issue 18): every "Options of `specdec X`:" list names exactly X's options,
every flag the README names exists, and what the README promises of all options holds
(environment variables, defaults in --help, --version, shell completion)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import typer

from specdec_cli import __version__
from specdec_cli.cli import _mount_subcommands, app

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
FLAG = re.compile(r"(?<![\w-])(--?[a-z][a-z0-9-]*)")
# Commands whose every long option the README says is also an environment variable.
ENV_COMMANDS = ("run", "chat", "tune")


@pytest.fixture(scope="module")
def cli():
    """The click command tree behind `specdec` (Typer's own copy of click)."""
    if not any(info.name == "models" for info in app.registered_groups):
        _mount_subcommands()
    return typer.main.get_command(app)


def _commands(group, prefix: str = "") -> dict:
    found = {}
    for name, command in group.commands.items():
        found[prefix + name] = command
        if hasattr(command, "commands"):
            found.update(_commands(command, f"{prefix}{name} "))
    return found


def _options(command) -> list:
    return [param for param in command.params if param.param_type_name == "option"]


def _flags(command) -> set[str]:
    return {flag for param in _options(command) for flag in (*param.opts, *param.secondary_opts)} - {"--help", "-h"}


def _listed(command: str) -> set[str]:
    """Flags in the README's "Options of `specdec COMMAND`:" list (up to its first full stop)."""
    match = re.search(rf"Options of\s+`specdec {command}`:(.*?)\.\s", README, re.S)
    assert match, f"the README has no 'Options of `specdec {command}`:' list"
    return set(FLAG.findall(match.group(1)))


@pytest.mark.parametrize("command", ["run", "chat", "tune"])
def test_option_lists_name_exactly_the_options(cli, command: str) -> None:
    real, listed = _flags(cli.commands[command]), _listed(command)
    assert not real - listed, f"options of `specdec {command}` the README does not list: {sorted(real - listed)}"
    assert not listed - real, f"the README lists options `specdec {command}` does not have: {sorted(listed - real)}"


def test_every_flag_the_readme_names_exists(cli) -> None:
    known = _flags(cli) | {"--help", "-h"}
    for command in _commands(cli).values():
        known |= _flags(command)
    named = set(FLAG.findall(README)) - {"-"}
    assert not named - known, f"the README names flags no command has: {sorted(named - known)}"


@pytest.mark.parametrize("command", ENV_COMMANDS)
def test_every_long_option_has_its_environment_variable(cli, command: str) -> None:
    for param in _options(cli.commands[command]):
        if param.name != "help":
            long = next(opt for opt in param.opts if opt.startswith("--"))
            expected = "SPECDEC_" + long[2:].upper().replace("-", "_")
            assert param.envvar == expected, f"specdec {command} {long}: envvar {param.envvar!r}, not {expected}"


@pytest.mark.parametrize("command", ENV_COMMANDS)
def test_kv_k_and_kv_v_wherever_kv_cache_is(cli, command: str) -> None:
    flags = _flags(cli.commands[command])
    assert "--kv-cache" in flags and {"--kv-k", "--kv-v"} <= flags


@pytest.mark.parametrize("command", ["run", "chat"])
def test_help_shows_the_defaults_that_depend_on_other_settings(cli, command: str) -> None:
    shown = {param.opts[0]: param.show_default for param in _options(cli.commands[command])}
    for flag in ("--draft", "--kv-cache", "--threads", "--tree-size", "--draft-len"):
        assert isinstance(shown[flag], str) and shown[flag], flag


def test_help_text_shows_them(run_specdec) -> None:
    result = run_specdec("run", "--help", COLUMNS="200")
    assert result.returncode == 0, result.stderr
    assert "[default: (auto)]" in result.stdout and "[default: (f16" in result.stdout


def test_json_stats_and_raw_from_the_environment(cli) -> None:
    envvars = {param.opts[0]: param.envvar for param in _options(cli.commands["run"])}
    assert (envvars["--json"], envvars["--stats"], envvars["--raw"]) == ("SPECDEC_JSON", "SPECDEC_STATS", "SPECDEC_RAW")


def test_version(run_specdec) -> None:
    result = run_specdec("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"specdec {__version__} ")


def test_shell_completion(specdec_env: dict[str, str], tmp_path: Path) -> None:
    specdec = shutil.which("specdec")
    if specdec is None:
        pytest.skip("the `specdec` console script is not on PATH")
    result = subprocess.run([specdec], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={**specdec_env, "_SPECDEC_COMPLETE": "complete_bash",
                                 "COMP_WORDS": "specdec run --kv", "COMP_CWORD": "2"})
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {"--kv-cache", "--kv-k", "--kv-v"}
