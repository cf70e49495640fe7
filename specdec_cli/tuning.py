"""`specdec tune`'s measurement and the profile store: this device's verification cost
curve for one model, measured on a llama.cpp context, stored per (device, threads, KV
types, engine mode, GPU backend and layers, model file) under the cache dir, and turned into the policy that
`--draft auto` uses (policy.py); with it, when the model's ONNX graph is exported, the
prefill timings `--prefill auto` uses (prefill/measured.py)."""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import _native as nat
from .llama import LlamaContext, TokenBatch
from .paths import cache_dir, write_cache_file
from .policy import CostCurve, SpeculationPolicy, prior_curve
from .prefill.measured import PrefillSpeed

PROFILE_VERSION = 2
PREFIX_TOKENS = 300  # context length the curve is measured at
# The per-row cost of attending to more context (CostCurve.row_cell_ms) is read as the
# difference between steps after PREFIX_TOKENS and after DEEP_PREFIX_TOKENS cells: 1, 8
# and 16 rows, whose per-row growth agreed within ~10% on Qwen2.5-Coder-1.5B over 1700
# cells (0.014-0.015 ms per row and cell); the median of the three is kept. Over 600
# cells one noisy c(16) reading doubled the estimate.
TUNE_CONTEXT = 2048
DEEP_PREFIX_TOKENS = 1800
DEPTH_SIZES = (1, 8, 16)
DEPTH_REPEATS = 5
QUICK_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
FULL_SIZES = tuple(range(1, 17)) + (20, 24, 32, 40, 48, 64)
QUICK_REPEATS = 3
FULL_REPEATS = 7
# A size whose reading is this far from the line through its neighbours is measured again
# (RECHECK_REPEATS more times, interleaved with them) before it is believed. On a shared
# machine one size can read 20% low by chance, and the policy's argmax would then pick
# exactly that size every time; but real steps exist too (repacked weights switch to a
# GEMM kernel at 16 rows: c(16) < c(15), measured on Qwen2.5-Coder-1.5B), so an
# out-of-line reading is re-measured, not smoothed away.
OUT_OF_LINE = 0.12
RECHECK_REPEATS = 6
MAX_RECHECKED = 4  # the sizes furthest out of line; on a busy machine many look so
ROWS_READ_OUT = 8  # top-k per verified row, as Token Recycling's update reads them


@dataclass
class Profile:
    device_key: str  # hash of what the curve depends on besides the model (profile_key)
    device: str  # human-readable description of the same
    model_sha256: str
    model_path: str
    n_threads: int
    kv_cache: str
    engine: str  # "fast" | "exact"
    verify_batch: int
    quick: bool
    created: float
    prefix_tokens: int
    rechecked: list[int]  # sizes measured again because they looked out of line
    curve: CostCurve
    backend: str = "CPU"  # where the offloaded layers ran (profiles from before GPU offload: CPU)
    gpu_layers: int = 0
    # llama.cpp's prefill against ONNX's (`--prefill auto` without an NPU); None: not
    # measured (no exported graph, or a profile from before tune measured it)
    prefill: PrefillSpeed | None = None

    def to_json(self) -> dict:
        data = asdict(self)
        data["version"] = PROFILE_VERSION
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Profile":
        if data.get("version") != PROFILE_VERSION:
            raise ValueError(f"profile version {data.get('version')!r}, expected {PROFILE_VERSION}")
        fields = {k: v for k, v in data.items() if k != "version"}
        curve = fields.pop("curve")
        prefill = fields.pop("prefill", None)
        sizes, ms = [int(k) for k in curve["sizes"]], [float(v) for v in curve["ms"]]
        depth, row_cell_ms = int(curve.get("depth", 0)), float(curve.get("row_cell_ms", 0.0))
        if (not sizes or len(sizes) != len(ms) or sizes != sorted(set(sizes)) or min(ms) <= 0
                or depth < 0 or row_cell_ms < 0):
            raise ValueError("profile cost curve is malformed")
        return cls(curve=CostCurve(sizes=sizes, ms=ms, depth=depth, row_cell_ms=row_cell_ms),
                   prefill=PrefillSpeed.from_json(prefill) if prefill is not None else None, **fields)


