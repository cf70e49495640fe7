"""Seeded sampling: the same seed gives the same text with every draft mode (issue 17).

The native sampler is checked against a pure-Python reference of each of its parts:
Philox4x32-10 (Random123's known-answer vectors), the uniform of an output position, the
inverse-CDF draw over the processed distribution, and the sample-and-match walk over a
draft tree. The model tests (slow, exact engine mode) check that 20 prompts give the same
tokens with every `--draft` mode as with `--draft none` and the same seed, also after the
recycling matrix has been trained on other prompts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from specdec_cli import _native as nat
from specdec_cli.drafting import DRAFT_MODES, DraftSettings
from specdec_cli.errors import UsageError
from specdec_cli.generator import Generator
from specdec_cli.options import EngineConfig, SamplingParams

from native_inputs import chi_square_p_value

# --- pure-Python reference -------------------------------------------------------------------------

MASK32 = 0xFFFFFFFF
PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)


def philox4x32_10(counter: list[int], key: list[int]) -> list[int]:
    """Philox4x32-10 (Salmon et al. 2011), written from Random123's philox.h."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for round_ in range(10):
        if round_:
            k0, k1 = (k0 + PHILOX_W[0]) & MASK32, (k1 + PHILOX_W[1]) & MASK32
        p0, p1 = PHILOX_M[0] * c0, PHILOX_M[1] * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & MASK32
    return [c0, c1, c2, c3]


def position_uniform(seed: int, position: int) -> float:
    word = philox4x32_10([position & MASK32, position >> 32, 0, 0], [seed & MASK32, seed >> 32])
    return ((word[1] << 32 | word[0]) >> 11) * 2.0 ** -53


def reference_sample(logits: np.ndarray, temp: float, top_k: int, top_p: float, u: float) -> int:
    """Temperature, top-k, top-p (ties to the lower id), then the token at quantile u with
    the cumulative weights taken in token id order; the same float64 arithmetic as the
    native code, so the results are equal, not just equally distributed."""
    values = [float(x) for x in logits]
    finite = [x for x in values if not math.isnan(x)]
    top = max(finite)
    inv_temp = 1.0 / float(np.float32(temp))
    weight = {t: 0.0 if math.isnan(x) else math.exp((x - top) * inv_temp) for t, x in enumerate(values)}
    kept = sorted(weight)
    if 0 < top_k < len(values):
        ranked = sorted(kept, key=lambda t: (-(-math.inf if math.isnan(values[t]) else values[t]), t))
        kept = sorted(ranked[:top_k])
    if top_p < 1.0:
        target = float(np.float32(top_p)) * sum(weight[t] for t in kept)
        ranked = sorted(kept, key=lambda t: (-weight[t], t))
        mass, size = 0.0, len(ranked)
        for i, t in enumerate(ranked):
            mass += weight[t]
            if mass >= target:
                size = i + 1
                break
        kept = sorted(ranked[:size])
    x = u * sum(weight[t] for t in kept)
    mass, last = 0.0, -1
    for t in kept:
        if weight[t] > 0.0:
            mass += weight[t]
            last = t
            if x < mass:
                return t
    return last


def reference_verify(tokens, parents, logits, params, seed: int, first_position: int) -> tuple[list[int], int]:
    """Sample and match: draw the node's token for its output position; follow the child
    holding it, or stop and emit it."""
    node, path = 0, [0]
    for position in range(first_position, first_position + len(tokens)):
        drawn = reference_sample(logits[node], *params, position_uniform(seed, position))
        children = [c for c in range(len(tokens)) if parents[c] == node and tokens[c] == drawn]
        if not children:
            return path, drawn
        node = children[0]
        path.append(node)
    raise AssertionError("the walk left the tree")


# --- the native sampler against the reference ------------------------------------------------------

