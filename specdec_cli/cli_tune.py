"""`specdec tune`: measure this device's verification cost curve for a model and store it
as the profile `--draft auto` uses, with llama.cpp's prefill timed against ONNX's (which
`--prefill auto` uses) when the model's ONNX graph is exported; `--show` lists the stored
profiles."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from . import cli_options as opt
from .console import stdout_console
from .errors import SpecdecError

if TYPE_CHECKING:
    from .tuning import Profile

Quick = Annotated[bool, typer.Option("--quick", envvar="SPECDEC_QUICK",
                                     help="Fewer sizes and repeats: the cost curve in under 10 s.")]
Show = Annotated[bool, typer.Option("--show", envvar="SPECDEC_SHOW", help="Print the stored profiles instead of measuring.")]
MeasurePrefill = Annotated[bool, typer.Option(
    "--measure-prefill", envvar="SPECDEC_MEASURE_PREFILL",
    help="Time ONNX prefill against llama.cpp's, exporting the model's ONNX graph first if need be (without it: "
         "only when the graph is already exported); --prefill auto then uses ONNX at the prompt lengths where it "
         "was measured 10% faster or more.")]


def tune(
    model: opt.Model = None,
    quick: Quick = False,
    show: Show = False,
    measure_prefill: MeasurePrefill = False,
    kv_cache: opt.KvCache = None,
    kv_k: opt.KvK = None,
    kv_v: opt.KvV = None,
    threads: opt.Threads = None,
    gpu_layers: opt.GpuLayers = "auto",
    exact: opt.Exact = None,
    as_json: opt.Json = False,
    verbose: opt.Verbose = False,
) -> None:
    """Measure the cost of verifying k tokens at once on this device (used by --draft auto)."""
    if show:
        _show(as_json)
        return
    from .cli_progress import assembly_progress
    from .session import RunOptions, open_session
    from .tuning import TUNE_CONTEXT, measure_profile, save_profile

    session = open_session(RunOptions(model=model, ctx=TUNE_CONTEXT, threads=threads, kv_cache=kv_cache, kv_k=kv_k,
                                      kv_v=kv_v, verbose=verbose, exact=exact, gpu_layers=gpu_layers),
                           progress=assembly_progress(True))
    generator = session.generator
    try:
        prefiller = _prefiller(generator, measure_prefill)  # before minutes of measuring: it can refuse
        t0 = time.perf_counter()
        profile = measure_profile(generator.ctx, session.profile_key, model_path=generator.model_path,
                                  n_batch=generator.config.n_batch, n_seq=generator.config.n_seq_max,
                                  verify_batch=generator.verify_batch, n_vocab=generator.n_vocab, quick=quick)
        if prefiller is not None:
            profile.prefill = _time_prefill(generator, prefiller, quick)
        elapsed = time.perf_counter() - t0
    finally:
        generator.close()
    path = session.profile_key.path()
    stored = save_profile(profile, path)
    if as_json:
        doc = _profile_doc(profile)
        doc["model"] = session.alias
        doc["seconds"] = round(elapsed, 3)
        doc["plain_reason"] = generator.plain_reason  # measured anyway; `auto` will not use the curve
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        out = stdout_console()
        out.print(f"[bold]{session.alias}[/bold] on {profile.device} ({_where(profile)}, "
                  f"verify batch {profile.verify_batch}), "
                  f"measured in {elapsed:.1f}s"
                  + (f"; measured again: k = {', '.join(map(str, profile.rechecked))}" if profile.rechecked else ""))
        out.print(_curve_table(profile))
        out.print(_depth_line(profile))
        _print_prefill(out, profile)
        if generator.plain_reason:
            out.print(f"note: {escape(generator.plain_reason)}")
    if not stored:  # storing it is what tune is for; the warning said why it failed
        raise SpecdecError(f"the profile could not be stored in {path.parent}")


def _show(as_json: bool) -> None:
    from .tuning import stored_profiles  # loads llama.cpp: not for every command's start-up

    entries = stored_profiles()
    if as_json:
        docs = [_profile_doc(p) | {"path": str(path)} for path, p in entries if p is not None]
        sys.stdout.write(json.dumps(docs) + "\n")
        return
    out = stdout_console()
    if not entries:
        out.print("no stored profiles (run `specdec tune`)")
        return
    for path, profile in entries:
        if profile is None:
            out.print(f"[bold]{path.name}[/bold]  corrupt: ignored, the next `specdec tune` rebuilds it")
            continue
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(profile.created))
        out.print(f"[bold]{path.name}[/bold]  {profile.model_path}\n  {profile.device}, {_where(profile)}, {when}"
                  f"{' (quick)' if profile.quick else ''}")
        out.print(_curve_table(profile))
        out.print(_depth_line(profile))
        _print_prefill(out, profile)


def _prefiller(generator, export: bool):
    """The ONNX prefiller to time (prefill/measured.py), or None; --measure-prefill on a
    model that ONNX prefill cannot run is a one-line error."""
    from .prefill import PrefillUnavailable
    from .prefill.measured import tune_prefiller
    from .prefill.progress import export_progress

    try:
        return tune_prefiller(generator.model_path, (generator.config.kv_k, generator.config.kv_v), export=export,
                              n_threads=generator.ctx.n_threads, progress=export_progress())
    except PrefillUnavailable as exc:
        raise SpecdecError(f"--measure-prefill: {exc}") from None


def _time_prefill(generator, prefiller, quick: bool):
    from .prefill.measured import QUICK_REPEATS, TUNE_LENGTHS, TUNE_REPEATS, measure_prefill

    sys.stderr.write(f"timing prefill, llama.cpp and ONNX, at {' and '.join(map(str, TUNE_LENGTHS))} "
                     f"prompt tokens ...\n")
    sys.stderr.flush()
    return measure_prefill(generator.ctx, prefiller, n_seq=generator.config.n_seq_max, n_vocab=generator.n_vocab,
                           repeats=QUICK_REPEATS if quick else TUNE_REPEATS)


def _print_prefill(out, profile: Profile) -> None:
    speed = profile.prefill
    if speed is None:
        out.print("prefill: not timed (`specdec tune --measure-prefill` times ONNX prefill against llama.cpp's)")
        return
    table = Table(show_edge=False)
    table.add_column("prompt tokens", justify="right")
    table.add_column("llama.cpp ms/token", justify="right")
    table.add_column(f"ONNX ({speed.provider.removesuffix('ExecutionProvider')}) ms/token", justify="right")
    table.add_column("ONNX / llama.cpp", justify="right")
    table.add_column("--prefill auto uses", justify="right")
    for n, llama, onnx, ratio, uses in zip(speed.lengths, speed.llama_ms, speed.onnx_ms, speed.ratios(),
                                           _auto_choices(speed)):
        table.add_row(str(n), f"{llama:.3f}", f"{onnx:.3f}", f"{ratio:.2f}x",
                      {"onnx": "ONNX", "loaded": "llama.cpp, ONNX once loaded", "llama": "llama.cpp"}[uses])
    out.print(table)
    out.print(f"loading the ONNX graph takes {speed.onnx_load_ms / 1000:.1f}s, paid by the first prompt that uses it")


def _auto_choices(speed) -> list[str]:
    """What `--prefill auto` uses at each measured length: "onnx" (even paying for loading
    the graph, as a one-shot `run` does), "loaded" (ONNX only once the graph is loaded),
    "llama"."""
    return ["onnx" if speed.onnx_faster(n, loaded=False) else "loaded" if speed.onnx_faster(n) else "llama"
            for n in speed.lengths]


def _where(profile: Profile) -> str:
    return f"{profile.backend}, {profile.gpu_layers} GPU layers" if profile.gpu_layers else "CPU"


def _profile_doc(profile: Profile) -> dict:
    doc = profile.to_json()
    doc["curve"]["ratios"] = {str(k): v for k, v in profile.curve.ratios().items()}
    if profile.prefill is not None:
        doc["prefill"]["auto"] = _auto_choices(profile.prefill)
    return doc


def _curve_table(profile: Profile) -> Table:
    table = Table(show_edge=False)
    table.add_column("k", justify="right")
    table.add_column("c(k) ms", justify="right")
    table.add_column("c(k)/c(1)", justify="right")
    table.add_column("ms/token", justify="right")
    table.add_column("measured again", justify="right")
    ratios = profile.curve.ratios()
    for k, ms in zip(profile.curve.sizes, profile.curve.ms):
        table.add_row(str(k), f"{ms:.2f}", f"{ratios[k]:.2f}", f"{ms / k:.2f}", "yes" if k in profile.rechecked else "")
    return table


def _depth_line(profile: Profile) -> str:
    curve = profile.curve
    if not curve.row_cell_ms:
        return f"measured after {curve.depth or profile.prefix_tokens} tokens of context; no depth term (run tune again)"
    return (f"measured after {curve.depth} tokens of context; each row costs {curve.row_cell_ms * 1000:.2f} ms "
            f"more per 1000 tokens beyond that")
