"""llama.cpp's OpenMP threads spin 0.1 ms in a barrier, not libgomp's 3 ms, so that a busy
machine does not collapse decoding (issue 18; bench/contention.py measures it). libgomp
reads the setting once, when llama_cpp loads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

# Records GOMP_SPINCOUNT at the moment llama_cpp is imported, and after specdec's import.
SCRIPT = textwrap.dedent("""
    import builtins, json, os
    seen = {}
    real_import = builtins.__import__
    def spy(name, *args, **kwargs):
        if name == "llama_cpp" and "at_load" not in seen:
            seen["at_load"] = os.environ.get("GOMP_SPINCOUNT")
        return real_import(name, *args, **kwargs)
    builtins.__import__ = spy
    import specdec_cli.llama as llama
    seen["after"] = os.environ.get("GOMP_SPINCOUNT")
    seen["ours"] = llama.OMP_SPINCOUNT
    print(json.dumps(seen))
""")


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout)


def test_spin_count_is_set_while_llama_cpp_loads_and_not_passed_on() -> None:
    seen = _probe()
    assert seen["at_load"] == seen["ours"] and int(seen["ours"]) <= 100_000
    assert seen["after"] is None  # child processes (a llama-server peer) keep libgomp's defaults


@pytest.mark.parametrize("env", [{"GOMP_SPINCOUNT": "5"}, {"OMP_WAIT_POLICY": "active"}])
def test_the_users_openmp_settings_win(env: dict[str, str]) -> None:
    seen = _probe(**env)
    assert seen["at_load"] == env.get("GOMP_SPINCOUNT")
