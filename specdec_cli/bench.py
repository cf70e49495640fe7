"""`specdec bench`: a side-by-side speed report of drafting methods and peers.

Protocol (DESIGN.md section 8): one process, the model loaded once, a warm-up, greedy
decoding with a fixed new-token budget, batch 1. For every prompt the prompt is prefilled
once (the Generator reuses the KV prefix between calls), then every method runs on it in
turn, the order rotating from prompt to prompt so drift (thermal, other load) hits all
methods alike. Speedup is the median over prompts of the paired ratio
tokens/s(method) / tokens/s(baseline on the same prompt); every method's output tokens are
compared with the baseline's, and any difference is reported loudly (speculation must be
lossless).

Method specs: `none`, `ngram[:DRAFT_LEN]`, `recycling[:TREE_SIZE]`,
`hybrid[:TREE_SIZE[:DRAFT_LEN]]`, `auto[:TREE_SIZE[:DRAFT_LEN]]` (missing numbers: the
session defaults), and `control`: plain decoding again, timed as a method of its own, so
that its speedup (true value 1.0) shows what the machine's noise alone reads as (an A/A
test). Peers (baselines of their own, paired the same way):
`lcp` / `lcp-pld:N` — llama-cpp-python's high-level `Llama` without / with
`LlamaPromptLookupDecoding(num_pred_tokens=N)`; `server` / `server:SPEC_TYPE` —
llama.cpp's `llama-server` without / with `--spec-type SPEC_TYPE`, timed from the
server's own reported timings.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import psutil

from .errors import SpecdecError, UsageError

LCP_DEFAULT_PRED = 10  # LlamaPromptLookupDecoding's own default num_pred_tokens
LCP_TUNED_PRED = 2  # short drafts: on a compute-bound CPU long ones cost more than they save
SERVER_SPEC_TYPES = ("ngram-simple", "ngram-map-k")
FORMATS = ("table", "json", "csv", "md")
OVERALL = "overall"
WARMUP_TOKENS = 8


# ---- prompts ------------------------------------------------------------------------

@dataclass
class BenchPrompt:
    question_id: str
    category: str
    text: str  # the first turn: the benchmark is single-turn


def default_prompts_path() -> Path:
    return Path(str(resources.files("specdec_cli") / "data" / "spec_bench_public.jsonl"))


def load_prompts(path: str | os.PathLike[str]) -> list[BenchPrompt]:
    """Parse a Spec-Bench-style JSONL file: one {"question_id", "category", "turns"} object
    per line; blank lines are skipped, anything else malformed is a UsageError naming the line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read prompts file {path}: {exc.strerror or exc}") from None
    prompts = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            obj = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise UsageError(f"{where}: not valid UTF-8") from None
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise UsageError(f"{where}: expected a JSON object with question_id, category, turns")
        missing = [key for key in ("question_id", "category", "turns") if key not in obj]
        if missing:
            raise UsageError(f"{where}: missing {', '.join(missing)}")
        turns = obj["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns) \
                or not turns[0].strip():
            raise UsageError(f"{where}: 'turns' must be a non-empty list of strings")
        if not isinstance(obj["category"], str) or not obj["category"]:
            raise UsageError(f"{where}: 'category' must be a non-empty string")
        prompts.append(BenchPrompt(str(obj["question_id"]), obj["category"], turns[0]))
    if not prompts:
        raise UsageError(f"{path} holds no prompts")
    return prompts


def select_prompts(prompts: list[BenchPrompt], categories: list[str] | None,
                   limit: int | None) -> list[BenchPrompt]:
    """Keep the given categories (all when None) and at most `limit` prompts of each, in
    file order."""
    known = list(dict.fromkeys(p.category for p in prompts))
    if categories:
        unknown = [c for c in categories if c not in known]
        if unknown:
            raise UsageError(f"unknown category {', '.join(unknown)} (the prompts have {', '.join(known)})")
    keep = set(categories or known)
    taken: dict[str, int] = {}
    chosen = []
    for prompt in prompts:
        if prompt.category in keep and (limit is None or taken.get(prompt.category, 0) < limit):
            taken[prompt.category] = taken.get(prompt.category, 0) + 1
            chosen.append(prompt)
    return chosen


# ---- methods --------------------------------------------------------------------------

@dataclass(frozen=True)
class MethodSpec:
    name: str  # as written by the user, e.g. "hybrid:16:8"
    family: str  # "specdec" | "lcp" | "server": each family is paired with its own baseline
    mode: str  # specdec draft mode; "none" for the baselines of the peers
    tree_size: int | None = None
    draft_len: int | None = None
    num_pred_tokens: int | None = None  # lcp-pld
    spec_type: str | None = None  # server

    @property
    def is_baseline(self) -> bool:
        return self.mode == "none"


def _numbers(name: str, parts: list[str], most: int) -> list[int]:
    if len(parts) > most:
        raise UsageError(f"method {name!r}: too many ':' parameters")
    values = []
    for part in parts:
        if not part.isdigit() or int(part) < 1:
            raise UsageError(f"method {name!r}: {part!r} is not a positive integer")
        values.append(int(part))
    return values


def parse_method(name: str) -> MethodSpec:
    head, *params = name.strip().split(":")
    if head in ("none", "control"):
        _numbers(name, params, 0)
        return MethodSpec(name, "specdec", "none")
    if head == "ngram":
        (draft_len,) = _numbers(name, params, 1) or [None]
        return MethodSpec(name, "specdec", "ngram", draft_len=draft_len)
    if head == "recycling":
        (tree_size,) = _numbers(name, params, 1) or [None]
        return MethodSpec(name, "specdec", "recycling", tree_size=tree_size)
    if head in ("hybrid", "auto"):
        values = _numbers(name, params, 2) + [None, None]
        return MethodSpec(name, "specdec", head, tree_size=values[0], draft_len=values[1])
    if head == "lcp":
        _numbers(name, params, 0)
        return MethodSpec(name, "lcp", "none")
    if head == "lcp-pld":
        (pred,) = _numbers(name, params, 1) or [LCP_DEFAULT_PRED]
        return MethodSpec(name, "lcp", "pld", num_pred_tokens=pred)
    if head == "server":
        if len(params) > 1:
            raise UsageError(f"method {name!r}: use server:SPEC_TYPE, e.g. server:ngram-simple")
        return MethodSpec(name, "server", params[0] if params else "none", spec_type=params[0] if params else None)
    raise UsageError(f"unknown method {head!r} (choose from none, ngram, recycling, hybrid, auto, control, "
                     "lcp, lcp-pld:N, server, server:SPEC_TYPE)")


def parse_methods(text: str) -> list[MethodSpec]:
    names = [n for n in (part.strip() for part in text.split(",")) if n]
    if not names:
        raise UsageError("--methods is empty")
    methods = [parse_method(n) for n in dict.fromkeys(names)]
    if not any(m.name == "none" for m in methods):
        methods.insert(0, parse_method("none"))  # every ratio needs the plain baseline
    return methods


def peer_methods(server_path: Path | None) -> list[MethodSpec]:
    names = ["lcp", f"lcp-pld:{LCP_DEFAULT_PRED}", f"lcp-pld:{LCP_TUNED_PRED}"]
    if server_path is not None:
        names += ["server"] + [f"server:{t}" for t in SERVER_SPEC_TYPES]
    return [parse_method(n) for n in names]


def find_llama_server(explicit: str | None) -> Path | None:
    """--llama-server PATH (must exist), else `llama-server` on PATH, else None."""
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_dir():
            path = path / "llama-server"
        if not path.is_file() or not os.access(path, os.X_OK):
            raise UsageError(f"--llama-server {explicit}: no executable found there")
        return path
    found = shutil.which("llama-server")
    return Path(found) if found else None


# ---- measurements ---------------------------------------------------------------------

@dataclass
class Sample:
    method: str
    family: str
    question_id: str
    category: str
    tokens_per_s: float
    mean_tokens_per_step: float | None  # None where the tool doesn't say
    ttft_s: float | None
    n_generated: int
    rss_bytes: int
    matched: bool  # output identical to specdec `none` on this prompt
    speedup: float | None = None  # paired with its family's baseline on the same prompt


@dataclass
class MethodRow:
    method: str
    family: str
    category: str
    n_prompts: int
    tokens_per_s: float
    speedup: float | None
    mean_tokens_per_step: float | None
    ttft_ms: float | None
    peak_rss_mb: float
    matched: int  # prompts whose output equalled the baseline's
    lossless: bool


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
    date: str
    max_tokens: int
    repeat: int
    prompts_file: str
    n_prompts: int
    llama_server: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class BenchReport:
    header: ReportHeader
    rows: list[MethodRow]
    samples: list[Sample]

    @property
    def mismatches(self) -> list[Sample]:
        return [s for s in self.samples if not s.matched]

    @property
    def lossless(self) -> bool:
        return not self.mismatches


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def pair_speedups(samples: list[Sample]) -> None:
    """Set each sample's speedup against its family's baseline on the same prompt."""
    baseline = {(s.family, s.question_id): s.tokens_per_s for s in samples
                if s.method in ("none", "lcp", "server")}
    for s in samples:
        base = baseline.get((s.family, s.question_id))
        s.speedup = s.tokens_per_s / base if base else None


def summarize(samples: list[Sample], methods: list[str]) -> list[MethodRow]:
    """One row per (method, category) plus one per method for all prompts: medians of
    per-prompt figures; mean tokens per step is the mean over prompts."""
    pair_speedups(samples)
    categories = list(dict.fromkeys(s.category for s in samples))
    rows = []
    for method in methods:
        mine = [s for s in samples if s.method == method]
        if not mine:
            continue
        for category in categories + [OVERALL]:
            group = mine if category == OVERALL else [s for s in mine if s.category == category]
            if not group:
                continue
            steps = [s.mean_tokens_per_step for s in group if s.mean_tokens_per_step is not None]
            ttft = _median(s.ttft_s for s in group)
            matched = sum(s.matched for s in group)
            rows.append(MethodRow(
                method=method, family=group[0].family, category=category,
                n_prompts=len({s.question_id for s in group}),
                tokens_per_s=round(statistics.median(s.tokens_per_s for s in group), 2),
                speedup=None if (sp := _median(s.speedup for s in group)) is None else round(sp, 3),
                mean_tokens_per_step=round(statistics.fmean(steps), 3) if steps else None,
                ttft_ms=None if ttft is None else round(ttft * 1000, 1),
                peak_rss_mb=round(max(s.rss_bytes for s in group) / 2**20, 1),
                matched=matched, lossless=matched == len(group)))
    return rows


# ---- running ----------------------------------------------------------------------------

Progress = Callable[[str], None]


@dataclass
class BenchPlan:
    prompts: list[BenchPrompt]
    methods: list[MethodSpec]
    max_tokens: int = 128
    repeat: int = 1


def _draft_settings(spec: MethodSpec, defaults):
    from .drafting import DraftSettings

    return DraftSettings(mode=spec.mode, tree_size=spec.tree_size or defaults.tree_size,
                         draft_len=defaults.draft_len if spec.draft_len is None else spec.draft_len)


def run_specdec(session, plan: BenchPlan, prompt_tokens: list, advance: Progress) -> tuple[list[Sample], dict]:
    """Our methods on every prompt. Returns the samples and, per question id, the baseline
    output tokens and text (the reference every method and peer is checked against)."""
    from .drafting import DraftSettings

    generator, sampling = session.generator, session.sampling
    methods = [m for m in plan.methods if m.family == "specdec"]
    # Warm-up: page the weights in, build the tuner's policy, touch every code path once.
    for spec in methods:
        generator.generate(prompt_tokens[0], max_tokens=WARMUP_TOKENS, sampling=sampling,
                           draft=_draft_settings(spec, session.draft))
    samples: list[Sample] = []
    reference: dict[str, tuple[list[int], str]] = {}
    for index, (prompt, tokens) in enumerate(zip(plan.prompts, prompt_tokens)):
        # Prefill once: later calls on the same prompt reuse its KV cells, so every method's
        # TTFT is this prefill plus its own first step.
        first = generator.generate(tokens, max_tokens=1, sampling=sampling, draft=DraftSettings(mode="none"))
        prefill_s = first.stats.prefill_s
        shift = index % len(methods)
        order = methods[shift:] + methods[:shift]
        outputs: dict[str, list] = {}
        for r in range(plan.repeat):
            # ABBA...: the order flips every round so that a machine slowing down or
            # speeding up during a prompt weighs on every method alike.
            for spec in (order if r % 2 == 0 else order[::-1]):
                result = generator.generate(tokens, max_tokens=plan.max_tokens, sampling=sampling,
                                            draft=_draft_settings(spec, session.draft))
                s = result.stats
                outputs.setdefault(spec.name, []).append((result, rss_bytes()))
                advance(f"{prompt.category} #{prompt.question_id} {spec.name}: {s.tokens_per_s:.0f} tok/s")
        base_tokens = outputs["none"][0][0].tokens
        reference[prompt.question_id] = (base_tokens, outputs["none"][0][0].text)
        for spec in methods:
            runs = outputs[spec.name]
            stats = [r.stats for r, _ in runs]
            samples.append(Sample(
                method=spec.name, family="specdec", question_id=prompt.question_id, category=prompt.category,
                tokens_per_s=statistics.median(st.tokens_per_s for st in stats),
                mean_tokens_per_step=statistics.fmean(st.mean_accepted for st in stats),
                ttft_s=prefill_s + statistics.median(st.ttft_s - st.prefill_s for st in stats),
                n_generated=stats[0].n_generated, rss_bytes=max(rss for _, rss in runs),
                matched=all(r.tokens == base_tokens for r, _ in runs)))
    return samples, reference


_GGML_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 8}


