"""`specdec tune`: measure this device's verification cost curve for a model and store it
as the profile `--draft auto` uses; `--show` lists the stored profiles."""

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

Quick = Annotated[bool, typer.Option("--quick", envvar="SPECDEC_QUICK", help="Fewer sizes and repeats: under 10 s.")]
Show = Annotated[bool, typer.Option("--show", envvar="SPECDEC_SHOW", help="Print the stored profiles instead of measuring.")]


def tune(
    model: opt.Model = None,
    quick: Quick = False,
    show: Show = False,
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
        t0 = time.perf_counter()
        profile = measure_profile(generator.ctx, session.profile_key, model_path=generator.model_path,
                                  n_batch=generator.config.n_batch, n_seq=generator.config.n_seq_max,
                                  verify_batch=generator.verify_batch, n_vocab=generator.n_vocab, quick=quick)
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


def _where(profile: Profile) -> str:
    return f"{profile.backend}, {profile.gpu_layers} GPU layers" if profile.gpu_layers else "CPU"


def _profile_doc(profile: Profile) -> dict:
    doc = profile.to_json()
    doc["curve"]["ratios"] = {str(k): v for k, v in profile.curve.ratios().items()}
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
