"""The benchmark loop: every method of every family on every prompt, interleaved.

Protocol: one process holds our model (one Generator); llama-server peers are child
processes started up front, one per spec type. Greedy, a fixed new-token budget, batch 1.
For each prompt every family prefills it once, then every method runs on it in an order
that rotates from prompt to prompt and flips between repeats (A B C, C B A, ...), so that
a machine slowing down or speeding up weighs on every method alike. Each method's output
is compared with our plain decoding's and with llama-server's, and every divergence is
located and measured (the logit gap of plain decoding where it happened).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import UsageError
from .methods import MethodSpec
from .prompts import BenchPrompt
from .run_specdec import SpecdecRunner
from .samples import Divergence, Run, Sample, first_difference, same_output, sample_from_runs
from .summary import MethodRow, summarize

Progress = Callable[[str], None]

# Every family warms up on this prompt, not on the set's first: a warm-up on the first
# prompt left its cells cached on both sides, and that prompt's TTFT read as one decode
# step (12-43 ms where its full prefill took 3-16 s, on 1,000-token prompts).
WARMUP_PROMPT = "Write one sentence about the sea."


@dataclass
class BenchPlan:
    prompts: list[BenchPrompt]
    methods: list[MethodSpec]
    max_tokens: int = 128
    repeat: int = 1
    prompts_name: str = "spec-bench"  # the set's name or the file given


@dataclass
class ReportHeader:
    device: str
    cores: str
    backend: str
    model: str
    model_sha256: str
    llama_cpp_version: str
    llama_system_info: str
    threads: int
    kv_cache: str
    engine: str  # "fast" | "exact"
    date: str
    max_tokens: int
    repeat: int
    prompts: str
    n_prompts: int
    sampling: str = "greedy"
    llama_server: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class BenchReport:
    header: ReportHeader
    rows: list[MethodRow]
    samples: list[Sample]
    divergences: list[Divergence]

    def lossless_failures(self) -> list[Sample]:
        """In exact mode every method of ours must equal plain decoding; these don't."""
        if self.header.engine != "exact":
            return []
        return [s for s in self.samples if s.family == "specdec" and s.same_as_none is False]


def total_runs(plan: BenchPlan) -> int:
    return len(plan.prompts) * len(plan.methods) * plan.repeat


def make_header(session, plan: BenchPlan, server: Path | None) -> ReportHeader:
    import llama_cpp

    from ..devices import device_report
    from ..gguf_file import file_sha256
    from .run_server import server_version

    device = device_report()
    generator = session.generator
    gpus = [f"{d.name} ({d.description})" for d in device.llama_devices if d.type != "CPU"]
    config = generator.config
    sampling = session.sampling
    return ReportHeader(
        device=device.cpu_model,
        cores=f"{device.physical_cores} cores / {device.logical_cores} threads",
        backend=", ".join(gpus) if gpus else "CPU only",
        model=f"{session.alias} ({generator.model_path.name})",
        model_sha256=file_sha256(generator.model_path),
        llama_cpp_version=f"llama-cpp-python {llama_cpp.__version__}",
        llama_system_info=device.llama_system_info,
        threads=generator.ctx.n_threads,
        kv_cache=f"K {config.kv_k}, V {config.kv_v}",
        engine="exact" if config.exact else "fast",
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        max_tokens=plan.max_tokens, repeat=plan.repeat, prompts=plan.prompts_name, n_prompts=len(plan.prompts),
        sampling="greedy" if sampling.greedy else
        f"temperature {sampling.temperature}, top-k {sampling.top_k}, top-p {sampling.top_p}, seed {sampling.seed}",
        llama_server=f"{server} ({server_version(server)})" if server else None)


def _open_runners(session, plan: BenchPlan, server: Path | None) -> dict:
    generator = session.generator
    runners = {"specdec": SpecdecRunner(session, plan.max_tokens)}
    kv = (generator.config.kv_k, generator.config.kv_v)
    try:
        server_methods = [m for m in plan.methods if m.family == "server"]
        if server_methods:
            if server is None:
                raise UsageError("server methods need llama-server: pass --llama-server PATH "
                                 "(bench/build_llama_server.sh builds it)")
            from .run_server import ServerRunner

            runners["server"] = ServerRunner(server, generator.model_path, server_methods, generator.ctx.n_threads,
                                             generator.ctx.n_ctx, kv, plan.max_tokens, generator.model.is_eog)
        if any(m.family == "lcp" for m in plan.methods):
            from .run_lcp import LcpRunner

            runners["lcp"] = LcpRunner(generator.model_path, generator.ctx.n_threads, generator.ctx.n_ctx, kv,
                                       generator.repacked_weights, plan.max_tokens)
    except BaseException:
        for runner in runners.values():
            runner.close()
        raise
    return runners


