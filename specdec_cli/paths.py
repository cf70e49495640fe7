"""Where specdec keeps its files (CLI.md "Files"): platformdirs, overridable for tests."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def config_dir() -> Path:
    return Path(os.environ.get("SPECDEC_CONFIG_DIR") or platformdirs.user_config_dir("specdec"))


def cache_dir() -> Path:
    """Tuner profiles, recycling matrices, exactness probes, ONNX exports."""
    return Path(os.environ.get("SPECDEC_CACHE_DIR") or platformdirs.user_cache_dir("specdec"))


def data_dir() -> Path:
    """Chat history."""
    return Path(os.environ.get("SPECDEC_DATA_DIR") or platformdirs.user_data_dir("specdec"))