@dataclass(frozen=True)
class ProfileKey:
    """Everything a cost curve depends on: the device, the model file, how it runs."""

    fingerprint: str  # devices.device_fingerprint()
    n_threads: int
    kv_k: str
    kv_v: str
    engine: str
    model_sha256: str
    backend: str = "CPU"  # offload.OffloadPlan: a GPU's curve is nearly flat, a CPU's steep
    gpu_layers: int = 0

    @property
    def description(self) -> str:
        # A CPU run's key reads as before GPU offload existed, so its stored profiles stay found.
        gpu = f" gpu={self.backend}:{self.gpu_layers}" if self.gpu_layers else ""
        return f"{self.fingerprint} threads={self.n_threads} kv={self.kv_k}/{self.kv_v} engine={self.engine}{gpu}"

    @property
    def device_hash(self) -> str:
        return hashlib.sha256(self.description.encode()).hexdigest()[:16]

    def path(self) -> Path:
        return profiles_dir() / f"{self.model_sha256[:16]}-{self.device_hash}.json"


def profiles_dir() -> Path:
    return cache_dir() / "profiles"


def save_profile(profile: Profile, path: Path) -> bool:
    """Atomic write: a crash never leaves half a profile behind. False (after a warning)
    when the cache cannot be written."""
    return write_cache_file(path, json.dumps(profile.to_json(), indent=1))


