"""From options to a ready Generator (specdec_cli/session.py): values are checked before
the model is loaded, a model's models.toml `defaults` reach the engine unless an option
says otherwise, and the session hands the Generator its policy."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from specdec_cli.drafting import DraftSettings
from specdec_cli.errors import UsageError
from specdec_cli.models_file import DEFAULTABLE_OPTIONS
from specdec_cli.session import BUILT_IN_DEFAULTS, TOML_KEYS, RunOptions, learned_path, open_session, resolve_options


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


# --- models.toml defaults: the command line, else the model's default, else the built-in one ---


def test_every_defaults_key_is_an_option_with_a_built_in_default() -> None:
    assert {TOML_KEYS.get(name, name) for name in BUILT_IN_DEFAULTS} == set(DEFAULTABLE_OPTIONS)
    assert set(BUILT_IN_DEFAULTS) <= {field.name for field in dataclasses.fields(RunOptions)}


def test_a_given_option_wins_over_the_models_default_which_wins_over_the_built_in() -> None:
    toml = {"temp": 0.7, "draft_len": 5, "ctx": 2048, "threads": 1, "max_tokens": 9, "system": "be brief"}
    resolved = resolve_options(RunOptions(), toml)
    assert (resolved.temperature, resolved.draft_len, resolved.ctx, resolved.threads) == (0.7, 5, 2048, 1)
    assert (resolved.max_tokens, resolved.system) == (9, "be brief")
    assert (resolved.top_k, resolved.draft, resolved.exact) == (40, "auto", False)  # built-in

    given = resolve_options(RunOptions(temperature=0.0, draft_len=0, ctx=512, threads=2, max_tokens=3), toml)
    assert (given.temperature, given.draft_len, given.ctx, given.threads, given.max_tokens) == (0.0, 0, 512, 2, 3)

    # a command's own built-in default (chat's max_tokens) gives way to the model's too
    assert resolve_options(RunOptions(), {}, {"max_tokens": 512}).max_tokens == 512
    assert resolve_options(RunOptions(), {"max_tokens": 9}, {"max_tokens": 512}).max_tokens == 9


def test_a_models_default_outside_its_choices_names_the_entry() -> None:
    with pytest.raises(UsageError, match=r"\[models.x\] sets draft = 'fast'"):
        resolve_options(RunOptions(), {"draft": "fast"}, where="models.toml: [models.x]")


@pytest.mark.parametrize("command", ["run", "chat", "bench"])
def test_the_cli_leaves_unset_options_to_the_model(command: str) -> None:
    """A flag the user did not give reaches the session as None, so that the model's
    default is not beaten by the CLI's; --help still shows the built-in default."""
    import typer

    from specdec_cli.cli import _mount_subcommands, app

    if not any(info.name == "models" for info in app.registered_groups):
        _mount_subcommands()
    params = {param.name: param for param in typer.main.get_command(app).commands[command].params}
    built_in = {**BUILT_IN_DEFAULTS, "max_tokens": {"run": 256, "chat": 512, "bench": 128}[command]}
    for key in DEFAULTABLE_OPTIONS:
        if key in params:
            assert params[key].default is None, (command, key)
            value = built_in[{toml: name for name, toml in TOML_KEYS.items()}.get(key, key)]
            if value is not None and not isinstance(value, bool):
                assert params[key].show_default == str(value), (command, key)


@pytest.mark.slow
def test_models_toml_defaults_reach_the_engine_and_options_override_them(dirs: Path, smollm2_gguf: Path) -> None:
    dirs.mkdir(parents=True)
    (dirs / "models.toml").write_text(
        f'[models.my-smol]\ndescription = "SmolLM2 with defaults"\nsource = "path"\npath = "{smollm2_gguf}"\n'
        'defaults = { exact = true, draft = "ngram", kv_cache = "q8_0", temp = 0.5, draft_len = 5, ctx = 768, '
        'threads = 1, max_tokens = 7 }\n')

    # Each default applies where no option is given, and gives way to one that is.
    # (Exact mode with K/V f16/q8_0 only: that rule is probed already; another would probe again.)
    session = open_session(RunOptions(model="my-smol", ctx=512, history=False, exact=False))
    try:
        assert session.alias == "my-smol" and session.draft.mode == "ngram"
        assert not session.generator.config.exact
        assert session.sampling.temperature == 0.5 and session.draft.draft_len == 5
        assert session.generator.ctx.n_ctx == 512 and session.generator.ctx.n_threads == 1
        assert session.options.max_tokens == 7
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

    session = open_session(RunOptions(model="my-smol", history=False, draft="none", kv_k="f16", kv_v="q8_0",
                                      temperature=0.0, draft_len=2, threads=2, max_tokens=3))
    try:
        assert session.draft.mode == "none" and session.generator.config.exact
        assert session.sampling.greedy and session.draft.draft_len == 2 and session.options.max_tokens == 3
        assert session.generator.ctx.n_ctx == 768 and session.generator.ctx.n_threads == 2
        key = session.profile_key
        assert (key.engine, key.kv_k, key.kv_v) == ("exact", "f16", "q8_0")
    finally:
        session.close()


@pytest.mark.slow
def test_the_context_has_a_sequence_per_tree_branch_and_no_more(dirs: Path) -> None:
    """llama.cpp books every KV cell into each sequence of the context (45 us per one-row
    step on SmolLM2 with 64 against 1): a session opens as many as its largest tree has
    branches, and a generation asking for a larger tree is refused naming the option."""
    session = open_session(RunOptions(tree_size=4, history=False, max_tokens=4))
    try:
        assert session.generator.config.n_seq_max == 4
        tokens = session.prompt_tokens("Count to five.")
        for tree in (1, 4):
            assert session.generator.generate(tokens, max_tokens=4, draft=DraftSettings("recycling", tree, 0)).tokens
        with pytest.raises(UsageError, match="tree_size 8 is more than the 4 branches"):
            session.generator.generate(tokens, max_tokens=4, draft=DraftSettings("recycling", 8, 0))
    finally:
        session.close()
    # The bench opens one session for all its methods: room for the largest tree, while
    # methods without their own size keep the default caps.
    session = open_session(RunOptions(largest_tree=32, history=False, max_tokens=4))
    try:
        assert session.generator.config.n_seq_max == 32 and session.draft.tree_size == DraftSettings.tree_size
        tokens = session.prompt_tokens("Count to five.")
        assert session.generator.generate(tokens, max_tokens=4, draft=DraftSettings("recycling", 32, 0)).tokens
    finally:
        session.close()
