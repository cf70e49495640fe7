"""Where specdec keeps its files (README, "Files"): platformdirs, overridable for tests;
and the one way to write into the cache."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import platformdirs

_warned_unwritable = False


def config_dir() -> Path:
    return Path(os.environ.get("SPECDEC_CONFIG_DIR") or platformdirs.user_config_dir("specdec"))


def cache_dir() -> Path:
    """Tuner profiles, recycling matrices, exactness probes, ONNX exports."""
    return Path(os.environ.get("SPECDEC_CACHE_DIR") or platformdirs.user_cache_dir("specdec"))


def data_dir() -> Path:
    """Chat history."""
    return Path(os.environ.get("SPECDEC_DATA_DIR") or platformdirs.user_data_dir("specdec"))


def write_cache_file(path: Path, content: str | bytes | Callable[[Path], None]) -> bool:
    """Atomically replace `path` in the cache with `content` (text, bytes, or a function
    that writes a given file); True when stored.

    Everything in the cache can be computed again, so a cache that cannot be written (a
    read-only dir, a full disk) is not an error: the first failure in a process prints one
    warning, the caller keeps its result in memory, and no temporary file is left behind."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        tmp = Path(name)
        with os.fdopen(fd, "wb") as handle:
            if not callable(content):
                handle.write(content.encode() if isinstance(content, str) else content)
        if callable(content):
            content(tmp)
        os.replace(tmp, path)
        return True
    except OSError as exc:
        _warn_unwritable(exc)
        return False
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink(missing_ok=True)


def _warn_unwritable(exc: OSError) -> None:
    global _warned_unwritable
    if _warned_unwritable:
        return
    _warned_unwritable = True
    where = exc.filename or cache_dir()
    sys.stderr.write(f"warning: cannot write to specdec's cache ({where}: {exc.strerror or exc}); "
                     f"continuing without it (set SPECDEC_CACHE_DIR to a writable folder)\n")
    sys.stderr.flush()
