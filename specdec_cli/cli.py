"""The `specdec` command line. Commands parse options and call the library API."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer
from rich.markup import escape
from typer._click.exceptions import NoArgsIsHelpError
from typer._click.exceptions import UsageError as ClickUsageError

from . import __version__
from . import cli_options as opt
from .console import stderr_console, stdout_console
from .errors import SpecdecError, UsageError, name_options

RUN_MAX_TOKENS = 256

app = typer.Typer(
    help="Faster local LLM generation with lossless, model-free speculative decoding.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        sys.stdout.write(f"specdec {__version__} (llama-cpp-python {version('llama-cpp-python')})\n")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                               help="Print the version and exit.")] = False,
) -> None:
    pass


def _mount_subcommands() -> None:
    from .cli_bench import bench
    from .cli_chat import chat
    from .cli_models import models_app
    from .cli_history import history_app
    from .cli_tune import tune

    app.add_typer(models_app, name="models")
    app.add_typer(history_app, name="history")
    app.command()(chat)
    app.command()(bench)
    app.command()(tune)


def read_prompt(prompt: Optional[str]) -> str:
    """PROMPT argument, piped stdin, or both: then stdin is the context and PROMPT the
    instruction (`cat notes.txt | specdec run "summarize"`)."""
    piped = ""
    if (prompt is None or prompt == "-" or not sys.stdin.isatty()) and sys.stdin is not None:
        if not sys.stdin.isatty():
            try:
                piped = sys.stdin.buffer.read().decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UsageError(f"standard input is not valid UTF-8 (byte {exc.start})") from None
    if prompt == "-" or (prompt is not None and not prompt.strip() and piped.strip()):
        prompt = None  # `echo text | specdec run ""`: the piped text is the whole prompt
    if prompt is not None and not prompt.strip():
        raise UsageError("the prompt is empty")
    if prompt is None:
        if not piped.strip():
            raise UsageError("the prompt is empty: pass PROMPT or pipe text on stdin")
        return piped
    return f"{piped.rstrip()}\n\n{prompt}" if piped.strip() else prompt


@app.command()
def run(
    prompt: Annotated[Optional[str], typer.Argument(help="The prompt; '-' or omitted: read stdin.",
                                                    callback=opt.utf8_text)] = None,
    model: opt.Model = None,
    max_tokens: opt.MaxTokens(RUN_MAX_TOKENS) = None,
    temp: opt.Temp = None,
    top_k: opt.TopK = None,
    top_p: opt.TopP = None,
    seed: opt.Seed = None,
    exact: opt.Exact = None,
    no_history: opt.NoHistory = False,
    system: opt.System = None,
    draft: opt.Draft = None,
    tree_size: opt.TreeSize = None,
    draft_len: opt.DraftLen = None,
    kv_cache: opt.KvCache = None,
    kv_k: opt.KvK = None,
    kv_v: opt.KvV = None,
    ctx: opt.Ctx = None,
    threads: opt.Threads = None,
    gpu_layers: opt.GpuLayers = "auto",
    prefill: opt.Prefill = None,
    ep: opt.Ep = None,
    raw: opt.Raw = False,
    stop: opt.Stop = None,
    as_json: opt.Json = False,
    stats: opt.Stats = False,
    verbose: opt.Verbose = False,
    no_progress: opt.NoProgress = False,
) -> None:
    """Generate a completion; only the generated text goes to stdout."""
    from .cli_progress import assembly_progress
    from .session import RunOptions, open_session

    text = read_prompt(prompt)
    options = RunOptions(model=model, ctx=ctx, threads=threads, kv_cache=kv_cache, kv_k=kv_k, kv_v=kv_v,
                         verbose=verbose, draft=draft, tree_size=tree_size, draft_len=draft_len,
                         temperature=temp, top_k=top_k, top_p=top_p, seed=seed, prefill=prefill, ep=ep,
                         exact=exact, max_tokens=max_tokens, system=system, history=not no_history,
                         gpu_layers=gpu_layers)
    session = open_session(options, progress=assembly_progress(not no_progress),
                           built_in={"max_tokens": RUN_MAX_TOKENS})
    # A raw prompt has no template to put a system prompt in: only a given one is an error,
    # the model's models.toml default is for templated prompts.
    tokens = session.prompt_tokens(text, system=system if raw else session.options.system, raw=raw)

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    result = session.generator.generate(tokens, max_tokens=session.options.max_tokens, sampling=session.sampling,
                                        draft=session.draft, stop=tuple(stop or ()),
                                        on_text=None if as_json else write)
    session.close()
    if as_json:
        doc = {"model": session.alias, "text": result.text, "tokens": result.tokens,
               "finish_reason": result.finish_reason, "stats": result.stats.to_dict()}
        sys.stdout.write(json.dumps(doc) + "\n")
    elif result.text and not result.text.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()
    if stats:
        s = result.stats
        stderr_console().print(
            f"[dim]{s.n_prompt} prompt tokens in {s.prefill_s:.2f}s (prefill={s.prefill_backend}), "
            f"{s.n_generated} generated in "
            f"{s.decode_s:.2f}s ({s.tokens_per_s:.1f} tok/s), {s.steps} steps, "
            f"{s.tokens_per_step:.2f} tokens/step, draft={s.draft}, kv={s.kv_cache}, backend={s.backend}"
            f"{f' ({s.gpu_layers} GPU layers)' if s.gpu_layers else ''}"
            f"{f'; {escape(s.plain_reason)}' if s.plain_reason else ''}[/dim]")
    if result.finish_reason == "context":
        stderr_console().print(f"warning: the context is full ({session.generator.ctx.n_ctx} tokens): generation "
                               f"stopped early; use a larger --ctx")
    if result.finish_reason == "interrupted":
        raise typer.Exit(130)


@app.command()
def devices(as_json: opt.Json = False) -> None:
    """CPU, memory, llama.cpp backends and onnxruntime execution providers on this machine."""
    from .devices import device_report

    report = device_report()
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
        return
    out = stdout_console()
    gib = 1024 ** 3
    out.print(f"[bold]CPU[/bold]        {report.cpu_model} ({report.arch}), "
              f"{report.physical_cores} cores / {report.logical_cores} threads")
    out.print(f"[bold]SIMD[/bold]       {' '.join(report.simd) or '-'}")
    out.print(f"[bold]Memory[/bold]     {report.ram_total_bytes / gib:.1f} GiB total, "
              f"{report.ram_available_bytes / gib:.1f} GiB available")
    out.print(f"[bold]llama.cpp[/bold]  {report.llama_system_info}")
    for dev in report.llama_devices:
        memory = (f", {dev.free_bytes / gib:.1f} GiB free of {dev.total_bytes / gib:.1f} GiB"
                  if dev.type in ("GPU", "IGPU") else "")
        backend = f", {dev.backend}" if dev.backend not in (dev.name, dev.type) else ""
        out.print(f"           device {dev.name} ({dev.type}{backend}): {dev.description}{memory}")
    if report.gpu_backends:
        out.print(f"           GPU backend: {', '.join(report.gpu_backends)} (--gpu-layers auto offloads what fits)")
    else:
        out.print("           GPU backend: none in this build (README, 'GPU offload' shows how to install one)")
    out.print(f"[bold]onnxruntime[/bold] {report.onnxruntime_version}: {', '.join(report.onnxruntime_providers)}")
    for dev in report.onnxruntime_devices:
        out.print(f"           {dev.provider} ({dev.type}): {dev.description}")
    out.print(f"           NPU: {', '.join(report.npu_providers) if report.has_npu else 'none found'}"
              " (NPU prefill: see README, 'NPU-offloaded prefill')")


def main() -> None:
    name_options(opt.FLAGS)  # the library's messages name our flags
    _mount_subcommands()
    try:
        # Not standalone: click would turn Ctrl-C into "Aborted!" and exit 1; the README gives 130.
        code = app(standalone_mode=False)
    except SpecdecError as exc:
        stderr_console().print(f"[red]error:[/red] {escape(str(exc))}")
        sys.exit(exc.exit_code)
    except typer.exceptions.TyperException as exc:  # bad flags and values: click's usage errors
        if isinstance(exc, ClickUsageError) and not isinstance(exc, NoArgsIsHelpError):
            hint = f" (`{exc.ctx.command_path} -h` for help)" if exc.ctx is not None else ""
            stderr_console().print(f"[red]error:[/red] {escape(exc.format_message())}{hint}")
        else:
            exc.show()  # `specdec` alone: the help
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.stdout.flush()
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
