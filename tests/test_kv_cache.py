"""Quantized KV cache: every type runs end to end, speculation stays lossless with each
type (speculative output == plain output with the same cache type), bad type names are
usage errors, and an 8k-token prompt fits a q4_0 cache on the default model."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from specdec_cli.drafting import DraftSettings
from specdec_cli.errors import UsageError
from specdec_cli.generator import Generator
from specdec_cli.options import EngineConfig
from specdec_cli.session import RunOptions, kv_cache_types, resolve_options

NEW_TOKENS = 40
SPECULATIVE = [("ngram", 1, 8), ("hybrid", 10, 6)]


def test_kv_types_resolve_in_order():
    # the engine mode's default: f16/f16 fast, V q8_0 exact (options.default_kv_types)
    assert kv_cache_types(RunOptions(exact=False)) == ("f16", "f16")
    assert kv_cache_types(RunOptions(exact=True)) == ("f16", "q8_0")
    toml = {"kv_cache": "q4_0"}  # a models.toml default
    assert kv_cache_types(resolve_options(RunOptions(exact=True), toml)) == ("q4_0", "q4_0")
    assert kv_cache_types(resolve_options(RunOptions(kv_cache="f16", exact=True), toml)) == ("f16", "f16")
    assert kv_cache_types(resolve_options(RunOptions(kv_k="f16", exact=True), toml)) == ("f16", "q4_0")
    assert kv_cache_types(RunOptions(kv_cache="q8_0", kv_v="q4_0", exact=False)) == ("q8_0", "q4_0")
    assert kv_cache_types(RunOptions(kv_k="q4_0", exact=True)) == ("q4_0", "q8_0")
    with pytest.raises(UsageError, match="kv_k"):
        kv_cache_types(RunOptions(kv_k="q3_k", exact=False))
    with pytest.raises(UsageError, match="models.toml"):
        resolve_options(RunOptions(), {"kv_cache": "fp8"})


@pytest.mark.parametrize("flag,value", [("--kv-cache", "q3_k"), ("--kv-k", "F16"), ("--kv-v", "bf16")])
def test_bad_kv_type_is_a_usage_error(run_specdec, flag: str, value: str):
    result = run_specdec("run", flag, value, "hello")
    assert result.returncode == 2, result.stderr
    assert value in result.stderr and result.stdout == ""


@pytest.mark.slow
def test_each_kv_type_runs_end_to_end(run_specdec):
    kv_bytes = {}
    for kv in ("f16", "q8_0", "q4_0"):
        result = run_specdec("run", "--kv-cache", kv, "--json", "--max-tokens", "12", "--draft", "none",
                             "--raw", "Name three colours: red,")
        assert result.returncode == 0, result.stderr
        stats = json.loads(result.stdout)["stats"]
        assert stats["kv_cache"] == kv and stats["n_generated"] > 0
        # per cell: outputs may end at different lengths (bench/kv_quality.py has the 8k ratios)
        kv_bytes[kv] = stats["kv_bytes"] / (stats["n_prompt"] + stats["n_generated"])
    assert kv_bytes["f16"] > kv_bytes["q8_0"] > kv_bytes["q4_0"] > 0, kv_bytes

    mixed = run_specdec("run", "--kv-k", "q4_0", "--kv-v", "f16", "--json", "--max-tokens", "4", "Hi")
    assert mixed.returncode == 0, mixed.stderr
    assert json.loads(mixed.stdout)["stats"]["kv_cache"] == "q4_0/f16"


def _prompts(gen: Generator) -> list[np.ndarray]:
    rows = [json.loads(line) for line in
            files("specdec_cli").joinpath("data/spec_bench_public.jsonl").read_text().splitlines()]
    texts = [next(r for r in rows if r["category"] == c)["turns"][0] for c in ("coding", "extraction")]
    # a long one: past 512 cells, where attention kernels change (EngineConfig's comment)
    texts.append(next(r["turns"][0] for r in rows if r["category"] == "summarization"
                      and 600 < len(gen.tokenize(r["turns"][0])) < 900))
    return [gen.tokenize(gen.render_chat([("user", t)]), special=True) for t in texts]


@pytest.fixture(scope="module")
def isolated_cache(shared_cache_dir: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPECDEC_CACHE_DIR", str(shared_cache_dir))
        yield


@pytest.mark.slow
@pytest.mark.parametrize("kv_k,kv_v", [("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q4_0", "q8_0")])
def test_greedy_lossless_per_kv_type(smollm2_gguf: Path, isolated_cache, kv_k: str, kv_v: str):
    gen = Generator(smollm2_gguf, EngineConfig(n_ctx=2048, exact=True, kv_k=kv_k, kv_v=kv_v))
    try:
        prompts = _prompts(gen)
        assert len(prompts[-1]) > 512
        for prompt in prompts:
            plain = gen.generate(prompt, max_tokens=NEW_TOKENS, draft=DraftSettings(mode="none"))
            for mode, tree, chain in SPECULATIVE:
                spec = gen.generate(prompt, max_tokens=NEW_TOKENS,
                                    draft=DraftSettings(mode=mode, tree_size=tree, draft_len=chain))
                assert spec.tokens == plain.tokens, f"{mode} with K={kv_k} V={kv_v}, {len(prompt)} prompt tokens"
        # chat prefix reuse: a second turn on the same cache prefills only the new tokens
        follow = np.concatenate([prompts[0], gen.tokenize(" Thanks.", special=False)])
        again = gen.generate(follow, max_tokens=8, draft=DraftSettings(mode="hybrid", tree_size=10, draft_len=6))
        assert again.stats.n_prompt_prefilled < len(follow)
    finally:
        gen.close()


# SmolLM2-135M: 30 layers x (K + V) x 3 KV heads x 64 dims x 2 bytes per cell at f16.
SMOLLM2_F16_BYTES_PER_CELL = 30 * 2 * 3 * 64 * 2


@pytest.mark.slow
def test_8k_prompt_with_q4_0_cache(run_specdec, smollm2_gguf: Path):
    """~8000 prompt tokens, in a context of SmolLM2's trained 8192 positions (a larger
    --ctx is refused: it would only buy memory).

    The slowest test of the suite (several minutes on 2 cores): with a quantized cache,
    ggml's CPU flash attention takes its one-row-at-a-time kernel, whose prefill cost grows
    with the square of the prompt (bench/RESULTS.md, "KV cache")."""
    sentences = [f"Note {i}: the parcel for house {i * 3} goes out on day {i % 28 + 1}." for i in range(372)]
    text = " ".join(sentences) + "\n\nWhich day does the parcel for house 30 go out?"
    result = run_specdec("run", "--kv-cache", "q4_0", "--ctx", "8192", "--json", "--raw", "--max-tokens", "8",
                         input=text, timeout=1500)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)["stats"]
    assert 7500 <= stats["n_prompt"] <= 8192 - 8, stats["n_prompt"]
    assert stats["kv_cache"] == "q4_0" and stats["n_generated"] > 0
    cells = stats["n_prompt"] + stats["n_generated"]
    assert stats["kv_bytes"] <= 0.32 * SMOLLM2_F16_BYTES_PER_CELL * cells, stats["kv_bytes"] / cells
