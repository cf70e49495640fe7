"""Plain decoding and prefill, specdec against llama-server, alternated in one process.

    python bench/server_ab.py MODEL.gguf LLAMA_SERVER [--rounds 5] [--tokens 64] [--prompt-chars 0]

Each round sends the same prompt token ids to llama-server (its own timings) and to a
Generator with `--draft none`, and prints the ratios: decode tok/s (ours / server) and
time to first token (ours / server's prompt time). `--prompt-chars N` prepends N characters
of README.md, for prefill on a long prompt; each round's prompt starts differently, so both
reuse only the chat template's opening tokens from their caches. The finer instrument behind
bench/RESULTS.md's parity figures; `specdec bench` is the full one.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from specdec_cli.bench.run_server import LlamaServer
from specdec_cli.drafting import DraftSettings
from specdec_cli.generator import Generator
from specdec_cli.options import EngineConfig

README = Path(__file__).resolve().parent.parent / "README.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("llama_server")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt-chars", type=int, default=0)
    args = parser.parse_args()
    server = LlamaServer(Path(args.llama_server), Path(args.model), None, n_threads=2, n_ctx=4096, kv=("f16", "f16"))
    generator = Generator(Path(args.model), EngineConfig(n_ctx=4096, n_threads=2))
    context = README.read_text()[:args.prompt_chars]
    try:
        decode, ttft = [], []
        for round_ in range(args.rounds):
            question = f"Round {round_}.\n{context}\nWrite a long story about a dragon who learns to cook."
            prompt = generator.tokenize(generator.render_chat([("user", question)]))
            theirs = server.complete([int(t) for t in prompt], args.tokens)["timings"]
            ours = generator.generate(prompt, max_tokens=args.tokens, draft=DraftSettings(mode="none")).stats
            decode.append(ours.tokens_per_s / theirs["predicted_per_second"])
            ttft.append(ours.ttft_s * 1000 / theirs["prompt_ms"])
            print(f"{len(prompt)} prompt tokens: decode {ours.tokens_per_s:.1f} vs {theirs['predicted_per_second']:.1f} "
                  f"tok/s ({decode[-1]:.3f}x), TTFT {ours.ttft_s * 1000:.0f} vs {theirs['prompt_ms']:.0f} ms "
                  f"({ttft[-1]:.3f}x)", flush=True)
        print(f"median: decode {statistics.median(decode):.3f}x, TTFT {statistics.median(ttft):.3f}x llama-server")
    finally:
        generator.close()
        server.close()


if __name__ == "__main__":
    main()
