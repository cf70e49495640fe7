"""Options shared by several commands (README, "Usage"), each settable through
an environment variable SPECDEC_<NAME>, as llama.cpp does with LLAMA_ARG_*."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from .drafting import AUTO_DRAFT_LEN, DRAFT_MODES, FIXED_DRAFT_LEN, DraftSettings
from .errors import UsageError
from .offload import parse_gpu_layers
from .options import KV_CHOICES, EngineConfig, SamplingParams

PREFILL_CHOICES = ("auto", "llama", "onnx")  # prefill.backend.PREFILL_MODES, without importing onnxruntime
# llama.cpp reserves an output row per draft-tree branch (EngineConfig.n_seq_max: the tree
# cap, 16 by default) in a batch of at most --ctx tokens; less aborts the process (a larger
# --tree-size needs a larger context: LlamaContext says so). The top is sanity, far above any model's.
MIN_CTX = 64
MAX_CTX = 1 << 24
INT32_MAX = (1 << 31) - 1  # --top-k reaches native code as a C int


# The library's option names (errors.option) as flags: main() hands them to the library, so
# that its messages name the flag a user changes ("use a larger --ctx").
FLAGS = {
    "n_ctx": "--ctx", "verbose": "--verbose", "raw": "--raw", "system": "--system", "max_tokens": "--max-tokens",
    "draft": "--draft", "tree_size": "--tree-size", "draft_len": "--draft-len", "kv_cache": "--kv-cache",
    "kv_k": "--kv-k", "kv_v": "--kv-v", "prefill": "--prefill",
}


def _env(name: str) -> str:
    return "SPECDEC_" + name.upper().replace("-", "_")


def utf8_text(value):
    """Callback for text options and arguments. Python hands over bytes that are not UTF-8
    as surrogates, which only fail deep inside (tokenizing, printing): refuse them here."""
    for text in [value] if isinstance(value, str) else value or ():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise typer.BadParameter(f"{text!r} is not valid UTF-8 text") from None
    return value


def _choice(choices: tuple[str, ...]):
    def check(value: Optional[str]) -> Optional[str]:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return check


def _check_model(value: Optional[str]) -> Optional[str]:
    if value is not None and not value.strip():
        raise typer.BadParameter("the model name is empty")
    return utf8_text(value)


def _within(low: float, high: float, low_open: bool = False):
    """A float range check that NaN fails too (click's FloatRange lets NaN through)."""
    def check(value: Optional[float]) -> Optional[float]:
        if value is not None and not (low < value <= high if low_open else low <= value <= high):
            raise typer.BadParameter(f"{value} is not in {'(' if low_open else '['}{low:g}, {high:g}]")
        return value

    return check


def _check_threads(value: Optional[int]) -> Optional[int]:
    cpus = os.cpu_count() or 1
    if value is not None and value > cpus:
        raise typer.BadParameter(f"{value} is more than the {cpus} logical CPUs of this machine")
    return value


Model = Annotated[Optional[str], typer.Option("--model", "-m", envvar=_env("model"), callback=_check_model,
                                              show_default="the registry default",
                                              help="Model alias from the registry, or a path to a .gguf file.")]
Draft = Annotated[Optional[str], typer.Option(envvar=_env("draft"), callback=_choice(DRAFT_MODES),
                                              show_default=DraftSettings.mode,
                                              help=f"Drafting: {' | '.join(DRAFT_MODES)}.")]
TreeSize = Annotated[Optional[int], typer.Option(envvar=_env("tree-size"), min=1, max=256,
                                                 show_default=str(DraftSettings.tree_size),
                                                 help="Draft tree nodes (root included) for recycling/hybrid; "
                                                      "the most auto may use.")]
DraftLen = Annotated[Optional[int], typer.Option(envvar=_env("draft-len"), min=0, max=64,
                                                 show_default=f"{AUTO_DRAFT_LEN} for auto, "
                                                              f"{FIXED_DRAFT_LEN} for the others",
                                                 help="Longest copied chain drafted (ngram, suffix, hybrid); the "
                                                      "most auto may use.")]
_KV_DEFAULT = "f16; with --exact K f16, V q8_0"
KvCache = Annotated[Optional[str], typer.Option("--kv-cache", envvar=_env("kv-cache"), callback=_choice(KV_CHOICES),
                                                show_default=_KV_DEFAULT,
                                                help="KV cache type for K and V: f16 | q8_0 | q4_0.")]
KvK = Annotated[Optional[str], typer.Option("--kv-k", envvar=_env("kv-k"), callback=_choice(KV_CHOICES),
                                            show_default="--kv-cache",
                                            help="KV cache type for K only (overrides --kv-cache): f16 | q8_0 | q4_0.")]
KvV = Annotated[Optional[str], typer.Option("--kv-v", envvar=_env("kv-v"), callback=_choice(KV_CHOICES),
                                            show_default="--kv-cache",
                                            help="KV cache type for V only (overrides --kv-cache): f16 | q8_0 | q4_0.")]
# A None default is "not given": the model's models.toml default applies, else the built-in
# one shown here (session.resolve_options).
Ctx = Annotated[Optional[int], typer.Option("--ctx", envvar=_env("ctx"), min=MIN_CTX, max=MAX_CTX,
                                            show_default=str(EngineConfig.n_ctx),
                                            help="Context length in tokens (at most the model's training context).")]
Threads = Annotated[Optional[int], typer.Option(envvar=_env("threads"), min=1, callback=_check_threads,
                                                show_default="the physical cores other processes leave idle",
                                                help="CPU threads.")]


def MaxTokens(built_in: int):
    """--max-tokens, with the command's own built-in default."""
    return Annotated[Optional[int], typer.Option(envvar=_env("max-tokens"), min=1, show_default=str(built_in),
                                                 help="Most tokens to generate.")]


Temp = Annotated[Optional[float], typer.Option("--temp", envvar=_env("temp"), callback=_within(0, 10),
                                               show_default=str(SamplingParams.temperature),
                                               help="Sampling temperature, 0 to 10; 0 = greedy.")]
TopK = Annotated[Optional[int], typer.Option(envvar=_env("top-k"), min=0, max=INT32_MAX,
                                             show_default=str(SamplingParams.top_k),
                                             help="Top-k filter when sampling (0 = off).")]
TopP = Annotated[Optional[float], typer.Option(envvar=_env("top-p"), callback=_within(0, 1, low_open=True),
                                               show_default=str(SamplingParams.top_p),
                                               help="Nucleus filter when sampling, in (0, 1] (1 = off).")]
def _check_seed(value: Optional[int]) -> Optional[int]:
    # The sampler keys its counter-based generator with 64 bits (native/sampling.hpp).
    if value is not None and not 0 <= value < 1 << 64:
        raise typer.BadParameter(f"{value} is out of range: a seed is an integer from 0 to 2^64-1 "
                                 f"({(1 << 64) - 1})")
    return value


Seed = Annotated[Optional[int], typer.Option(envvar=_env("seed"), callback=_check_seed,
                                             help="Random seed for sampling, 0 to 2^64-1; the same seed gives the "
                                                  "same text with every --draft mode. Default: a random one, "
                                                  "shown in --json stats.")]
Exact = Annotated[Optional[bool], typer.Option("--exact/--no-exact", envvar=_env("exact"), show_default=False,
                                               help="Exact engine mode: speculative output bit-identical to plain "
                                                    "decoding, at the cost of slower kernels. Default: the fast mode "
                                                    "(llama.cpp's fastest kernels; greedy output equal to plain "
                                                    "decoding up to floating-point near-ties).")]
System = Annotated[Optional[str], typer.Option(envvar=_env("system"), callback=utf8_text, help="System prompt.")]
Json = Annotated[bool, typer.Option("--json", envvar=_env("json"), help="Print one JSON document instead of streamed text.")]
Stats = Annotated[bool, typer.Option("--stats", envvar=_env("stats"), help="Print one stats line on stderr.")]
Raw = Annotated[bool, typer.Option("--raw", envvar=_env("raw"), help="Send the prompt as is, without the chat template.")]
Stop = Annotated[Optional[list[str]], typer.Option("--stop", envvar=_env("stop"), callback=utf8_text,
                                                   help="Stop at this string (repeatable; the variable splits at "
                                                        "whitespace).")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", envvar=_env("verbose"),
                                       help="Show llama.cpp's own log on stderr.")]
