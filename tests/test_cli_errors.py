"""Bad input as a new user types it (issue 18): one `error:` line and exit 2, never a
traceback or a native abort; and the small messages that were wrong."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from specdec_cli.cli_options import MIN_CTX
from specdec_cli.drafting import DraftSettings
from specdec_cli.errors import UsageError
from specdec_cli.options import EngineConfig

SHORT = ["--max-tokens", "4", "--draft", "none"]


def _usage_error(result, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "GGML" not in result.stderr + result.stdout
    assert result.stdout == ""
    assert [line[:6] for line in result.stderr.splitlines() if line.strip()] == ["error:"], result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def _run_bytes(specdec_env, tmp_path: Path, *args: str | bytes, input: bytes | None = None):
    """`specdec ARGS` with arguments that may be raw bytes (not valid UTF-8)."""
    done = subprocess.run([sys.executable, "-m", "specdec_cli", *args], cwd=tmp_path, env=specdec_env,
                          input=input, capture_output=True, timeout=120)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode("utf-8", "replace"),
                                       done.stderr.decode("utf-8", "replace"))


# --- item 1: a context too small for llama.cpp ----------------------------------------------


def test_min_ctx_holds_the_default_trees_branches() -> None:
    # llama.cpp needs a context of at least one row per sequence (EngineConfig.n_seq_max).
    assert MIN_CTX >= EngineConfig.n_seq_max == DraftSettings.tree_size


@pytest.mark.parametrize("command", ["run", "chat"])
@pytest.mark.parametrize("ctx", ["16", "32", "63"])
def test_tiny_context_is_a_usage_error_naming_the_smallest(run_specdec, command: str, ctx: str) -> None:
    result = run_specdec(command, *(["hi"] if command == "run" else []), "--ctx", ctx, *SHORT, input="hi\n")
    _usage_error(result, "--ctx", str(MIN_CTX))


@pytest.mark.slow  # the context is checked against the loaded model
def test_library_refuses_a_tiny_context_instead_of_aborting(smollm2_gguf: Path, shared_cache_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from specdec_cli.errors import UsageError
    from specdec_cli.generator import Generator

    monkeypatch.setenv("SPECDEC_CACHE_DIR", str(shared_cache_dir))
    with pytest.raises(UsageError, match="smallest context that works is 64 tokens"):
        Generator(smollm2_gguf, EngineConfig(n_ctx=32, n_seq_max=64))


@pytest.mark.slow
@pytest.mark.parametrize("draft", ["none", "auto", "suffix"])
def test_smallest_context_works(run_specdec, draft: str) -> None:
    # The modes' own chain caps (auto's 64 with its 16-node tree) shrink to a small batch.
    result = run_specdec("run", "hi", "--ctx", str(MIN_CTX), "--max-tokens", "4", "--draft", draft, "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)["stats"]
    assert stats["tree_size"] + stats["draft_len"] <= MIN_CTX


@pytest.mark.slow
def test_prompt_longer_than_a_batch_in_a_small_context(run_specdec) -> None:
    """--ctx 300 makes llama.cpp's batch 300 tokens while its cache holds 512: a 350-token
    prompt fits the cache and used to abort in one 350-token prefill batch."""
    result = run_specdec("run", "word " * 340, "--ctx", "300", "--raw", *SHORT, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["stats"]["n_prompt"] > 300


@pytest.mark.slow
def test_draft_larger_than_a_small_context_batch(run_specdec) -> None:
    result = run_specdec("run", "hi", "--ctx", "128", "--draft", "hybrid", "--tree-size", "200",
                         "--max-tokens", "4")
    _usage_error(result, "--tree-size")


def test_context_past_the_training_context(run_specdec) -> None:
    _usage_error(run_specdec("run", "hi", "--ctx", "100000"), "8192")


def test_absurd_context(run_specdec) -> None:
    _usage_error(run_specdec("run", "hi", "--ctx", str(1 << 40)), "--ctx")


# --- the library names options, the CLI its flags (issue 19) --------------------------------

PACKAGE = Path(__file__).resolve().parent.parent / "specdec_cli"


def _cli_flags() -> set[str]:
    import typer

    from specdec_cli.cli import _mount_subcommands, app

    if not any(info.name == "models" for info in app.registered_groups):
        _mount_subcommands()
    flags: set[str] = set()
    stack = [typer.main.get_command(app)]
    while stack:
        command = stack.pop()
        stack += list(getattr(command, "commands", {}).values())
        flags |= {flag for param in command.params for flag in (*param.opts, *param.secondary_opts)}
    return flags


def _library_strings():
    """(module, line, text) of every string in the library's code, docstrings left out: the
    modules below the commands, but the benchmark's (the `bench` command's own front end)."""
    import ast

    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if name.startswith(("cli", "console", "__main__", "bench/")):
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                yield name, node.lineno, node.value


def test_the_library_names_no_flag() -> None:
    flags = _cli_flags() - {"-h", "--help"}
    found = [f"{name}:{line}: {flag}" for name, line, text in _library_strings()
             for flag in re.findall(r"(?<![\w-])--?[a-z][a-z0-9-]*", text) if flag in flags]
    assert found == [], "name the option with errors.option(...) instead"


def test_every_option_the_library_names_is_a_flag() -> None:
    from specdec_cli.cli_options import FLAGS

    named = {match for path in PACKAGE.rglob("*.py")
             for match in re.findall(r"\boption\([\"'](\w+)[\"']\)", path.read_text())}
    assert named and named <= set(FLAGS), sorted(named - set(FLAGS))
    assert set(FLAGS.values()) <= _cli_flags()


def test_library_messages_read_as_the_cli_spells_them(cli_flag_names) -> None:
    from specdec_cli.chat import ChatSession

    with pytest.raises(UsageError, match="^--max-tokens must be positive"):
        ChatSession(None, sampling=None, draft=None, max_tokens=0)


def test_library_messages_name_library_options() -> None:
    from specdec_cli.chat import ChatSession

    with pytest.raises(UsageError, match="^max_tokens must be positive"):
        ChatSession(None, sampling=None, draft=None, max_tokens=0)


# --- item 5: values that used to end in a traceback -----------------------------------------


@pytest.mark.parametrize("command", ["run", "chat"])
@pytest.mark.parametrize("flag, value", [("--temp", "nan"), ("--temp", "inf"), ("--temp", "-inf"),
                                         ("--top-p", "nan")])
def test_non_finite_sampling_values(run_specdec, command: str, flag: str, value: str) -> None:
    args = ["hi"] if command == "run" else []
    _usage_error(run_specdec(command, *args, flag, value, input="hi\n"), flag)


def test_non_utf8_prompt_argument(specdec_env, tmp_path: Path) -> None:
    _usage_error(_run_bytes(specdec_env, tmp_path, "run", b"\xff\xfe hello"), "UTF-8")


@pytest.mark.parametrize("command", ["run", "chat"])
@pytest.mark.parametrize("flag", ["--system", "--model"])
def test_non_utf8_text_options(specdec_env, tmp_path: Path, command: str, flag: str) -> None:
    args = ["hi"] if command == "run" else []
    _usage_error(_run_bytes(specdec_env, tmp_path, command, *args, flag, b"\xff", input=b"hi\n"), flag, "UTF-8")


def test_non_utf8_stop_string(specdec_env, tmp_path: Path) -> None:
    _usage_error(_run_bytes(specdec_env, tmp_path, "run", "hi", "--stop", b"\xfe"), "--stop", "UTF-8")


# --- item 10: the small ones -----------------------------------------------------------------


def test_too_many_threads(run_specdec) -> None:
    _usage_error(run_specdec("run", "hi", "--threads", "1000"), "--threads", "1000")


@pytest.mark.slow
def test_piped_text_with_an_empty_prompt_argument(run_specdec) -> None:
    result = run_specdec("run", "", *SHORT, "--json", input="What is the capital of France?")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tokens"]


def test_empty_prompt_and_nothing_piped_is_still_an_error(run_specdec) -> None:
    _usage_error(run_specdec("run", "", input=""), "empty")


def test_models_toml_error_names_the_entry(run_specdec, specdec_env) -> None:
    """The entry's name was in brackets, which Rich took for markup and dropped."""
    config = Path(specdec_env["SPECDEC_CONFIG_DIR"])
    config.mkdir(parents=True, exist_ok=True)
    (config / "models.toml").write_text('[models.my-model]\ndescription = "x"\nsource = "ftp"\n')
    result = run_specdec("models", "list")
    _usage_error(result, "[models.my-model]", "source")