# Random123's kat_vectors for philox4x32 10: (counter, key, output).
PHILOX_KAT = [
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([MASK32] * 4, [MASK32] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
]
SEEDS = [0, 1, 7, 2**32 - 1, 2**32, 2**53 + 1, 2**64 - 1]
POSITIONS = [0, 1, 2, 31, 2**32 - 1, 2**32, 2**64 - 1]
PARAMS = [(0.8, 40, 0.9), (1.0, 0, 1.0), (0.5, 0, 0.7), (1.3, 5, 1.0), (0.8, 3, 0.5)]


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_reference_philox_known_answers(counter, key, expected):
    assert philox4x32_10(counter, key) == expected


def test_uniform_is_the_reference_philox_draw():
    rng = np.random.default_rng(1)
    seeds = SEEDS + [int(s) for s in rng.integers(0, 2**63, 5)]
    positions = POSITIONS + [int(t) for t in rng.integers(0, 10_000, 5)]
    for seed in seeds:
        sampler = nat.Sampler(seed)
        assert sampler.seed == seed
        for position in positions:
            assert sampler.uniform(position) == position_uniform(seed, position), (seed, position)


def test_uniforms_look_uniform():
    u = np.array([nat.Sampler(5).uniform(t) for t in range(20_000)])
    assert u.min() >= 0.0 and u.max() < 1.0
    counts = np.bincount((u * 20).astype(int), minlength=20)
    assert chi_square_p_value(counts, np.full(20, 1 / 20)) > 1e-3


def random_row(rng: np.random.Generator, vocab: int, kind: str) -> np.ndarray:
    row = (rng.standard_normal(vocab) * 2).astype(np.float32)
    if kind == "ties":  # many equal logits: top-k and top-p break ties by the lower id
        row = np.round(row).astype(np.float32)
    elif kind == "holes":  # NaN and -inf count as impossible tokens
        row[rng.choice(vocab, vocab // 4, replace=False)] = -np.inf
        row[rng.choice(vocab, 3, replace=False)] = np.nan
    return row


@pytest.mark.parametrize("kind", ["normal", "ties", "holes"])
def test_sample_is_the_reference_inverse_cdf_draw(kind: str):
    rng = np.random.default_rng({"normal": 2, "ties": 3, "holes": 4}[kind])
    for case in range(300):
        row = random_row(rng, int(rng.integers(8, 120)), kind)
        temp, top_k, top_p = PARAMS[case % len(PARAMS)]
        seed, position = int(rng.integers(0, 2**64, dtype=np.uint64)), int(rng.integers(0, 2**40))
        got = nat.Sampler(seed).sample(row, position, temp, top_k, top_p)
        want = reference_sample(row, temp, top_k, top_p, position_uniform(seed, position))
        assert got == want, (case, temp, top_k, top_p, seed, position)


def test_sample_depends_only_on_seed_and_position():
    row = random_row(np.random.default_rng(5), 64, "normal")
    in_order = nat.Sampler(11)
    expected = [in_order.sample(row, t, 0.8, 40, 0.9) for t in range(40)]
    shuffled = nat.Sampler(11)
    order = np.random.default_rng(6).permutation(40)
    got = {int(t): shuffled.sample(row, int(t), 0.8, 40, 0.9) for t in order}
    assert [got[t] for t in range(40)] == expected
    assert len(set(expected)) > 5


def random_tree(rng: np.random.Generator, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, parents, logits) of a tree whose children hold distinct tokens among the 4
    most likely after their parent, so that walks go several nodes deep."""
    tokens, parents = [int(rng.integers(logits.shape[1]))], [-1]
    for node in range(len(logits) - 1):
        parent = int(rng.integers(0, node + 1))
        likely = np.argsort(-logits[parent], kind="stable")[:4]
        taken = {tokens[c] for c in range(len(tokens)) if parents[c] == parent}
        free = [int(t) for t in likely if int(t) not in taken]
        if not free:
            break
        tokens.append(free[int(rng.integers(len(free)))])
        parents.append(parent)
    n = len(tokens)
    return np.array(tokens, dtype=np.int32), np.array(parents, dtype=np.int32), np.ascontiguousarray(logits[:n])


def test_verify_sample_is_the_reference_walk_and_plain_sampling():
    rng = np.random.default_rng(7)
    depths = []
    for case in range(200):
        logits = (rng.standard_normal((int(rng.integers(1, 12)), 32)) * 2).astype(np.float32)
        tokens, parents, logits = random_tree(rng, logits)
        params = PARAMS[case % len(PARAMS)]
        seed, first = int(rng.integers(0, 2**63)), int(rng.integers(0, 1000))
        sampler = nat.Sampler(seed)
        path, bonus = nat.verify_sample(tokens, parents, logits, *params, sampler, first)
        assert (path.tolist(), bonus) == reference_verify(tokens, parents, logits, params, seed, first)
        # Every emitted token is what plain sampling draws at its position from that node's logits.
        emitted = [int(tokens[node]) for node in path[1:]] + [bonus]
        assert emitted == [sampler.sample(logits[node], first + d, *params) for d, node in enumerate(path)]
        depths.append(len(path) - 1)
    assert max(depths) >= 3 and np.mean(depths) > 0.5  # drafts were accepted, some deep


# --- end to end: the same tokens with every draft mode ---------------------------------------------

PROMPTS = [
    "Repeat this sentence twice: the quick brown fox jumps over the lazy dog.",
    "Count from 1 to 30, separated by commas.",
    "List the days of the week, then list them again in reverse order.",
    "Write a haiku about the sea.",
    "What is the capital of France?",
    "Explain photosynthesis in two sentences.",
    "Translate 'good morning, my friend' into French, Spanish and German.",
    "Write a Python function that adds two numbers.",
    "Give three tips for learning to cook.",
    "Why is the sky blue?",
    "Name five animals that live in the ocean.",
    "Spell the word 'banana' letter by letter, twice.",
    "Summarize: The cat sat on the mat. The cat was happy. The mat was red.",
    "What is 12 times 12?",
    "Describe a sunset in one sentence.",
    "Write the alphabet in capital letters.",
    "Tell me a short joke.",
    "What are the three primary colors?",
    "Complete the pattern: red, green, blue, red, green, blue, red,",
    "Write a limerick about a cat.",
]
TRAINING_PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "List ten fruits and their colors.",
    "Explain how a bicycle works.",
    "Repeat the word 'hello' ten times.",
]
NEW_TOKENS = 24
# Small trees and chains keep the test fast (on a CPU a step costs about its rows);
# `auto` chooses its own sizes under these caps.
DRAFTS = {
    "none": DraftSettings(mode="none"),
    "ngram": DraftSettings(mode="ngram", tree_size=1, draft_len=3),
    "suffix": DraftSettings(mode="suffix", tree_size=1, draft_len=3),
    "recycling": DraftSettings(mode="recycling", tree_size=4, draft_len=0),
    "hybrid": DraftSettings(mode="hybrid", tree_size=4, draft_len=3),
    "auto": DraftSettings(mode="auto", tree_size=4, draft_len=3),
}


def sampling(i: int) -> SamplingParams:
    return SamplingParams(temperature=0.8, top_k=40, top_p=0.9, seed=1000 + i)


@pytest.fixture(scope="module")
def smollm2(shared_cache_dir: Path, smollm2_gguf: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPECDEC_CACHE_DIR", str(shared_cache_dir))
        gen = Generator(smollm2_gguf, EngineConfig(n_ctx=1024, exact=True))
        yield gen
        gen.close()


@pytest.fixture(scope="module")
def prompts(smollm2) -> list[np.ndarray]:
    return [smollm2.tokenize(smollm2.render_chat([("user", text)]), special=True) for text in PROMPTS]


@pytest.fixture(scope="module")
def plain(smollm2, prompts) -> list[list[int]]:
    """`--draft none` with each prompt's seed: the tokens every other mode must give."""
    return [smollm2.generate(p, max_tokens=NEW_TOKENS, sampling=sampling(i), draft=DRAFTS["none"]).tokens
            for i, p in enumerate(prompts)]


def check_modes(gen: Generator, prompts, plain, modes: list[str]) -> dict[str, int]:
    """Asserts every mode's tokens equal plain sampling's; returns drafted tokens accepted per mode."""
    accepted = dict.fromkeys(modes, 0)
    for i, prompt in enumerate(prompts):
        for mode in modes:
            result = gen.generate(prompt, max_tokens=NEW_TOKENS, sampling=sampling(i), draft=DRAFTS[mode])
            assert result.tokens == plain[i], f"--draft {mode} changed the text of prompt {i} ({PROMPTS[i]!r})"
            assert result.stats.seed == 1000 + i
            accepted[mode] += round(result.stats.tokens_per_step * result.stats.steps) - result.stats.steps
    return accepted


@pytest.mark.slow
def test_every_draft_mode_samples_the_plain_text(smollm2, prompts, plain):
    assert set(DRAFTS) == set(DRAFT_MODES)
    accepted = check_modes(smollm2, prompts, plain, [m for m in DRAFTS if m != "none"])
    # Speculation really happened: drafted tokens were accepted (not just plain steps).
    assert all(accepted[m] > 0 for m in ("ngram", "suffix", "recycling", "hybrid")), accepted
    # Sampling really happened: the text is not greedy decoding's.
    greedy = smollm2.generate(prompts[3], max_tokens=NEW_TOKENS, draft=DRAFTS["none"])
    assert greedy.stats.seed is None and greedy.tokens != plain[3]


@pytest.mark.slow
def test_same_text_after_the_matrix_learned_other_prompts(smollm2, prompts, plain):
    matrix = smollm2.drafter.matrix
    before = matrix.filled_rows()
    rows = {t: matrix.row(t) for t in range(0, smollm2.n_vocab, 97)}
    for j, text in enumerate(TRAINING_PROMPTS):
        prompt = smollm2.tokenize(smollm2.render_chat([("user", text)]), special=True)
        smollm2.generate(prompt, max_tokens=NEW_TOKENS, draft=DRAFTS["recycling"],
                         sampling=SamplingParams(temperature=1.0, top_k=0, top_p=1.0, seed=j))
    assert matrix.filled_rows() > before or any((matrix.row(t) != r).any() for t, r in rows.items())
    check_modes(smollm2, prompts[:5], plain, ["recycling", "hybrid"])


@pytest.mark.slow
def test_cli_reports_a_drawn_seed_that_repeats_the_run(run_specdec):
    args = ["run", "--json", "--exact", "--temp", "0.8", "--max-tokens", "16", "Name three colors."]
    first = run_specdec(*args, "--draft", "hybrid")
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    seed = doc["stats"]["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**53
    again = run_specdec(*args, "--draft", "none", "--seed", str(seed))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["tokens"] == doc["tokens"]


@pytest.mark.slow
def test_sampled_bench_without_a_seed_reports_equal_outputs(run_specdec, smollm2_gguf: Path, tmp_path: Path):
    """`specdec bench --temp 0.8` with no --seed: one drawn seed for every method (in the
    header), so every method samples plain decoding's text."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"question_id": i, "category": c, "turns": [t]}) for i, (c, t) in
                                 enumerate([("qa", "Name three primary colors."),
                                            ("summarization", "Repeat this list: red, green, blue, red, green.")]))
                       + "\n")
    result = run_specdec("bench", "-m", str(smollm2_gguf), "--prompts", str(prompts), "--methods",
                         "none,ngram:3,suffix:3,hybrid:4:3", "--exact", "--temp", "0.8", "--top-k", "40", "--top-p", "0.9",
                         "--max-tokens", "16", "--no-peers", "--format", "json", "--out", "r.json", "--no-progress",
                         timeout=600)
    assert result.returncode == 0, result.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    assert "temperature 0.8" in doc["header"]["sampling"] and "seed None" not in doc["header"]["sampling"]
    overall = {r["method"]: r for r in doc["results"] if r["category"] == "overall"}
    assert all(overall[m]["same_as_none"] == 2 for m in ("ngram:3", "suffix:3", "hybrid:4:3")), overall
    assert doc["warning"] is None and doc["divergences"] == []


@pytest.mark.parametrize("seed", ["-1", str(2**64), "x"])
def test_cli_rejects_seeds_out_of_range(run_specdec, seed: str):
    result = run_specdec("run", "--temp", "0.8", "--seed", seed, "hi")
    assert result.returncode == 2
    assert "--seed" in result.stderr and "Traceback" not in result.stderr
    if seed != "x":
        assert "0 to 2^64-1" in result.stderr


def test_library_rejects_seeds_out_of_range():
    for seed in (-1, 2**64):
        with pytest.raises(UsageError, match="seed must be an integer from 0 to 2"):
            SamplingParams(temperature=0.8, seed=seed).validate()
    SamplingParams(temperature=0.8, seed=2**64 - 1).validate()