NoHistory = Annotated[bool, typer.Option("--no-history", envvar=_env("no-history"),
                                         help="Neither draft from nor add to this model's history of earlier "
                                              "prompts and outputs (`specdec history`).")]
NoProgress = Annotated[bool, typer.Option("--no-progress", envvar=_env("no-progress"),
                                          help="No progress bars.")]
Prefill = Annotated[Optional[str], typer.Option(envvar=_env("prefill"), callback=_choice(PREFILL_CHOICES),
                                                  show_default=EngineConfig.prefill,
                                                  help="Prefill backend: auto (ONNX on an NPU, or at the prompt "
                                                       "lengths where `specdec tune` measured it faster; else "
                                                       "llama.cpp) | llama | onnx.")]


def _check_gpu_layers(value: str) -> str:
    try:
        return parse_gpu_layers(value)
    except UsageError as exc:
        raise typer.BadParameter(str(exc)) from None


GpuLayers = Annotated[str, typer.Option("--gpu-layers", "-ngl", envvar=_env("gpu-layers"), callback=_check_gpu_layers,
                                        metavar="N|all|auto",
                                        help="Layers on the GPU: N, all, or auto (as many as fit in a GPU's free "
                                             "memory; none on a build without a GPU backend).")]
Ep = Annotated[Optional[str], typer.Option("--ep", envvar=_env("ep"), callback=utf8_text,
                                           help="onnxruntime execution provider for ONNX prefill (qnn, openvino, "
                                                "coreml, vitisai, dml, cuda, cpu).")]
