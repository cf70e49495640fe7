"""`specdec bench`: speed of every drafting method and of llama.cpp's own server, side by
side on one machine (protocol in bench/runner.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import cli_options as opt
from .console import stderr_console, stdout_console
from .errors import UsageError

BENCH_MAX_TOKENS = 128
Methods = Annotated[str, typer.Option(envvar="SPECDEC_METHODS",
                                      help="Comma-separated: none, ngram[:LEN], suffix[:LEN], recycling[:TREE], hybrid[:TREE[:LEN]], "
                                           "auto[:TREE[:LEN]], control (plain decoding again: the noise floor), "
                                           "server[:SPEC_TYPE] (llama-server), lcp, lcp-pld[:N] (llama-cpp-python).")]
Prompts = Annotated[Optional[str], typer.Option(help="Prompt set: spec-bench | edits, or a JSONL file of "
                                                     "{question_id, category, turns}.")]
Categories = Annotated[Optional[str], typer.Option(help="Comma-separated categories to run (default: all).")]
Limit = Annotated[Optional[int], typer.Option(min=1, help="At most N prompts per category.")]
Repeat = Annotated[int, typer.Option(min=1, help="Runs per prompt and method (median taken).")]
Format = Annotated[str, typer.Option("--format", help="table | json | csv | md.")]
Out = Annotated[Optional[Path], typer.Option("--out", help="Write the report to FILE instead of stdout.")]
Plot = Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG bar chart of speedups (needs matplotlib).")]
Peers = Annotated[bool, typer.Option("--peers/--no-peers",
                                     help="Also run llama-server without and with its n-gram modes, when found.")]
LlamaServer = Annotated[Optional[str], typer.Option("--llama-server", envvar="SPECDEC_LLAMA_SERVER",
                                                    help="Path to llama.cpp's llama-server (default: PATH lookup; "
                                                         "bench/build_llama_server.sh builds it).")]


def bench(
    model: opt.Model = None,
    methods: Methods = "none,ngram,recycling,hybrid,auto",
    prompts: Prompts = None,
    categories: Categories = None,
    limit: Limit = None,
    max_tokens: opt.MaxTokens(BENCH_MAX_TOKENS) = None,
    repeat: Repeat = 1,
    fmt: Format = "table",
    out: Out = None,
    plot: Plot = None,
    peers: Peers = True,
    llama_server: LlamaServer = None,
    temp: opt.Temp = None,
    top_k: opt.TopK = None,
    top_p: opt.TopP = None,
    seed: opt.Seed = None,
    exact: opt.Exact = None,
    threads: opt.Threads = None,
    gpu_layers: opt.GpuLayers = "auto",
    kv_cache: opt.KvCache = None,
    ctx: opt.Ctx = None,
    verbose: opt.Verbose = False,
    no_progress: opt.NoProgress = False,
) -> None:
    """Benchmark drafting methods (and llama-server) on this machine: tok/s, end-to-end time, equal outputs."""
    from .bench.methods import find_llama_server, parse_methods, peer_methods
    from .bench.plot import plot_speedups, write_atomic
    from .bench.prompts import load_prompts, prompts_path, select_prompts
    from .bench.report import FORMATS, lossless_warning, render, render_table
    from .bench.runner import BenchPlan, run_bench, total_runs
    from .cli_progress import assembly_progress
    from .session import RunOptions, open_session

    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    specs = parse_methods(methods)
    chosen = select_prompts(load_prompts(prompts_path(prompts)),
                            [c.strip() for c in categories.split(",") if c.strip()] if categories else None,
                            limit)
    server = find_llama_server(llama_server) if (peers or llama_server) else None
    if any(s.family == "server" for s in specs) and server is None:
        raise UsageError("server methods need llama-server: not on PATH; pass --llama-server PATH "
                         "(bench/build_llama_server.sh builds it)")
    if peers:
        specs += [p for p in peer_methods(server) if p.name not in {s.name for s in specs}]

    err = stderr_console()
    session = open_session(RunOptions(model=model, ctx=ctx, threads=threads, kv_cache=kv_cache, verbose=verbose,
                                      temperature=temp, top_k=top_k, top_p=top_p, seed=seed, exact=exact,
                                      max_tokens=max_tokens, gpu_layers=gpu_layers,
                                      largest_tree=max([s.tree_size or 1 for s in specs]),
                                      # a method must not draft from what another one generated
                                      history=False),
                           progress=assembly_progress(not no_progress), built_in={"max_tokens": BENCH_MAX_TOKENS})
    if not session.sampling.greedy and session.sampling.seed is None:
        # One seed for every method and prompt (shown in the report's header): with a seed
        # drawn per generation, no two methods could sample the same text (issue 17).
        import secrets

        session.sampling.seed = secrets.randbits(53)
    plan = BenchPlan(prompts=chosen, methods=specs, max_tokens=session.options.max_tokens, repeat=repeat,
                     prompts_name=prompts or "spec-bench")
    show_progress = not no_progress and sys.stderr.isatty()
    try:
        if show_progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(TextColumn("bench"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          TextColumn("{task.description}"), console=err, transient=True) as bar:
                task = bar.add_task("warm-up", total=total_runs(plan))
                report = run_bench(session, plan, server=server,
                                   advance=lambda text: bar.update(task, advance=1, description=text))
        else:
            report = run_bench(session, plan, server=server)
    finally:
        session.close()

    if out is not None:
        write_atomic(out, render(report, fmt).encode())
    elif fmt == "table":
        render_table(report, stdout_console())
    else:
        sys.stdout.write(render(report, fmt))
        sys.stdout.flush()
    if plot is not None:
        plot_speedups(report, plot)
    warning = lossless_warning(report)
    if warning:
        err.print(f"[bold red]warning:[/bold red] {warning}", soft_wrap=True)
