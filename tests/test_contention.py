"""Decoding next to busy processes (issue 18; bench/contention.py measures it): llama.cpp's
OpenMP threads spin 0.1 ms in a barrier, not libgomp's 3 ms (libgomp reads the setting
once, when llama_cpp loads it), and the default thread count leaves out the cores other
processes keep busy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from specdec_cli import llama

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


def _machine(monkeypatch: pytest.MonkeyPatch, user: float, nice: float, our_niceness: int) -> int:
    """default_threads() on 4 cores / 8 logical CPUs with this much busy time (percent)."""
    import psutil

    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 8 if logical else 4)
    monkeypatch.setattr(psutil, "cpu_times_percent", lambda interval: SimpleNamespace(
        user=user, system=0.0, nice=nice, idle=100.0 - user - nice))
    monkeypatch.setattr(os, "nice", lambda increment: our_niceness)
    llama.default_threads.cache_clear()
    try:
        return llama.default_threads()
    finally:
        llama.default_threads.cache_clear()


@pytest.mark.parametrize("busy_percent, threads", [(0.0, 4), (12.0, 3), (30.0, 2), (95.0, 1)])
def test_default_threads_leave_out_busy_cores(monkeypatch: pytest.MonkeyPatch, busy_percent: float,
                                              threads: int) -> None:
    assert _machine(monkeypatch, user=busy_percent, nice=0.0, our_niceness=0) == threads


def test_niced_load_counts_only_against_a_niced_run(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _machine(monkeypatch, user=0.0, nice=25.0, our_niceness=0) == 4
    assert _machine(monkeypatch, user=0.0, nice=25.0, our_niceness=19) == 2
