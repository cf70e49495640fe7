"""Plain decoding and prefill, specdec against llama-server, alternated in one process.

    python bench/server_ab.py MODEL.gguf LLAMA_SERVER [--rounds 5] [--tokens 64] [--prompt-chars 0]

Each round sends the same prompt token ids to llama-server (its own timings) and to a
Generator with `--draft none`, and prints the ratios: decode tok/s (ours / server) and
time to first token (ours / server's prompt time). `--prompt-chars N` prepends N characters
of README.md, for prefill on a long prompt; each round's prompt starts differently so that
neither side reuses a cached prefix. The finer instrument behind bench/RESULTS.md's parity
figures; `specdec bench` is the full one.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

from specdec_cli.drafting import DraftSettings
from specdec_cli.generator import Generator
from specdec_cli.options import EngineConfig

README = Path(__file__).resolve().parent.parent / "README.md"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def complete(port: int, prompt, n_predict: int) -> dict:
    body = {"prompt": [int(t) for t in prompt], "n_predict": n_predict, "temperature": 0, "top_k": 1,
            "cache_prompt": False}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/completion", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request).read())["timings"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("llama_server")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt-chars", type=int, default=0)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([args.llama_server, "-m", args.model, "--port", str(port), "-t", "2", "-c", "4096",
                               "-np", "1", "--no-webui", "-ctk", "f16", "-ctv", "f16"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    generator = Generator(Path(args.model), EngineConfig(n_ctx=4096, n_threads=2))
    context = README.read_text()[:args.prompt_chars]
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.3)
        decode, ttft = [], []
        for round_ in range(args.rounds):
            question = f"Round {round_}.\n{context}\nWrite a long story about a dragon who learns to cook."
            prompt = generator.tokenize(generator.render_chat([("user", question)]))
            theirs = complete(port, prompt, args.tokens)
            ours = generator.generate(prompt, max_tokens=args.tokens, draft=DraftSettings(mode="none")).stats
            decode.append(ours.tokens_per_s / theirs["predicted_per_second"])
            ttft.append(ours.ttft_s * 1000 / theirs["prompt_ms"])
            print(f"{len(prompt)} prompt tokens: decode {ours.tokens_per_s:.1f} vs {theirs['predicted_per_second']:.1f} "
                  f"tok/s ({decode[-1]:.3f}x), TTFT {ours.ttft_s * 1000:.0f} vs {theirs['prompt_ms']:.0f} ms "
                  f"({ttft[-1]:.3f}x)", flush=True)
        print(f"median: decode {statistics.median(decode):.3f}x, TTFT {statistics.median(ttft):.3f}x llama-server")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
