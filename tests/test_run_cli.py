"""`specdec run` as a user calls it: a subprocess with the real default model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SHORT = ["--max-tokens", "12", "--draft", "none"]


def _error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_prompt_argument_streams_text_only(run_specdec):
    result = run_specdec("run", "Write a haiku about the sea", "--max-tokens", "24")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    # llama.cpp's own log stays off without --verbose
    assert "llama_model_loader" not in result.stderr and "load_tensors" not in result.stderr


def test_verbose_shows_llama_log(run_specdec):
    result = run_specdec("run", "Hi", *SHORT, "--verbose")
    assert result.returncode == 0, result.stderr
    assert "llama" in result.stderr


def test_stdin_prompt_and_dash(run_specdec):
    piped = run_specdec("run", *SHORT, "--json", input="What is the capital of France?")
    dash = run_specdec("run", "-", *SHORT, "--json", input="What is the capital of France?")
    argument = run_specdec("run", "What is the capital of France?", *SHORT, "--json")
    for result in (piped, dash, argument):
        assert result.returncode == 0, result.stderr
    # the same prompt whichever way it came in: the same greedy tokens
    assert json.loads(piped.stdout)["tokens"] == json.loads(argument.stdout)["tokens"]
    assert json.loads(dash.stdout)["tokens"] == json.loads(argument.stdout)["tokens"]


def test_stdin_is_context_and_argument_the_instruction(run_specdec):
    notes = "Meeting notes: the bridge repair starts Monday; the library opens in May."
    both = run_specdec("run", "summarize", *SHORT, "--json", input=notes)
    alone = run_specdec("run", "summarize", *SHORT, "--json")
    assert both.returncode == 0 and alone.returncode == 0, both.stderr + alone.stderr
    n_both = json.loads(both.stdout)["stats"]["n_prompt"]
    n_alone = json.loads(alone.stdout)["stats"]["n_prompt"]
    assert n_both > n_alone + 10  # the notes are in the prompt


def test_json_schema(run_specdec):
    result = run_specdec("run", "Count from one to five.", "--max-tokens", "16", "--json", "--draft", "ngram")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["model"] == "smollm2-135m"
    assert isinstance(doc["text"], str) and doc["text"]
    assert all(isinstance(t, int) for t in doc["tokens"]) and 0 < len(doc["tokens"]) <= 16
    assert doc["finish_reason"] in ("stop", "length")
    stats = doc["stats"]
    for key in ("n_prompt", "n_generated", "prefill_s", "decode_s", "tokens_per_s", "steps", "tokens_per_step",
                "engine", "draft", "tree_size", "accept_rate_by_depth", "draft_ms", "verify_ms", "decode_ms", "kv_cache",
                "kv_bytes"):
        assert key in stats, key
    assert stats["n_generated"] == len(doc["tokens"])
    assert stats["draft"] == "ngram"
    # an end-of-generation token is emitted by its step but is not part of the text
    emitted = stats["n_generated"] + (doc["finish_reason"] == "stop")
    assert stats["tokens_per_step"] == pytest.approx(emitted / stats["steps"], rel=1e-3)
    assert stats["engine"] == "fast"
    assert stats["kv_bytes"] > 0


def test_stats_line_on_stderr(run_specdec):
    result = run_specdec("run", "Say hello.", *SHORT, "--stats")
    assert result.returncode == 0, result.stderr
    assert "tok/s" in result.stderr and "tok/s" not in result.stdout


def test_max_tokens_finish_reason_length(run_specdec):
    result = run_specdec("run", "Write a long story about a dragon.", "--max-tokens", "5", "--json")
    doc = json.loads(result.stdout)
    assert doc["finish_reason"] == "length" and len(doc["tokens"]) == 5


def test_unknown_alias_is_usage_error_with_suggestion(run_specdec):
    result = run_specdec("run", "hi", "-m", "smolm2-135m")
    assert result.returncode == 2
    line = _error_line(result.stderr)
    assert "smolm2-135m" in line and "smollm2-135m" in line
    assert result.stdout == ""


def test_missing_gguf_path(run_specdec, tmp_path: Path):
    result = run_specdec("run", "hi", "-m", str(tmp_path / "nope.gguf"))
    assert result.returncode == 2
    assert "nope.gguf" in _error_line(result.stderr)


def test_corrupt_gguf_is_a_clear_error(run_specdec, tmp_path: Path, smollm2_gguf: Path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(smollm2_gguf.read_bytes()[: 3 * 1024 * 1024])
    result = run_specdec("run", "hi", "-m", str(broken))
    assert result.returncode == 1
    assert "not a valid GGUF" in _error_line(result.stderr)
    assert result.stdout == ""


@pytest.mark.parametrize("args, needle", [
    (["run", ""], "empty"),
    (["run", "   "], "empty"),
    (["run", "hi", "--max-tokens", "0"], "max-tokens"),
    (["run", "hi", "--temp", "-1"], "temp"),
    (["run", "hi", "--top-p", "1.5"], "top-p"),
    (["run", "hi", "--draft", "magic"], "magic"),
    (["run", "hi", "--kv-cache", "q3"], "q3"),
])
def test_bad_values_are_usage_errors(run_specdec, args, needle):
    result = run_specdec(*args)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_empty_stdin_is_usage_error(run_specdec):
    result = run_specdec("run", input="")
    assert result.returncode == 2
    assert "empty" in _error_line(result.stderr)


def test_non_utf8_stdin(run_specdec, specdec_env, tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "specdec_cli", "run"], cwd=tmp_path, env=specdec_env,
                            input=b"caf\xe9 au lait", capture_output=True, timeout=60)
    assert result.returncode == 2
    assert "UTF-8" in _error_line(result.stderr.decode())


def test_prompt_longer_than_context(run_specdec):
    result = run_specdec("run", "word " * 400, "--ctx", "256")
    assert result.returncode == 1
    line = _error_line(result.stderr)
    assert "context" in line and "256" in line


def test_ctrl_c_exits_130_with_partial_output(specdec_env, tmp_path: Path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "specdec_cli", "run", "Write a very long essay about the history of Rome.",
         "--max-tokens", "2000", "--draft", "none"],
        cwd=tmp_path, env=specdec_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.set_blocking(proc.stdout.fileno(), False)
    received = b""
    deadline = time.monotonic() + 120
    while len(received) < 40 and time.monotonic() < deadline:
        chunk = proc.stdout.read()
        if chunk:
            received += chunk
        time.sleep(0.05)
    assert received, "no output before the deadline"
    proc.send_signal(signal.SIGINT)
    rest, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr
    text = (received + rest).decode("utf-8")  # whole characters: the stream is not cut inside one
    assert text.endswith("\n")  # the partial answer is kept, its last line ended
    assert len(text) < 2000  # stopped at Ctrl-C, far short of 2000 tokens


def test_registry_user_override_is_used_by_run(run_specdec, specdec_env, smollm2_gguf: Path):
    config = Path(specdec_env["SPECDEC_CONFIG_DIR"])
    config.mkdir(parents=True, exist_ok=True)
    (config / "models.toml").write_text(
        f'[models.my-smol]\ndescription = "a local copy"\nsource = "path"\npath = "{smollm2_gguf}"\n'
        f'chat_template = "chatml"\n')
    result = run_specdec("run", "hi", *SHORT, "-m", "my-smol", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"] == "my-smol"


def test_models_toml_defaults_apply_unless_a_flag_is_given(run_specdec, specdec_env, smollm2_gguf: Path):
    config = Path(specdec_env["SPECDEC_CONFIG_DIR"])
    config.mkdir(parents=True, exist_ok=True)
    (config / "models.toml").write_text(
        f'[models.my-smol]\ndescription = "with defaults"\nsource = "path"\npath = "{smollm2_gguf}"\n'
        'chat_template = "chatml"\ndefaults = { max_tokens = 3, draft = "ngram", draft_len = 5, temp = 0.7, '
        'seed = 7, system = "Answer in French." }\n')
    result = run_specdec("run", "hi", "-m", "my-smol", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert len(doc["tokens"]) <= 3 and doc["finish_reason"] in ("length", "stop")
    assert (doc["stats"]["draft"], doc["stats"]["draft_len"], doc["stats"]["seed"]) == ("ngram", 5, 7)

    # flags and SPECDEC_ variables win; --raw leaves the default system prompt out
    result = run_specdec("run", "hi", "-m", "my-smol", "--json", "--raw", "--draft-len", "2", "--temp", "0",
                         SPECDEC_MAX_TOKENS="1")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert len(doc["tokens"]) <= 1 and doc["stats"]["draft_len"] == 2 and doc["stats"]["seed"] is None


def test_auto_may_verify_chains_of_64_where_fixed_modes_draft_32(run_specdec):
    # --json stats name the cap each generation ran with: auto's own unless --draft-len is given.
    caps = {}
    for draft in ("auto", "suffix"):
        result = run_specdec("run", "hi", "--max-tokens", "2", "--draft", draft, "--json")
        assert result.returncode == 0, result.stderr
        caps[draft] = json.loads(result.stdout)["stats"]["draft_len"]
    assert caps == {"auto": 64, "suffix": 32}


def test_gguf_path_as_model(run_specdec, smollm2_gguf: Path):
    result = run_specdec("run", "hi", *SHORT, "-m", str(smollm2_gguf), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tokens"]


def test_devices_json(run_specdec):
    result = run_specdec("devices", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["physical_cores"] >= 1 and report["ram_total_bytes"] > 0
    assert "CPUExecutionProvider" in report["onnxruntime_providers"]
    assert any(d["type"] == "CPU" for d in report["llama_devices"])
    assert isinstance(report["has_npu"], bool)


def test_devices_table(run_specdec):
    result = run_specdec("devices")
    assert result.returncode == 0, result.stderr
    for word in ("CPU", "SIMD", "Memory", "llama.cpp", "onnxruntime", "NPU"):
        assert word in result.stdout
