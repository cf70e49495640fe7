"""Options shared by several commands (CLI.md "Shared options"), each settable through
an environment variable SPECDEC_<NAME>, as llama.cpp does with LLAMA_ARG_*."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .drafting import DRAFT_MODES

KV_CHOICES = ("f16", "q8_0", "q4_0")


def _env(name: str) -> str:
    return "SPECDEC_" + name.upper().replace("-", "_")


def _check_draft(value: Optional[str]) -> Optional[str]:
    if value is not None and value not in DRAFT_MODES:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(DRAFT_MODES)}")
    return value


def _check_kv(value: Optional[str]) -> Optional[str]:
    if value is not None and value not in KV_CHOICES:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(KV_CHOICES)}")
    return value


Model = Annotated[Optional[str], typer.Option("--model", "-m", envvar=_env("model"),
                                              help="Model alias from the registry, or a path to a .gguf file.")]
Draft = Annotated[Optional[str], typer.Option(envvar=_env("draft"), callback=_check_draft,
                                              help="Drafting: none | ngram | recycling | hybrid | auto.")]
TreeSize = Annotated[Optional[int], typer.Option(envvar=_env("tree-size"), min=1, max=256,
                                                 help="Draft tree nodes (root included) for recycling/hybrid.")]
DraftLen = Annotated[Optional[int], typer.Option(envvar=_env("draft-len"), min=0, max=64,
                                                 help="Longest n-gram continuation drafted.")]
KvCache = Annotated[Optional[str], typer.Option("--kv-cache", envvar=_env("kv-cache"), callback=_check_kv,
                                                help="KV cache type for K and V: f16 | q8_0 | q4_0.")]
KvK = Annotated[Optional[str], typer.Option("--kv-k", envvar=_env("kv-k"), callback=_check_kv,
                                            help="KV cache type for K only (overrides --kv-cache): f16 | q8_0 | q4_0.")]
KvV = Annotated[Optional[str], typer.Option("--kv-v", envvar=_env("kv-v"), callback=_check_kv,
                                            help="KV cache type for V only (overrides --kv-cache): f16 | q8_0 | q4_0.")]
Ctx = Annotated[int, typer.Option("--ctx", envvar=_env("ctx"), min=16, help="Context length in tokens.")]
Threads = Annotated[Optional[int], typer.Option(envvar=_env("threads"), min=1,
                                                help="CPU threads (default: physical cores).")]
MaxTokens = Annotated[int, typer.Option(envvar=_env("max-tokens"), help="Most tokens to generate.")]
Temp = Annotated[float, typer.Option("--temp", envvar=_env("temp"), help="Sampling temperature; 0 = greedy.")]
TopK = Annotated[int, typer.Option(envvar=_env("top-k"), help="Top-k filter when sampling (0 = off).")]
TopP = Annotated[float, typer.Option(envvar=_env("top-p"), help="Nucleus filter when sampling (1 = off).")]
Seed = Annotated[Optional[int], typer.Option(envvar=_env("seed"), help="Random seed for sampling.")]
System = Annotated[Optional[str], typer.Option(envvar=_env("system"), help="System prompt.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of streamed text.")]
Stats = Annotated[bool, typer.Option("--stats", help="Print one stats line on stderr.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", envvar=_env("verbose"),
                                       help="Show llama.cpp's own log on stderr.")]
NoProgress = Annotated[bool, typer.Option("--no-progress", envvar=_env("no-progress"),
                                          help="No progress bars.")]
Prefill = Annotated[str, typer.Option(envvar=_env("prefill"),
                                        help="Prefill backend: auto (ONNX on an NPU, else llama.cpp) | llama | onnx.")]
Ep = Annotated[Optional[str], typer.Option("--ep", envvar=_env("ep"),
                                           help="onnxruntime execution provider for ONNX prefill (qnn, openvino, "
                                                "coreml, vitisai, dml, cuda, cpu).")]
