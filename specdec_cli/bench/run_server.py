"""llama.cpp's own `llama-server` as a peer: one child process per `--spec-type`, all
started up front, so that server methods interleave per prompt with ours.

Every server gets the prompt as the same token ids our engine decodes (no template or
tokenizer of its own in between), greedy, and is timed by its own reported `timings`:
`predicted_per_second` is metrics.py's decode rate, `prompt_ms` its TTFT. Its prompt
cache holds one prompt, so the first request of a prompt is a full prefill; that TTFT is
kept for the prompt's repeats.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil

from ..errors import SpecdecError
from ..metrics import server_rows_per_token, server_tokens_per_step
from .methods import MethodSpec
from .samples import Run

WARMUP_TOKENS = 8
READY_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post_json(url: str, doc: dict, timeout: float) -> dict:
    request = urllib.request.Request(url, data=json.dumps(doc).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _die_with(parent: int) -> Callable[[], None]:
    """Run in the child before exec: ask Linux to send it SIGTERM when the bench process
    dies (PR_SET_PDEATHSIG, prctl(2)). A bench killed by a signal runs no `finally`, and
    its llama-server children would otherwise keep their ports and cores."""
    def tie() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the bench died before the tie was made
            os._exit(1)
    return tie


def start_child(args: list[str], **popen_args) -> subprocess.Popen:
    """A child process that does not outlive the bench (on Linux; elsewhere a plain
    Popen, and a killed bench leaves its children to the user)."""
    tie = _die_with(os.getpid()) if sys.platform.startswith("linux") else None
    return subprocess.Popen(args, preexec_fn=tie, **popen_args)


def server_version(binary: Path) -> str:
    """`llama-server --version`'s line naming the build, for the report header."""
    try:
        done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return next((line for line in lines if line.startswith("version")), lines[0] if lines else "unknown")


class LlamaServer:
    """A llama-server child process on 127.0.0.1 with a free port, for one --spec-type."""

    def __init__(self, binary: Path, model_path: Path, spec_type: str | None, n_threads: int, n_ctx: int,
                 kv: tuple[str, str]):
        self.port = _free_port()
        args = [str(binary), "-m", str(model_path), "--host", "127.0.0.1", "--port", str(self.port),
                "-t", str(n_threads), "-c", str(n_ctx), "-np", "1", "--no-webui",
                "-ctk", kv[0], "-ctv", kv[1]]
        if spec_type:
            args += ["--spec-type", spec_type]
        self.log = tempfile.TemporaryFile()
        self.process = start_child(args, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self._wait_ready(READY_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SpecdecError(f"llama-server exited with code {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise SpecdecError(f"llama-server did not become ready within {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-800:].decode("utf-8", "replace").strip()

    def complete(self, tokens: list[int], max_tokens: int) -> dict:
        try:
            return _post_json(self.url + "/completion", {
                "prompt": tokens, "n_predict": max_tokens, "temperature": 0.0, "top_k": 1, "cache_prompt": True,
                "return_tokens": True, "ignore_eos": False}, timeout=900)
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError) as exc:
            raise SpecdecError(f"llama-server on port {self.port} failed: {exc}; its log: {self.log_tail()}") from None

    def rss_bytes(self) -> int:
        return psutil.Process(self.process.pid).memory_info().rss

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class ServerRunner:
    family = "server"

    def __init__(self, binary: Path, model_path: Path, methods: list[MethodSpec], n_threads: int, n_ctx: int,
                 kv: tuple[str, str], max_tokens: int, is_eog: Callable[[int], bool]):
        self.max_tokens = max_tokens
        self.is_eog = is_eog
        self.servers: dict[str, LlamaServer] = {}
        self._ttft: dict[str, float] = {}  # per server: the current prompt's full-prefill TTFT
        try:
            for spec in methods:
                self.servers[spec.name] = LlamaServer(binary, model_path, spec.spec_type, n_threads, n_ctx, kv)
        except BaseException:
            self.close()
            raise

    def warm_up(self, tokens, text: str, methods: list[MethodSpec]) -> None:
        for spec in methods:
            self.servers[spec.name].complete([int(t) for t in tokens], WARMUP_TOKENS)

    def start_prompt(self, tokens, text: str) -> None:
        self._ttft.clear()

    def run(self, spec: MethodSpec, tokens, text: str) -> Run:
        server = self.servers[spec.name]
        doc = server.complete([int(t) for t in tokens], self.max_tokens)
        timings = doc.get("timings", {})
        n = int(timings.get("predicted_n") or 0)
        ttft = self._ttft.setdefault(spec.name, float(timings.get("prompt_ms") or 0.0) / 1000)
        accepted = timings.get("draft_n_accepted")
        out = [int(t) for t in doc.get("tokens", [])]
        if out and self.is_eog(out[-1]):
            out.pop()  # the server lists the end-of-generation token; our outputs end before it
        return Run(tokens=out, text=doc.get("content", ""), n_generated=len(out),
                   tokens_per_s=float(timings.get("predicted_per_second") or 0.0), ttft_s=ttft,
                   e2e_s=ttft + float(timings.get("predicted_ms") or 0.0) / 1000,
                   tokens_per_step=server_tokens_per_step(n, int(accepted or 0)) if n else None,
                   rows_per_token=server_rows_per_token(n, int(timings.get("draft_n") or 0), int(accepted or 0))
                   if n else None,
                   rss_bytes=server.rss_bytes())

    def close(self) -> None:
        for server in self.servers.values():
            server.close()