def load_profile(path: Path) -> Profile | None:
    """The stored profile, or None when there is none. A corrupt file is reported on
    stderr and treated as missing, so that the caller rebuilds it."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        _warn(f"cannot read tuner profile {path}: {exc}; ignoring it")
        return None
    try:
        return Profile.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        _warn(f"tuner profile {path} is corrupt ({exc}); it will be rebuilt")
        return None


def stored_profiles() -> list[tuple[Path, Profile | None]]:
    folder = profiles_dir()
    if not folder.is_dir():
        return []
    return [(p, load_profile(p)) for p in sorted(folder.glob("*.json"))]


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")
    sys.stderr.flush()


def policy_from_profile(profile: Profile | None, verify_batch: int, max_tree: int,
                        max_chain: int) -> SpeculationPolicy:
    """The policy `--draft auto` uses: the stored profile's curve when there is one, else
    the built-in CPU prior (policy.PRIOR_COST_RATIOS)."""
    curve = profile.curve if profile is not None else prior_curve()
    return SpeculationPolicy(curve, verify_batch=verify_batch, max_tree=max_tree, max_chain=max_chain,
                             measured=profile is not None)


# ---- measuring ---------------------------------------------------------------------------

class _StepTimer:
    """Times verification steps on a context the way the decode loop pays for them.

    llama.cpp reuses its compute graph while the batch shape stays the same, so plain
    decoding (one row after another) is cheaper than a lone one-row call, and a k-row step
    costs its own graph build plus a rebuild for the plain step after it (SmolLM2, 2-core
    CPU: +0.9 ms on a 12 ms step). So c(1) is a one-row call right after another one, and
    c(k) for k > 1 is the k-row call plus the next one-row call, minus c(1). The cells it
    writes sit after everything the context keeps and are removed again."""

    def __init__(self, ctx: LlamaContext, n_batch: int, n_seq: int, verify_batch: int, n_vocab: int,
                 prefix_tokens: int, largest: int):
        self.ctx = ctx
        self.n_seq = n_seq
        self.vb = max(1, verify_batch)
        self.batch = TokenBatch(n_batch, n_seq)
        self.all_seqs = np.arange(n_seq, dtype=np.int32)
        self.start = max(ctx.seq_pos_max(0) + 1, 0)
        prefix_tokens = min(prefix_tokens, max(0, ctx.n_ctx - self.start - largest - 1))
        # Any tokens do: cost does not depend on which; avoid control tokens near id 0.
        rng = np.random.default_rng(0)
        self.filler = rng.integers(100, min(n_vocab, 30000), size=prefix_tokens + largest + 1, dtype=np.int32)
        self.prefix = prefix_tokens
        self.base = self.start + prefix_tokens
        ctx.decode_chain(self.batch, self.filler[:prefix_tokens], self.start, self.all_seqs, n_batch)

    def _timed(self, rows: np.ndarray, pos: int) -> float:
        t0 = time.perf_counter()
        self.ctx.decode_chain(self.batch, rows, pos, self.all_seqs[:1], self.vb,
                              on_logits=lambda _, logits: nat.topk_rows(logits, ROWS_READ_OUT))
        return (time.perf_counter() - t0) * 1000

    def _drop_from(self, pos: int) -> None:
        for s in range(self.n_seq):
            self.ctx.seq_rm(s, pos, -1)

    def pair(self, k: int) -> tuple[float, float]:
        """(one-row step after a one-row step, k-row step + the one-row step after it)."""
        self._timed(self.filler[self.prefix:self.prefix + 1], self.base)  # the one-row graph
        self._drop_from(self.base)
        plain = self._timed(self.filler[self.prefix:self.prefix + 1], self.base)
        self._drop_from(self.base)
        step = self._timed(self.filler[self.prefix:self.prefix + k], self.base)
        after = self._timed(self.filler[self.prefix + k:self.prefix + k + 1], self.base + k)
        self._drop_from(self.base)
        return plain, step + after

    def close(self) -> None:
        self._drop_from(self.start)


def measure_curve(ctx: LlamaContext, *, n_batch: int, n_seq: int, verify_batch: int, n_vocab: int,
                  sizes: tuple[int, ...], repeats: int,
                  prefix_tokens: int = PREFIX_TOKENS) -> tuple[CostCurve, list[int]]:
    """Median cost of a verification step of k rows for each k after `prefix_tokens` of
    context on `ctx`. Returns the curve and the sizes measured again (sample_curve)."""
    timer = _StepTimer(ctx, n_batch, n_seq, verify_batch, n_vocab, prefix_tokens, max(sizes))
    try:
        curve, rechecked = sample_curve(timer.pair, sizes, repeats)
        curve.depth = timer.base
    finally:
        timer.close()
    return curve, rechecked


def measure_depth_cost(ctx: LlamaContext, curve: CostCurve, *, n_batch: int, n_seq: int, verify_batch: int,
                       n_vocab: int, repeats: int = DEPTH_REPEATS) -> float:
    """ms a verified row costs per extra context cell (CostCurve.row_cell_ms): steps of
    DEPTH_SIZES rows timed after DEEP_PREFIX_TOKENS cells against the curve measured at
    `curve.depth`; 0 when the context is too short to tell."""
    timer = _StepTimer(ctx, n_batch, n_seq, verify_batch, n_vocab, DEEP_PREFIX_TOKENS, max(DEPTH_SIZES))
    try:
        cells = timer.base - curve.depth
        if cells < DEEP_PREFIX_TOKENS // 3:
            return 0.0
        plain: list[float] = []
        pairs: dict[int, list[float]] = {k: [] for k in DEPTH_SIZES if k > 1}
        for _ in range(repeats):
            for k in pairs:  # each reading brings a one-row step too: c(1)
                one, both = timer.pair(k)
                plain.append(one)
                pairs[k].append(both)
        deep = _curve(DEPTH_SIZES, plain, pairs)
    finally:
        timer.close()
    per_row = [(ms - curve.at(k)) / k for k, ms in zip(deep.sizes, deep.ms)]
    return round(max(0.0, statistics.median(per_row) / cells), 6)


def sample_curve(pair: Callable[[int], tuple[float, float]], sizes: tuple[int, ...],
                 repeats: int) -> tuple[CostCurve, list[int]]:
    """The curve from `pair(k)` readings (see _StepTimer.pair), sizes interleaved so that
    load drift hits all alike; sizes out of line with their neighbours, and those
    neighbours, are read again and the median of all their readings kept."""
    plain: list[float] = []
    pairs: dict[int, list[float]] = {k: [] for k in sizes}
    for i, k in enumerate([k for _ in range(repeats + 1) for k in sizes]):
        one, both = pair(k)
        if i >= len(sizes):  # the first round warms caches up and is discarded
            plain.append(one)
            pairs[k].append(both)
    rechecked = _out_of_line(sizes, _curve(sizes, plain, pairs).ms)
    again = sorted({n for s in rechecked for n in _neighbours(sizes, s)} | set(rechecked))
    for _ in range(RECHECK_REPEATS if repeats >= FULL_REPEATS else RECHECK_REPEATS // 2):
        for k in again:
            one, both = pair(k)
            plain.append(one)
            pairs[k].append(both)
    return _curve(sizes, plain, pairs), rechecked


def _curve(sizes: tuple[int, ...], plain: list[float], pairs: dict[int, list[float]]) -> CostCurve:
    c1 = statistics.median(plain)
    ms = [c1 if k == 1 else max(statistics.median(pairs[k]) - c1, c1) for k in sizes]
    return CostCurve(sizes=list(sizes), ms=[round(v, 4) for v in ms])


def _neighbours(sizes: tuple[int, ...], k: int) -> list[int]:
    i = sizes.index(k)
    return list(sizes[max(1, i - 2):i]) + list(sizes[i + 1:i + 3])


def _out_of_line(sizes: tuple[int, ...], ms: list[float]) -> list[int]:
    """Sizes (k > 1) whose cost is more than OUT_OF_LINE away from the least-squares line
    through their neighbours (two on each side, c(1) left out: it is another kind of step),
    the MAX_RECHECKED furthest first."""
    out: list[tuple[float, int]] = []
    for i, k in enumerate(sizes):
        near = _neighbours(sizes, k) if k > 1 else []
        if len(near) < 2:
            continue
        xs = np.array(near, dtype=float)
        ys = np.array([ms[sizes.index(n)] for n in near], dtype=float)
        slope, intercept = np.polyfit(xs, ys, 1)
        expected = slope * k + intercept
        if expected > 0 and abs(ms[i] - expected) / expected > OUT_OF_LINE:
            out.append((abs(ms[i] - expected) / expected, k))
    return sorted(k for _, k in sorted(out, reverse=True)[:MAX_RECHECKED])


def measure_profile(ctx: LlamaContext, key: ProfileKey, *, model_path: Path, n_batch: int, n_seq: int,
                    verify_batch: int, n_vocab: int, quick: bool = False) -> Profile:
    curve, rechecked = measure_curve(ctx, n_batch=n_batch, n_seq=n_seq, verify_batch=verify_batch, n_vocab=n_vocab,
                                     sizes=QUICK_SIZES if quick else FULL_SIZES,
                                     repeats=QUICK_REPEATS if quick else FULL_REPEATS)
    curve.row_cell_ms = measure_depth_cost(ctx, curve, n_batch=n_batch, n_seq=n_seq, verify_batch=verify_batch,
                                           n_vocab=n_vocab, repeats=QUICK_REPEATS if quick else DEPTH_REPEATS)
    return Profile(device_key=key.device_hash, device=key.description, model_sha256=key.model_sha256,
                   model_path=str(model_path), n_threads=key.n_threads,
                   kv_cache=key.kv_k if key.kv_k == key.kv_v else f"{key.kv_k}/{key.kv_v}", engine=key.engine,
                   verify_batch=verify_batch, quick=quick, created=round(time.time(), 3),
                   prefix_tokens=PREFIX_TOKENS, rechecked=rechecked, curve=curve, backend=key.backend,
                   gpu_layers=key.gpu_layers)
