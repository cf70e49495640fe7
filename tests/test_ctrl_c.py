"""Ctrl-C at any moment exits 130 (issue 18): during model load it used to be raised
inside llama.cpp's log callback, where ctypes printed and dropped it."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

# Ctrl-C arrives while llama.cpp is inside its log callback: the 50th log line of the load
# raises SIGINT in the callback itself, the worst moment.
SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from specdec_cli import llama

    lines = []
    def write(fd, data):
        lines.append(data)
        if len(lines) == 50:
            signal.raise_signal(signal.SIGINT)
        return len(data)

    llama.os.write = write
    try:
        llama.LlamaModel(sys.argv[1], verbose=True)
    except KeyboardInterrupt:
        print("interrupted")
    else:
        print("loaded")
""")


@pytest.mark.slow
def test_ctrl_c_inside_the_log_callback_stops_the_load(smollm2_gguf: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(smollm2_gguf)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.strip() == "interrupted", result.stderr
    assert "Exception ignored" not in result.stderr


@pytest.mark.slow
def test_ctrl_c_during_model_load_exits_130(specdec_env: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "specdec_cli", "run", "Write a long essay about Rome.",
                             "--max-tokens", "500", "--verbose"],
                            cwd=tmp_path, env=specdec_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.monotonic() + 120
    for line in proc.stderr:  # llama.cpp's log (--verbose): the load has started
        seen.append(line)
        if "llama_model_loader" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    stdout, rest = proc.communicate(timeout=120)
    stderr = "".join(seen) + rest
    assert proc.returncode == 130, stderr[-2000:]
    assert "Exception ignored" not in stderr and "Traceback" not in stderr
    assert stdout == ""  # nothing was generated
