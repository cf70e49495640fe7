"""From options to a ready Generator (specdec_cli/session.py): values are checked before
the model is loaded, a model's models.toml `defaults` reach the engine unless an option
says otherwise, and the session hands the Generator its policy."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from specdec_cli.errors import UsageError
from specdec_cli.session import RunOptions, learned_path, open_session


@pytest.fixture
def dirs(tmp_path: Path, shared_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Own config dir (returned), the session-wide cache (the default model's probe)."""
    monkeypatch.setenv("SPECDEC_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("SPECDEC_CACHE_DIR", str(shared_cache_dir))
    monkeypatch.setenv("SPECDEC_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "config"


@pytest.mark.parametrize("options, message", [
    (RunOptions(temperature=math.nan), "temperature"),
    (RunOptions(temperature=-0.5), "temperature"),
    (RunOptions(top_p=0.0), "top-p"),
    (RunOptions(top_k=-1), "top-k"),
    (RunOptions(seed=2**64), "seed"),
])
def test_bad_sampling_values_are_refused_before_loading(dirs: Path, options: RunOptions, message: str) -> None:
    # No model is loaded (the fast tier fails any test that loads one); the message is the
    # library's, naming no command-line flag.
    with pytest.raises(UsageError, match=message) as refused:
        open_session(options)
    assert "--" not in str(refused.value)


def test_a_context_past_the_training_context_is_refused_before_loading(dirs: Path) -> None:
    with pytest.raises(UsageError, match="training context") as refused:
        open_session(RunOptions(ctx=100_000))
    assert "8192" in str(refused.value)  # SmolLM2's


def test_an_unknown_model_is_refused_before_loading(dirs: Path) -> None:
    with pytest.raises(UsageError, match="unknown model"):
        open_session(RunOptions(model="no-such-model"))


@pytest.mark.slow
def test_models_toml_defaults_reach_the_engine_and_options_override_them(dirs: Path, smollm2_gguf: Path) -> None:
    dirs.mkdir(parents=True)
    (dirs / "models.toml").write_text(
        f'[models.my-smol]\ndescription = "SmolLM2 with defaults"\nsource = "path"\npath = "{smollm2_gguf}"\n'
        'defaults = { exact = true, draft = "ngram", kv_cache = "q8_0" }\n')

    # Each of the three defaults applies where no option is given, and gives way to one that is.
    # (Exact mode with K/V f16/q8_0 only: that rule is probed already; another would probe again.)
    session = open_session(RunOptions(model="my-smol", ctx=512, history=False, exact=False))
    try:
        assert session.alias == "my-smol" and session.draft.mode == "ngram"
        assert not session.generator.config.exact
        key = session.profile_key
        assert (key.engine, key.kv_k, key.kv_v) == ("fast", "q8_0", "q8_0")
        policy = session.generator.policy  # built here and handed over, with the draft caps
        assert policy is not None and max(policy.tree_sizes) <= session.draft.tree_size

        with pytest.raises(UsageError, match="empty"):
            session.prompt_tokens("  \n")
        with pytest.raises(UsageError):
            session.prompt_tokens("hi", system="be brief", raw=True)  # a system prompt needs the template
        chat = session.prompt_tokens("hi")
        assert len(chat) > len(session.prompt_tokens("hi", raw=True))  # wrapped in the chat template
    finally:
        session.close()
    assert learned_path(key).is_file()  # what the policy learned is kept for the next run

    session = open_session(RunOptions(model="my-smol", ctx=512, history=False, draft="none", kv_k="f16", kv_v="q8_0"))
    try:
        assert session.draft.mode == "none" and session.generator.config.exact
        key = session.profile_key
        assert (key.engine, key.kv_k, key.kv_v) == ("exact", "f16", "q8_0")
    finally:
        session.close()