@contextmanager
def _peer_weight_layout():
    """`Llama` has no option for the weight layout and loads with llama.cpp's default; where
    that layout crashes (llama.repacked_weights_safe), build the peers with it off, as our
    engine does, by handing `Llama` default model params with it off."""
    import llama_cpp.llama_cpp as lc

    from .llama import repacked_weights_safe

    if repacked_weights_safe():
        yield
        return
    default_params = lc.llama_model_default_params

    def plain_layout_params():
        params = default_params()
        params.use_extra_bufts = False
        return params

    lc.llama_model_default_params = plain_layout_params
    try:
        yield
    finally:
        lc.llama_model_default_params = default_params


def run_lcp_peers(model_path: Path, plan: BenchPlan, prompt_texts: list[str], reference: dict,
                  n_threads: int, n_ctx: int, kv: tuple[str, str], advance: Progress) -> list[Sample]:
    """llama-cpp-python's high-level API, with and without its prompt-lookup draft model.
    Two `Llama`s: the plain one as llama-cpp-python builds it without a draft model, and one
    built with a draft model (that switches on logits for every token, which speculation
    needs) whose draft model is swapped per method. Both reuse their cached prompt prefix.
    Timed by the wall clock of create_completion; outputs are compared as text with our
    baseline's (the high-level API returns text)."""
    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    methods = [m for m in plan.methods if m.family == "lcp"]
    # Same KV cache types and flash attention as our engine, so outputs are comparable.
    common = dict(model_path=str(model_path), n_ctx=n_ctx, n_threads=n_threads, n_batch=512, verbose=False,
                  type_k=_GGML_TYPES[kv[0]], type_v=_GGML_TYPES[kv[1]], flash_attn=True)
    with _peer_weight_layout():
        plain = Llama(**common)
        # logits_all spelled out: 0.3.36 sizes its scores array from the argument, not from the
        # draft model that forces it on, and overflows on prompts longer than n_batch otherwise.
        drafting = Llama(**common, logits_all=True,
                         draft_model=LlamaPromptLookupDecoding(num_pred_tokens=LCP_DEFAULT_PRED))

    def complete(spec: MethodSpec, text: str, max_tokens: int) -> tuple[str, int, float, float]:
        llm = plain if spec.is_baseline else drafting
        # Its prefix cache overruns n_ctx with a draft model on repeated prompts, so every
        # call starts clean and the rate is taken after the first token (decode only).
        llm.reset()
        if not spec.is_baseline:
            llm.draft_model = LlamaPromptLookupDecoding(num_pred_tokens=spec.num_pred_tokens)
        first: list[float] = []
        t0 = time.perf_counter()
        pieces = []
        for chunk in llm.create_completion(text, max_tokens=max_tokens, temperature=0.0, top_k=1, stream=True):
            if not first:
                first.append(time.perf_counter() - t0)
            pieces.append(chunk["choices"][0]["text"])
        elapsed = time.perf_counter() - t0
        out = "".join(pieces)
        n_tokens = len(llm.tokenize(out.encode(), add_bos=False, special=False))
        return out, n_tokens, elapsed, first[0] if first else elapsed

    try:
        for spec in methods:
            complete(spec, prompt_texts[0], WARMUP_TOKENS)
        samples = []
        for index, (prompt, text) in enumerate(zip(plan.prompts, prompt_texts)):
            shift = index % len(methods)
            for spec in methods[shift:] + methods[:shift]:
                rates, ttfts, outputs = [], [], []
                for _ in range(plan.repeat):
                    out, n_tokens, elapsed, ttft = complete(spec, text, plan.max_tokens)
                    rates.append((n_tokens - 1) / (elapsed - ttft) if n_tokens > 1 and elapsed > ttft else 0.0)
                    ttfts.append(ttft)
                    outputs.append(out)
                    advance(f"{prompt.category} #{prompt.question_id} {spec.name}: {rates[-1]:.0f} tok/s")
                samples.append(Sample(
                    method=spec.name, family="lcp", question_id=prompt.question_id, category=prompt.category,
                    tokens_per_s=statistics.median(rates), mean_tokens_per_step=None,
                    ttft_s=statistics.median(ttfts), n_generated=n_tokens, rss_bytes=rss_bytes(),
                    matched=all(o == reference[prompt.question_id][1] for o in outputs)))
        return samples
    finally:
        plain.close()
        drafting.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post_json(url: str, doc: dict, timeout: float) -> dict:
    request = urllib.request.Request(url, data=json.dumps(doc).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


class LlamaServer:
    """A llama-server child process on 127.0.0.1 with a free port, for one --spec-type."""

    def __init__(self, binary: Path, model_path: Path, spec_type: str | None, n_threads: int, n_ctx: int):
        self.port = _free_port()
        args = [str(binary), "-m", str(model_path), "--host", "127.0.0.1", "--port", str(self.port),
                "-t", str(n_threads), "-c", str(n_ctx), "-np", "1", "--no-webui"]
        if spec_type:
            args += ["--spec-type", spec_type]
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready(timeout=120)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                tail = self.log.read()[-800:].decode("utf-8", "replace")
                raise SpecdecError(f"llama-server exited with code {self.process.returncode}: {tail.strip()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        self.close()
        raise SpecdecError(f"llama-server did not become ready within {timeout:.0f} s")

    def complete(self, text: str, max_tokens: int) -> dict:
        return _post_json(self.url + "/completion", {
            "prompt": text, "n_predict": max_tokens, "temperature": 0.0, "top_k": 1, "cache_prompt": True,
            "ignore_eos": False}, timeout=600)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def run_server_peers(binary: Path, model_path: Path, plan: BenchPlan, prompt_texts: list[str], reference: dict,
                     n_threads: int, n_ctx: int, advance: Progress) -> list[Sample]:
    """llama.cpp's own server, one process per --spec-type (the spec type is a start-up
    flag, so these runs cannot interleave per prompt). tokens/s, TTFT and draft acceptance
    come from the server's reported `timings`; outputs are compared as text."""
    samples = []
    for spec in (m for m in plan.methods if m.family == "server"):
        server = LlamaServer(binary, model_path, spec.spec_type, n_threads, n_ctx)
        try:
            server.complete(prompt_texts[0], WARMUP_TOKENS)
            for prompt, text in zip(plan.prompts, prompt_texts):
                runs = []
                for _ in range(plan.repeat):
                    doc = server.complete(text, plan.max_tokens)
                    runs.append(doc)
                    rate = float(doc.get("timings", {}).get("predicted_per_second") or 0.0)
                    advance(f"{prompt.category} #{prompt.question_id} {spec.name}: {rate:.0f} tok/s")
                timings = [d.get("timings", {}) for d in runs]
                drafted = [t.get("draft_n") for t in timings]
                accepted = [t.get("draft_n_accepted") for t in timings]
                steps = None
                if all(d is not None for d in drafted) and timings[0].get("predicted_n"):
                    # tokens per forward pass: every pass emits one token plus its accepted drafts
                    n = timings[0]["predicted_n"]
                    steps = n / max(1, n - (accepted[0] or 0))
                samples.append(Sample(
                    method=spec.name, family="server", question_id=prompt.question_id, category=prompt.category,
                    tokens_per_s=statistics.median(float(t.get("predicted_per_second") or 0.0) for t in timings),
                    mean_tokens_per_step=steps if not spec.is_baseline else 1.0,
                    ttft_s=statistics.median(float(t.get("prompt_ms") or 0.0) / 1000 for t in timings),
                    n_generated=int(timings[0].get("predicted_n") or 0),
                    rss_bytes=psutil.Process(server.process.pid).memory_info().rss,
                    matched=all(d.get("content") == reference[prompt.question_id][1] for d in runs)))
        finally:
            server.close()
    return samples


def make_header(session, model_path: Path, plan: BenchPlan, prompts_file: Path,
                server: Path | None) -> ReportHeader:
    import llama_cpp

    from .devices import device_report
    from .gguf_file import file_sha256

    device = device_report()
    gpus = [f"{d.name} ({d.description})" for d in device.llama_devices if d.type != "CPU"]
    config = session.generator.config
    return ReportHeader(
        device=device.cpu_model,
        cores=f"{device.physical_cores} cores / {device.logical_cores} threads",
        backend=", ".join(gpus) if gpus else "CPU only",
        model=f"{session.alias} ({model_path.name})",
        model_sha256=file_sha256(model_path),
        llama_cpp_version=f"llama-cpp-python {llama_cpp.__version__}",
        llama_system_info=device.llama_system_info,
        threads=session.generator.ctx.n_threads,
        kv_cache=f"K {config.kv_k}, V {config.kv_v}",
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        max_tokens=plan.max_tokens, repeat=plan.repeat, prompts_file=str(prompts_file),
        n_prompts=len(plan.prompts), llama_server=str(server) if server else None)


def run_bench(session, plan: BenchPlan, prompts_file: Path, *, server: Path | None = None,
              advance: Progress = lambda _: None) -> BenchReport:
    """Run every method of the plan on every prompt with the open session's model."""
    generator = session.generator
    model_path = generator.model_path
    texts = [generator.render_chat([("user", p.text)]) for p in plan.prompts]
    tokens = [generator.tokenize(t, special=True) for t in texts]
    longest = max(len(t) for t in tokens)
    if longest + plan.max_tokens > generator.ctx.n_ctx:
        raise UsageError(f"the longest prompt has {longest} tokens; with --max-tokens {plan.max_tokens} it needs "
                         f"--ctx {longest + plan.max_tokens} or more (now {generator.ctx.n_ctx})")
    header = make_header(session, model_path, plan, prompts_file, server)
    samples, reference = run_specdec(session, plan, tokens, advance)
    n_threads, n_ctx = generator.ctx.n_threads, generator.ctx.n_ctx
    if any(m.family == "lcp" for m in plan.methods):
        samples += run_lcp_peers(model_path, plan, texts, reference, n_threads, n_ctx,
                                 (generator.config.kv_k, generator.config.kv_v), advance)
        header.notes.append("lcp*: llama-cpp-python high-level Llama API, same KV types, wall-clock tok/s "
                            "after the first token (its TTFT includes a full prefill); outputs compared as text")
    if any(m.family == "server" for m in plan.methods):
        if server is None:
            raise UsageError("server methods need llama-server: pass --llama-server PATH (see bench/README.md)")
        samples += run_server_peers(server, model_path, plan, texts, reference, n_threads, n_ctx, advance)
        header.notes.append("server*: llama.cpp llama-server, its own reported timings; TTFT = its prompt_ms "
                            "(cached prompt); outputs compared as text")
    return BenchReport(header=header, rows=summarize(samples, [m.name for m in plan.methods]), samples=samples)


def total_runs(plan: BenchPlan) -> int:
    return len(plan.prompts) * len(plan.methods) * plan.repeat


# ---- formats ----------------------------------------------------------------------------

def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def _exact_cell(row: MethodRow) -> str:
    if row.method in ("none",):
        return "reference"
    return "yes" if row.lossless else f"MISMATCH ({row.n_prompts - row.matched}/{row.n_prompts} differ)"


def mismatch_warning(report: BenchReport) -> str | None:
    if report.lossless:
        return None
    cases = ", ".join(f"{s.method} on {s.category} #{s.question_id}" for s in report.mismatches)
    return f"LOSSLESS MISMATCH: output differs from the `none` baseline: {cases}"


_COLUMNS = ("method", "category", "prompts", "tok/s", "speedup", "tok/step", "TTFT ms", "RSS MB", "exact")


def _row_cells(row: MethodRow) -> list[str]:
    return [row.method, row.category, str(row.n_prompts), _fmt(row.tokens_per_s, ".1f"),
            _fmt(row.speedup, ".2f") + ("x" if row.speedup is not None else ""),
            _fmt(row.mean_tokens_per_step, ".2f"), _fmt(row.ttft_ms, ".0f"), _fmt(row.peak_rss_mb, ".0f"),
            _exact_cell(row)]


def _header_lines(header: ReportHeader) -> list[tuple[str, str]]:
    lines = [("device", f"{header.device}, {header.cores}, {header.backend}"),
             ("model", f"{header.model} sha256 {header.model_sha256}"),
             ("llama.cpp", f"{header.llama_cpp_version}; {header.llama_system_info}"),
             ("threads", str(header.threads)), ("KV cache", header.kv_cache), ("date", header.date),
             ("protocol", f"{header.n_prompts} prompts from {header.prompts_file}, greedy, "
                          f"{header.max_tokens} new tokens, repeat {header.repeat}; speedup = median of "
                          "per-prompt paired ratios vs the family's baseline (none / lcp / server)")]
    if header.llama_server:
        lines.append(("llama-server", header.llama_server))
    lines += [("note", note) for note in header.notes]
    return lines


def to_json(report: BenchReport) -> str:
    doc = {"header": asdict(report.header), "lossless": report.lossless, "warning": mismatch_warning(report),
           "mismatches": [{"method": s.method, "category": s.category, "question_id": s.question_id}
                          for s in report.mismatches],
           "results": [asdict(r) | {"exact": _exact_cell(r)} for r in report.rows],
           "samples": [asdict(s) for s in report.samples]}
    return json.dumps(doc, indent=2) + "\n"


def to_csv(report: BenchReport) -> str:
    """Comment lines (#) with the header, then one CSV row per method and category (read
    with pandas.read_csv(..., comment='#'))."""
    buffer = io.StringIO()
    for key, value in _header_lines(report.header):
        buffer.write(f"# {key}: {value}\n")
    warning = mismatch_warning(report)
    if warning:
        buffer.write(f"# {warning}\n")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "family", "category", "n_prompts", "tokens_per_s", "speedup",
                     "mean_tokens_per_step", "ttft_ms", "peak_rss_mb", "exact"])
    for r in report.rows:
        writer.writerow([r.method, r.family, r.category, r.n_prompts, r.tokens_per_s, _fmt(r.speedup, ".3f"),
                         _fmt(r.mean_tokens_per_step, ".3f"), _fmt(r.ttft_ms, ".1f"), r.peak_rss_mb,
                         _exact_cell(r)])
    return buffer.getvalue()


