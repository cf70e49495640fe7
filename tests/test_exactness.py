"""The exact mode's rule (specdec_cli/exactness.py; docs/DESIGN.md, Engine modes): probed
once per model file and KV cache, then read from the cache: a user pays for the probe once,
and a changed file or cache type is never served another's rule. The probe itself is
stubbed here (it needs a model: the slow tests run it on the default model)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from specdec_cli import exactness
from specdec_cli.exactness import ExactnessRule, exactness_rule


@pytest.fixture
def probes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[str, str]]]:
    """Records (model file content, KV types) of every probe; the probed rule allows 7
    rows with f16 V and 32 with a quantized V."""
    monkeypatch.setenv("SPECDEC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(exactness, "_probed", {})
    seen: list[tuple[str, tuple[str, str]]] = []

    def probe(path, verbose=False, n_threads=None, *, n_gpu_layers=0, kv_types=("f16", "q8_0")):
        seen.append((Path(path).read_text(), kv_types))
        return ExactnessRule(repacked_weights=False, max_verify_batch=7 if kv_types[1] == "f16" else 32)

    monkeypatch.setattr(exactness, "probe_exactness", probe)
    return seen


def model_file(tmp_path: Path, content: str, name: str = "model.gguf") -> Path:
    path = tmp_path / name
    path.write_text(content)
    return path


def test_probed_once_then_read_from_the_cache(tmp_path: Path, probes, monkeypatch: pytest.MonkeyPatch) -> None:
    model = model_file(tmp_path, "weights A")
    assert exactness_rule(model) == ExactnessRule(False, 32)
    assert exactness_rule(model) == ExactnessRule(False, 32)
    monkeypatch.setattr(exactness, "_probed", {})  # a new process: only the cache file is left
    assert exactness_rule(model) == ExactnessRule(False, 32)
    assert probes == [("weights A", ("f16", "q8_0"))]  # the exact mode's default KV: V q8_0


def test_each_kv_cache_gets_its_own_rule(tmp_path: Path, probes) -> None:
    model = model_file(tmp_path, "weights A")
    assert exactness_rule(model, kv_types=("f16", "f16")).max_verify_batch == 7
    assert exactness_rule(model, kv_types=("q8_0", "q8_0")).max_verify_batch == 32
    assert exactness_rule(model, kv_types=("f16", "f16")).max_verify_batch == 7
    assert [kv for _, kv in probes] == [("f16", "f16"), ("q8_0", "q8_0")]


def test_rules_follow_the_file_content_not_its_name(tmp_path: Path, probes) -> None:
    first = model_file(tmp_path, "weights A")
    exactness_rule(first)
    exactness_rule(model_file(tmp_path, "weights A", name="copy.gguf"))  # same bytes: same rule
    assert len(probes) == 1
    first.write_text("weights B, replaced")
    os.utime(first, ns=(1, 1))  # another mtime, whatever the clock's resolution
    exactness_rule(first)
    assert [content for content, _ in probes] == ["weights A", "weights B, replaced"]


@pytest.mark.parametrize("damage", ["not json", "old version", "missing field"])
def test_an_unreadable_or_outdated_cache_entry_is_probed_again(tmp_path: Path, probes, damage: str) -> None:
    model = model_file(tmp_path, "weights A")
    exactness_rule(model)
    (cached,) = (tmp_path / "cache" / "exactness").iterdir()
    document = json.loads(cached.read_text())
    if damage == "not json":
        cached.write_text("{")
    elif damage == "old version":
        cached.write_text(json.dumps({**document, "version": exactness.RULE_VERSION - 1, "max_verify_batch": 99}))
    else:
        del document["max_verify_batch"]
        cached.write_text(json.dumps(document))
    assert exactness_rule(model) == ExactnessRule(False, 32)
    assert len(probes) == 2
    assert json.loads(cached.read_text())["version"] == exactness.RULE_VERSION  # rewritten