def run_bench(session, plan: BenchPlan, *, server: Path | None = None,
              advance: Progress = lambda _: None) -> BenchReport:
    """Run every method of the plan on every prompt with the open session's model."""
    generator = session.generator
    texts = [generator.render_chat([("user", p.text)]) for p in plan.prompts]
    tokens = [generator.tokenize(t, special=True) for t in texts]
    longest = max(len(t) for t in tokens)
    if longest + plan.max_tokens > generator.ctx.n_ctx:
        raise UsageError(f"the longest prompt has {longest} tokens; with --max-tokens {plan.max_tokens} it needs "
                         f"--ctx {longest + plan.max_tokens} or more (now {generator.ctx.n_ctx})")
    header = make_header(session, plan, server)
    runners = _open_runners(session, plan, server)
    samples: list[Sample] = []
    divergences: list[Divergence] = []
    warm_text = generator.render_chat([("user", WARMUP_PROMPT)])
    warm_tokens = generator.tokenize(warm_text, special=True)
    try:
        for family, runner in runners.items():
            runner.warm_up(warm_tokens, warm_text, [m for m in plan.methods if m.family == family])
        for index, prompt in enumerate(plan.prompts):
            for runner in runners.values():
                runner.start_prompt(tokens[index], texts[index])
            shift = index % len(plan.methods)
            order = plan.methods[shift:] + plan.methods[:shift]
            runs: dict[str, list[Run]] = {m.name: [] for m in plan.methods}
            for r in range(plan.repeat):
                for spec in (order if r % 2 == 0 else order[::-1]):
                    run = runners[spec.family].run(spec, tokens[index], texts[index])
                    runs[spec.name].append(run)
                    advance(f"{prompt.category} #{prompt.question_id} {spec.name}: {run.tokens_per_s:.0f} tok/s")
            new_samples, new_divergences = _compare(generator, plan.methods, prompt, tokens[index], runs)
            samples += new_samples
            divergences += new_divergences
    finally:
        for runner in runners.values():
            runner.close()
    if "lcp" in runners:
        header.notes.append("lcp*: llama-cpp-python's high-level Llama API, same KV types, wall-clock tok/s after "
                            "the first token; its TTFT is a full prefill; outputs compared as text")
    if "server" in runners:
        header.notes.append("server*: llama.cpp's llama-server, its own reported timings (prompt_ms, "
                            "predicted_per_second); fed the same prompt token ids; outputs compared as tokens")
    return BenchReport(header=header, rows=summarize(samples, [m.name for m in plan.methods]), samples=samples,
                       divergences=divergences)


def _compare(generator, methods: list[MethodSpec], prompt: BenchPrompt, prompt_tokens: np.ndarray,
             runs: dict[str, list[Run]]) -> tuple[list[Sample], list[Divergence]]:
    """Samples of one prompt, with every output compared to both plain decodings, and the
    divergences located: ours against `none`, llama-server's n-gram modes against its own
    plain decoding (the anchor for how often such a divergence is normal)."""
    ref_none = runs["none"][0]
    ref_server = runs["server"][0] if "server" in runs else None
    samples, divergences = [], []
    for spec in methods:
        mine = runs[spec.name]
        samples.append(sample_from_runs(spec.name, spec.family, prompt.question_id, prompt.category, mine,
                                        same_as_none=None if spec.name == "none" else same_output(mine, ref_none),
                                        same_as_server=None if spec.name == "server" or ref_server is None
                                        else same_output(mine, ref_server)))
        reference = ("server", ref_server) if spec.family == "server" and not spec.is_baseline else ("none", ref_none)
        if spec.name == reference[0] or reference[1] is None or reference[1].tokens is None:
            continue
        for run in mine:
            if run.tokens is None:
                break
            position = first_difference(reference[1].tokens, run.tokens)
            if position is not None:
                divergences.append(_measure(generator, spec.name, prompt, prompt_tokens, reference, run, position))
                break
    return samples, divergences


def _measure(generator, method: str, prompt: BenchPrompt, prompt_tokens: np.ndarray,
             reference: tuple[str, Run], run: Run, position: int) -> Divergence:
    ref_tokens = reference[1].tokens
    context = np.concatenate([prompt_tokens, np.asarray(ref_tokens[:position], dtype=np.int32)])
    logits = generator.next_token_logits(context)
    top2 = np.partition(logits, -2)[-2:]
    theirs = ref_tokens[position] if position < len(ref_tokens) else None
    mine = run.tokens[position] if position < len(run.tokens) else None
    pair = float(logits[theirs] - logits[mine]) if theirs is not None and mine is not None else None
    return Divergence(method=method, question_id=prompt.question_id, category=prompt.category,
                      reference=reference[0], position=position, top2_gap=round(float(top2[1] - top2[0]), 5),
                      pair_gap=None if pair is None else round(pair, 5))