def to_markdown(report: BenchReport) -> str:
    lines = [f"- **{key}**: {value}" for key, value in _header_lines(report.header)]
    warning = mismatch_warning(report)
    if warning:
        lines += ["", f"> **WARNING — {warning}**"]
    lines += ["", "| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for row in report.rows:
        cells = _row_cells(row)
        if not row.lossless:
            cells[-1] = f"**{cells[-1]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_table(report: BenchReport, console) -> None:
    from rich.table import Table

    for key, value in _header_lines(report.header):
        console.print(f"[bold]{key}[/bold]: {value}", soft_wrap=True, highlight=False)
    warning = mismatch_warning(report)
    if warning:
        console.print(f"[bold red]!! {warning}[/bold red]", soft_wrap=True, highlight=False)
    table = Table(show_lines=False)
    for column in _COLUMNS:
        table.add_column(column, justify="left" if column in ("method", "category", "exact") else "right")
    for row in report.rows:
        cells = _row_cells(row)
        if not row.lossless:
            cells[-1] = f"[bold red]{cells[-1]}[/bold red]"
        table.add_row(*cells, style="bold" if row.category == OVERALL else None, end_section=row.category == OVERALL)
    console.print(table)


def render(report: BenchReport, fmt: str) -> str:
    """The report as text in json, csv or md; `table` renders Rich without colour."""
    if fmt == "json":
        return to_json(report)
    if fmt == "csv":
        return to_csv(report)
    if fmt == "md":
        return to_markdown(report)
    if fmt == "table":
        from rich.console import Console

        console = Console(file=io.StringIO(), width=160, no_color=True, highlight=False)
        render_table(report, console)
        return console.file.getvalue()
    raise UsageError(f"unknown --format {fmt!r} (choose from {', '.join(FORMATS)})")


def write_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plot_speedups(report: BenchReport, path: Path) -> None:
    """Grouped bars: speedup per category (and overall) for every non-baseline method;
    mismatching methods are hatched and flagged in the legend."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'specdec[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report.rows if r.speedup is not None and r.method not in ("none", "lcp", "server")]
    if not rows:
        raise UsageError("--plot: no method besides the baselines to plot")
    categories = list(dict.fromkeys(r.category for r in rows))
    methods = list(dict.fromkeys(r.method for r in rows))
    lookup = {(r.method, r.category): r for r in rows}
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(categories) * max(1, len(methods)) * 0.45 + 3), 4.8))
    for i, method in enumerate(methods):
        xs = [c + (i - (len(methods) - 1) / 2) * width for c in range(len(categories))]
        values = [lookup[(method, cat)].speedup if (method, cat) in lookup else 0.0 for cat in categories]
        lossless = all(r.lossless for r in rows if r.method == method)
        label = method if lossless else f"{method} (OUTPUT MISMATCH)"
        ax.bar(xs, values, width, label=label, hatch=None if lossless else "xx")
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
    ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
    ax.set_ylabel("speedup vs own baseline (median paired ratio)")
    header = report.header
    ax.set_title(f"{header.model}, {header.max_tokens} new tokens, greedy\n{header.device} ({header.cores})",
                 fontsize=9)
    ax.legend(fontsize=8, ncols=2)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
