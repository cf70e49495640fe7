"""A cache that cannot be written (read-only, full disk) is not an error (issue 18): one
warning, results kept in memory, and no temporary file left behind."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest

from specdec_cli import paths
from specdec_cli.paths import write_cache_file


@pytest.fixture(autouse=True)
def fresh_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths, "_warned_unwritable", False)


def _disk_full(tmp: Path) -> None:
    tmp.write_bytes(b"half a file")
    raise OSError(errno.ENOSPC, "No space left on device", str(tmp))


def test_stores_text_bytes_and_files_written_by_a_function(tmp_path: Path) -> None:
    assert write_cache_file(tmp_path / "a" / "x.json", '{"a": 1}')
    assert write_cache_file(tmp_path / "b.bin", b"\x00\x01")
    assert write_cache_file(tmp_path / "c.bin", lambda tmp: tmp.write_bytes(b"native"))
    assert json.loads((tmp_path / "a" / "x.json").read_text()) == {"a": 1}
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.bin").read_bytes() == b"native"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["b.bin", "c.bin", "x.json"]


def test_full_disk_warns_once_and_leaves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "kept.json").write_text("old")
    assert not write_cache_file(tmp_path / "kept.json", _disk_full)
    assert not write_cache_file(tmp_path / "other.json", _disk_full)
    assert [p.name for p in tmp_path.iterdir()] == ["kept.json"]  # no temporary file, the old file intact
    assert (tmp_path / "kept.json").read_text() == "old"
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "No space left" in err


def test_unwritable_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert not write_cache_file(blocker / "sub" / "x.json", "{}")
    assert "warning: cannot write to specdec's cache" in capsys.readouterr().err


def test_interrupted_write_leaves_nothing(tmp_path: Path) -> None:
    def interrupted(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_cache_file(tmp_path / "x.bin", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_exactness_rule_probed_once_without_a_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from specdec_cli import exactness

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("SPECDEC_CACHE_DIR", str(blocker / "cache"))
    model = tmp_path / "model.gguf"
    model.write_bytes(b"not really a model")
    probes = []
    monkeypatch.setattr(exactness, "probe_exactness",
                        lambda path, verbose=False, n_threads=None, **setting: probes.append(n_threads) or
                        exactness.ExactnessRule(False, 4))
    assert exactness.exactness_rule(model, n_threads=1) == exactness.ExactnessRule(False, 4)
    assert exactness.exactness_rule(model, n_threads=1) == exactness.ExactnessRule(False, 4)
    assert probes == [1]  # kept in memory, and probed with the run's thread count


def test_onnx_export_that_fails_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from specdec_cli.prefill import onnx_prefill
    from specdec_cli.prefill.errors import PrefillUnavailable
    from specdec_cli.prefill.kv_blocks import CacheFormat
    from specdec_cli.prefill.onnx_graph import KVVariant

    monkeypatch.setattr(onnx_prefill, "export_dir", lambda model_path: tmp_path / "onnx")

    def export(model_path, path: Path, data: Path, chunk, kv, quant, progress) -> None:
        path.write_bytes(b"half a graph")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx_prefill, "export_prefill_graph", export)
    f16 = CacheFormat("f16", 64, 0)
    with pytest.raises(PrefillUnavailable, match="No space left"):
        onnx_prefill.exported_graph(tmp_path / "model.gguf", KVVariant(f16, f16))
    assert [p for p in (tmp_path / "onnx").rglob("*")] == []


@pytest.mark.slow
def test_run_with_an_unwritable_cache(specdec_env: dict[str, str], tmp_path: Path) -> None:
    """XDG_CACHE_HOME that cannot hold a folder: the exactness probe, the file hash and the
    recycling matrix all fail to be stored; the run works and says so once."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    env = {key: value for key, value in specdec_env.items() if key != "SPECDEC_CACHE_DIR"}
    result = subprocess.run([sys.executable, "-m", "specdec_cli", "run", "Say hello.", "--exact", "--draft",
                             "recycling", "--max-tokens", "6"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={**env, "XDG_CACHE_HOME": str(blocker / "cache")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "Traceback" not in result.stderr
    assert result.stderr.count("warning: cannot write to specdec's cache") == 1, result.stderr
