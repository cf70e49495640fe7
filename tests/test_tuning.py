"""`specdec tune`'s measurement and profile store (tuning.py): out-of-line sizes measured
again, profiles round-trip and are keyed by engine mode, corrupt ones are rebuilt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from specdec_cli import tuning
from specdec_cli.policy import CostCurve
from specdec_cli.tuning import Profile, ProfileKey, load_profile, save_profile


def test_out_of_line_sizes_are_found() -> None:
    sizes = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16)
    straight = [10.0] + [4.0 + 6.0 * k for k in sizes[1:]]
    assert tuning._out_of_line(sizes, straight) == []
    dipped = list(straight)
    dipped[sizes.index(4)] = 22.0  # 21% low, as a busy machine reads now and then
    assert 4 in tuning._out_of_line(sizes, dipped)


def test_a_noise_dip_is_measured_away_and_a_real_step_is_kept() -> None:
    """The true curve has a real step (16 rows cost less than 15, as repacked weights do);
    the first three readings of 4 rows come out 30% low. Measuring out-of-line sizes again
    corrects 4 and confirms 16."""
    sizes = (1, 2, 3, 4, 6, 8, 12, 15, 16, 24)
    true = {1: 10.0, 2: 19.0, 3: 27.0, 4: 33.0, 6: 45.0, 8: 55.0, 12: 75.0, 15: 90.0, 16: 60.0, 24: 85.0}
    seen = {k: 0 for k in sizes}

    def pair(k: int) -> tuple[float, float]:
        seen[k] += 1
        cost = true[k] * (0.7 if k == 4 and seen[k] <= 3 else 1.0)
        return true[1], cost + true[1]  # (plain step, k-row step + the plain step after it)

    curve, rechecked = tuning.sample_curve(pair, sizes, repeats=3)
    assert 4 in rechecked and 16 in rechecked
    assert curve.at(4) == pytest.approx(true[4], rel=0.02)
    assert curve.at(16) == pytest.approx(true[16]) and curve.at(16) < curve.at(15)


def _key(engine: str = "fast") -> ProfileKey:
    return ProfileKey(fingerprint="cpu", n_threads=2, kv_k="f16", kv_v="f16", engine=engine, model_sha256="0" * 64)


def _profile() -> Profile:
    key = _key()
    return Profile(device_key=key.device_hash, device=key.description, model_sha256="0" * 64,
                   model_path="/m.gguf", n_threads=2, kv_cache="f16", engine="fast", verify_batch=512, quick=True,
                   created=1.5, prefix_tokens=300, rechecked=[4],
                   curve=CostCurve(sizes=[1, 2, 4], ms=[13.0, 21.0, 37.5], depth=300, row_cell_ms=0.0061))


def test_profiles_are_keyed_by_engine_mode() -> None:
    assert _key("fast").path() != _key("exact").path()
    assert "engine=exact" in _key("exact").description


def test_profile_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "profiles" / "p.json"
    save_profile(_profile(), path)
    assert load_profile(path) == _profile()
    assert [p.name for p in path.parent.iterdir()] == ["p.json"]  # no temporary file left behind


@pytest.mark.parametrize("content", ["{not json", json.dumps({"version": 1}), json.dumps([1, 2]),
                                     json.dumps({**_profile().to_json(), "curve": {"sizes": [2, 1], "ms": [1, 2]}})])
def test_corrupt_profile_is_ignored_with_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 content: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(content)
    assert load_profile(path) is None
    assert "corrupt" in capsys.readouterr().err


@pytest.fixture(scope="module")
def smollm2_generator(smollm2_gguf: Path, shared_cache_dir: Path):
    from specdec_cli.generator import Generator
    from specdec_cli.options import EngineConfig

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPECDEC_CACHE_DIR", str(shared_cache_dir))
        gen = Generator(smollm2_gguf, EngineConfig(n_ctx=1024))
        yield gen
        gen.close()


@pytest.mark.slow
def test_measured_profile_drives_the_policy(smollm2_generator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(tuning, "QUICK_SIZES", (1, 2, 4, 8))
    monkeypatch.setattr(tuning, "QUICK_REPEATS", 1)
    gen = smollm2_generator
    path = tmp_path / "p.json"
    path.write_text("garbage")
    policy = tuning.policy_from_profile(load_profile(path), gen.verify_batch, max_tree=16, max_chain=8)
    assert not policy.measured  # fell back to the built-in prior
    assert "rebuilt" in capsys.readouterr().err
    profile = tuning.measure_profile(gen.ctx, _key(), model_path=gen.model_path, n_batch=gen.config.n_batch,
                                     n_seq=gen.config.n_seq_max, verify_batch=gen.verify_batch, n_vocab=gen.n_vocab,
                                     quick=True)
    assert save_profile(profile, path) and load_profile(path) == profile
    assert profile.curve.sizes == [1, 2, 4, 8] and all(ms > 0 for ms in profile.curve.ms)
    # SmolLM2's steps grow by ~6 us per row and context cell (0.006 ms; 2-core CPU): read
    # over the ~700 cells this 1024-token context leaves beyond the curve's 300.
    assert profile.curve.depth == tuning.PREFIX_TOKENS and profile.curve.row_cell_ms > 0
    used = tuning.policy_from_profile(load_profile(path), gen.verify_batch, max_tree=16, max_chain=8)
    assert used.measured and used.curve == profile.curve


@pytest.mark.slow
def test_auto_output_equals_plain(smollm2_generator) -> None:
    from specdec_cli.drafting import DraftSettings

    gen = smollm2_generator
    text = ("Repeat this list exactly: apples, pears, plums, cherries, grapes, lemons, limes, figs. "
            "Now repeat it again: apples, pears, plums, cherries, grapes, lemons, limes, figs.")
    prompt = gen.tokenize(gen.render_chat([("user", text)]))
    plain = gen.generate(prompt, max_tokens=48, draft=DraftSettings(mode="none"))
    auto = gen.generate(prompt, max_tokens=48, draft=DraftSettings(mode="auto", tree_size=16, draft_len=8))
    assert auto.tokens == plain.tokens
    assert auto.stats.draft == "auto"


@pytest.mark.slow
def test_tune_quick_json_cli(run_specdec) -> None:
    result = run_specdec("tune", "--quick", "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["quick"] is True and doc["curve"]["sizes"][0] == 1
    assert len(doc["curve"]["ms"]) == len(doc["curve"]["sizes"]) and min(doc["curve"]["ms"]) > 0
    assert doc["n_threads"] >= 1 and len(doc["model_sha256"]) == 64
    assert doc["engine"] == "fast" and doc["curve"]["ratios"]["1"] == 1.0
    assert doc["curve"]["depth"] == 300 and doc["curve"]["row_cell_ms"] >= 0
    shown = run_specdec("tune", "--show", "--json")
    assert shown.returncode == 0, shown.stderr
    assert any(p["model_sha256"] == doc["model_sha256"] for p in json.loads(shown.stdout))
