"""Decoding next to busy processes (issue 18; bench/contention.py measures it): on a machine
that is busy when specdec starts, llama.cpp's OpenMP threads spin 0.1 ms in a barrier, not
libgomp's 3 ms (libgomp reads the setting once, when llama_cpp loads it); on an idle one
libgomp's default stays (it is what keeps decoding as fast as llama-server); and the default
thread count leaves out the cores other processes keep busy."""

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
# BUSY_PERCENT stands in for the CPU time other processes use.
SCRIPT = textwrap.dedent("""
    import builtins, json, os, types
    import psutil
    busy = float(os.environ["BUSY_PERCENT"])
    before = psutil.cpu_times()
    def cpu_times():  # each call: 1 s more, `busy` percent of it spent in user time
        cpu_times.calls += 1
        return types.SimpleNamespace(_fields=("user", "idle"), user=before.user + cpu_times.calls * busy,
                                     idle=before.idle + cpu_times.calls * (100.0 - busy))
    cpu_times.calls = 0
    psutil.cpu_times = cpu_times
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


def _probe(busy_percent: float = 100.0, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env={**clean, **env, "BUSY_PERCENT": str(busy_percent)},
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout)


def test_a_busy_machine_gets_the_short_spin_while_llama_cpp_loads_and_not_passed_on() -> None:
    seen = _probe(busy_percent=100.0)
    assert seen["at_load"] == seen["ours"] and int(seen["ours"]) <= 100_000
    assert seen["after"] is None  # child processes (a llama-server peer) keep libgomp's defaults


def test_an_idle_machine_keeps_libgomps_spin() -> None:
    seen = _probe(busy_percent=0.0)
    assert seen["at_load"] is None and seen["after"] is None


@pytest.mark.parametrize("env", [{"GOMP_SPINCOUNT": "5"}, {"OMP_WAIT_POLICY": "active"}])
def test_the_users_openmp_settings_win(env: dict[str, str]) -> None:
    seen = _probe(**env)
    assert seen["at_load"] == env.get("GOMP_SPINCOUNT")


def _machine(monkeypatch: pytest.MonkeyPatch, user: float, nice: float, our_niceness: int) -> int:
    """default_threads() on 4 cores / 8 logical CPUs with this much busy time (percent)."""
    import psutil

    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 8 if logical else 4)
    monkeypatch.setattr(llama, "busy_time_percent", lambda interval: {
        "user": user, "system": 0.0, "nice": nice, "idle": 100.0 - user - nice})
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


def test_the_busy_sample_sees_a_busy_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two counter reads 0.1 s apart; psutil's cpu_times_percent read <= 20% here when both
    cores were busy."""
    import psutil

    reads = iter([SimpleNamespace(_fields=("user", "nice", "idle"), user=100.0, nice=0.0, idle=50.0),
                  SimpleNamespace(_fields=("user", "nice", "idle"), user=100.2, nice=0.0, idle=50.0)])
    monkeypatch.setattr(psutil, "cpu_times", lambda: next(reads))
    assert llama.busy_time_percent(0.0) == {"user": 100.0, "nice": 0.0, "idle": 0.0}


def test_niced_load_counts_only_against_a_niced_run(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _machine(monkeypatch, user=0.0, nice=25.0, our_niceness=0) == 4
    assert _machine(monkeypatch, user=0.0, nice=25.0, our_niceness=19) == 2
