"""`specdec bench`: speed of every drafting method and of the peers, side by side, on
Spec-Bench-style prompts (protocol in bench.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from . import cli_options as opt
from .errors import UsageError

Methods = Annotated[str, typer.Option(envvar="SPECDEC_METHODS",
                                      help="Comma-separated: none, ngram[:LEN], recycling[:TREE], hybrid[:TREE[:LEN]], "
                                           "auto[:TREE[:LEN]], control (plain decoding again: the noise floor), lcp, "
                                           "lcp-pld[:N], server[:SPEC_TYPE].")]
Prompts = Annotated[Optional[Path], typer.Option(help="JSONL prompts {question_id, category, turns} "
                                                      "(default: the built-in Spec-Bench public set).")]
Categories = Annotated[Optional[str], typer.Option(help="Comma-separated categories to run (default: all).")]
Limit = Annotated[Optional[int], typer.Option(min=1, help="At most N prompts per category.")]
Repeat = Annotated[int, typer.Option(min=1, help="Runs per prompt and method (median taken).")]
Format = Annotated[str, typer.Option("--format", help="table | json | csv | md.")]
Out = Annotated[Optional[Path], typer.Option("--out", help="Write the report to FILE instead of stdout.")]
Plot = Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG bar chart of speedups (needs matplotlib).")]
Peers = Annotated[bool, typer.Option("--peers/--no-peers",
                                     help="Also run llama-cpp-python's prompt lookup (and llama-server when found).")]
LlamaServer = Annotated[Optional[str], typer.Option("--llama-server", envvar="SPECDEC_LLAMA_SERVER",
                                                    help="Path to llama.cpp's llama-server (default: PATH lookup).")]


def bench(
    model: opt.Model = None,
    methods: Methods = "none,ngram,recycling,hybrid,auto",
    prompts: Prompts = None,
    categories: Categories = None,
    limit: Limit = None,
    max_tokens: opt.MaxTokens = 128,
    repeat: Repeat = 1,
    fmt: Format = "table",
    out: Out = None,
    plot: Plot = None,
    peers: Peers = True,
    llama_server: LlamaServer = None,
    threads: opt.Threads = None,
    kv_cache: opt.KvCache = None,
    ctx: opt.Ctx = 4096,
    verbose: opt.Verbose = False,
    no_progress: opt.NoProgress = False,
) -> None:
    """Benchmark drafting methods (and peers) on this machine: tokens/s, speedup, exactness."""
    from . import bench as lib
    from .session import RunOptions, open_session

    if fmt not in lib.FORMATS:
        raise UsageError(f"--format {fmt!r} is not one of {', '.join(lib.FORMATS)}")
    if max_tokens <= 0:
        raise UsageError(f"--max-tokens must be positive, got {max_tokens}")
    specs = lib.parse_methods(methods)
    prompts_file = prompts or lib.default_prompts_path()
    chosen = lib.select_prompts(lib.load_prompts(prompts_file),
                                [c.strip() for c in categories.split(",") if c.strip()] if categories else None,
                                limit)
    server = lib.find_llama_server(llama_server) if (peers or llama_server) else None
    if any(s.family == "server" for s in specs) and server is None:
        raise UsageError("server methods need llama-server: not on PATH; pass --llama-server PATH "
                         "(bench/README.md says how to build it)")
    if peers:
        specs += [p for p in lib.peer_methods(server) if p.name not in {s.name for s in specs}]
    plan = lib.BenchPlan(prompts=chosen, methods=specs, max_tokens=max_tokens, repeat=repeat)

    err = Console(stderr=True, highlight=False)
    session = open_session(RunOptions(model=model, ctx=ctx, threads=threads, kv_cache=kv_cache, verbose=verbose),
                           progress=not no_progress)
    show_progress = not no_progress and sys.stderr.isatty()
    try:
        if show_progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(TextColumn("bench"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          TextColumn("{task.description}"), console=err, transient=True) as bar:
                task = bar.add_task("warm-up", total=lib.total_runs(plan))
                report = lib.run_bench(session, plan, prompts_file, server=server,
                                       advance=lambda text: bar.update(task, advance=1, description=text))
        else:
            report = lib.run_bench(session, plan, prompts_file, server=server)
    finally:
        session.close()

    if out is not None:
        lib.write_atomic(out, lib.render(report, fmt).encode())
    elif fmt == "table":
        lib.render_table(report, Console(highlight=False))
    else:
        sys.stdout.write(lib.render(report, fmt))
        sys.stdout.flush()
    if plot is not None:
        lib.plot_speedups(report, plot)
    warning = lib.mismatch_warning(report)
    if warning:
        err.print(f"[bold red]warning:[/bold red] {warning}", soft_wrap=True)