@pytest.mark.slow
def test_context_full_is_its_own_finish_reason_with_a_warning(run_specdec) -> None:
    result = run_specdec("run", "Tell me a very long story about a dragon.", "--ctx", "64", "--max-tokens", "1000",
                         "--draft", "none", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["finish_reason"] == "context"
    assert "warning: the context is full" in result.stderr and "--ctx" in result.stderr


@pytest.mark.slow
def test_chat_messages(run_specdec) -> None:
    result = run_specdec("chat", *SHORT, input="/frobnicate\nhi\n/stats\n")
    assert result.returncode == 0, result.stderr
    assert "error: unknown command /frobnicate" in result.stderr
    assert "1 reply," in result.stderr and "1 replies" not in result.stderr


def test_pull_offline_says_nothing_about_downloading(run_specdec) -> None:
    result = run_specdec("models", "pull", "qwen2.5-0.5b", HF_HUB_OFFLINE="1")
    assert result.returncode == 1 and "offline" in result.stderr
    assert "downloading" not in result.stderr


def test_tune_show_reports_a_corrupt_profile(run_specdec, specdec_env, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "profiles").mkdir(parents=True)
    (cache / "profiles" / "0123456789abcdef-x.json").write_text("{not json")
    result = run_specdec("tune", "--show", SPECDEC_CACHE_DIR=str(cache))
    assert result.returncode == 0, result.stderr
    assert "0123456789abcdef-x.json" in result.stdout and "corrupt" in result.stdout
