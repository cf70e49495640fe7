"""Decode speed next to a CPU hog: `specdec run` (and llama.cpp's own llama-server, given
its binary) idle, then with busy processes on the machine, as on a laptop where something
else always runs.

Each setting runs the same greedy generation once idle and once next to `--hogs` busy
processes (one pure-Python spin loop each, at the benchmark's own niceness), and reports
decode tokens/s and the ratio hog/idle. With one hog on 2 cores the fair share is about
half the machine: a ratio of 0.4 or more is the target (issue 18).

    python bench/contention.py [--max-tokens 64] [--hogs 1] [--llama-server PATH] [--json out.json]
        [--env GOMP_SPINCOUNT=300000]   # e.g. libgomp's own default, i.e. specdec before the fix

On a shared machine run it at low priority (`nice -n 19 python bench/contention.py`): the
runs and the hogs inherit the niceness, so they compete with each other on equal terms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."
HOG = "while True: pass"


@dataclass
class Measurement:
    engine: str  # "specdec" | "llama-server"
    hogs: int
    tokens_per_s: float
    n_generated: int
    wall_s: float  # the whole run: process start, model load, prefill, decode
    others: int  # other runnable processes when it started (not ours, not the hogs): 0 on an idle machine


def runnable_others(n_hogs: int) -> int:
    """Runnable tasks right now (Linux /proc/loadavg), less this script and the hogs."""
    try:
        running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return -1
    return max(0, running - 1 - n_hogs)


@contextmanager
def hogs(count: int):
    procs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(count)]
    try:
        time.sleep(0.5 if count else 0)  # let the scheduler see them as busy
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def run_specdec(args: argparse.Namespace, env: dict[str, str], n_hogs: int) -> Measurement:
    cmd = [sys.executable, "-m", "specdec_cli", "run", PROMPT, "--max-tokens", str(args.max_tokens),
           "--json", "--draft", args.draft]
    if args.model:
        cmd += ["-m", args.model]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    others = runnable_others(n_hogs)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout,
                          cwd=tempfile.gettempdir())
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"specdec run failed ({done.returncode}): {done.stderr.strip()}")
    stats = json.loads(done.stdout)["stats"]
    return Measurement("specdec", n_hogs, stats["tokens_per_s"], stats["n_generated"], round(wall, 2), others)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def llama_server(binary: str, model_path: str, threads: int | None, env: dict[str, str]):
    port = _free_port()
    cmd = [binary, "-m", model_path, "--port", str(port), "-c", "2048"]
    if threads:
        cmd += ["-t", str(threads)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"llama-server did not start ({binary})")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_server(url: str, args: argparse.Namespace, n_hogs: int) -> Measurement:
    body = json.dumps({"prompt": PROMPT, "n_predict": args.max_tokens, "temperature": 0,
                       "cache_prompt": False}).encode()
    request = urllib.request.Request(f"{url}/completion", data=body, headers={"Content-Type": "application/json"})
    others = runnable_others(n_hogs)
    t0 = time.perf_counter()
    with urllib.request.urlopen(request, timeout=args.timeout) as answer:
        doc = json.load(answer)
    timings = doc["timings"]
    return Measurement("llama-server", n_hogs, round(timings["predicted_per_second"], 2),
                       timings["predicted_n"], round(time.perf_counter() - t0, 2), others)


def model_path(args: argparse.Namespace, env: dict[str, str]) -> str:
    cmd = [sys.executable, "-m", "specdec_cli", "models", "path"] + ([args.model] if args.model else ["smollm2-135m"])
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True,
                          cwd=tempfile.gettempdir()).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", help="specdec model alias or .gguf path (default: the registry default)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--draft", default="none", help="specdec --draft (default none: plain decoding)")
    parser.add_argument("--threads", type=int, help="--threads / -t for both engines (default: their own)")
    parser.add_argument("--hogs", type=int, default=1, help="busy processes next to the measured run")
    parser.add_argument("--llama-server", help="path of a llama-server binary to measure the same way")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for specdec (repeatable)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()

    cache = tempfile.mkdtemp(prefix="specdec-contention-")
    env = {**os.environ, "SPECDEC_CACHE_DIR": cache}
    specdec_env = {**env, **dict(item.split("=", 1) for item in args.env)}
    results: list[Measurement] = []
    t_start = time.perf_counter()
    try:
        run_specdec(args, specdec_env, 0)  # warm-up: file hashes, page cache
        for n in (0, args.hogs):
            with hogs(n):
                results.append(run_specdec(args, specdec_env, n))
        if args.llama_server:
            with llama_server(args.llama_server, model_path(args, env), args.threads, env) as url:
                run_server(url, args, 0)  # warm-up
                for n in (0, args.hogs):
                    with hogs(n):
                        results.append(run_server(url, args, n))
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    print(f"{'engine':<14}{'hogs':>5}{'tok/s':>9}{'vs idle':>9}{'tokens':>8}{'wall s':>8}{'others':>8}")
    idle = {m.engine: m.tokens_per_s for m in results if m.hogs == 0}
    for m in results:
        ratio = m.tokens_per_s / idle[m.engine] if idle.get(m.engine) else float("nan")
        print(f"{m.engine:<14}{m.hogs:>5}{m.tokens_per_s:>9.1f}{ratio:>9.2f}{m.n_generated:>8}{m.wall_s:>8.1f}"
              f"{m.others:>8}")
    print("others: other runnable processes when a run started; anything but 0 means the machine was not idle")
    print(f"({time.perf_counter() - t_start:.0f} s in all; {os.cpu_count()} CPUs; extra env: {args.env or 'none'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": args.env, "cpus": os.cpu_count(),
                                               "results": [asdict(m) for m in results]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
