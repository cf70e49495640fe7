"""A thin, explicit wrapper over llama-cpp-python's low-level C API (pinned 0.3.36).

Why not `llama_cpp.Llama`: its Python overhead costs ~40% of decode speed
(docs/DESIGN.md, Measured facts about the development machines). Everything here is one
ctypes call per operation, and the batch arrays are numpy-owned so that native code and
numpy fill them without per-token Python.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

BUSY_SAMPLE_S = 0.1


def physical_cores() -> int:
    return max(1, psutil.cpu_count(logical=False) or os.cpu_count() or 1)


def busy_time_percent(interval: float) -> dict[str, float]:
    """Percent of all CPU time spent in each state over `interval` seconds, from two reads of
    the counters: psutil's own cpu_times_percent(interval=0.1) read at most ~20% busy on a
    fully busy 2-core VM (its counters tick coarser than 0.1 s there)."""
    before = psutil.cpu_times()
    time.sleep(interval)
    after = psutil.cpu_times()
    spent = {name: max(0.0, getattr(after, name) - getattr(before, name)) for name in after._fields}
    total = sum(spent.values()) or 1.0
    return {name: 100.0 * value / total for name, value in spent.items()}


@functools.cache
def default_threads() -> int:
    """The physical cores, less those other processes keep busy right now (sampled once per
    process). llama.cpp's threads meet at a barrier after every graph node, so a thread that
    has to wait for a core stalls all the others: next to busy processes, fewer threads
    decode faster (issue 18: 2 threads next to 3 busy processes made 5 tok/s, 1 thread 21)."""
    physical = physical_cores()
    load = busy_time_percent(BUSY_SAMPLE_S)
    busy_fields = ("user", "system", "irq", "softirq", "steal") + (("nice",) if os.nice(0) > 0 else ())
    busy = sum(load.get(name, 0.0) for name in busy_fields)  # fields vary by OS
    # niced processes count only when we are niced too: against them we get the CPU anyway
    busy_cpus = int(busy / 100 * (psutil.cpu_count() or physical) + 0.25)  # round, leaning towards idle
    return max(1, physical - busy_cpus)


def machine_is_busy() -> bool:
    """Other processes keep at least one core busy (the sample default_threads takes)."""
    return default_threads() < physical_cores()


# llama.cpp's CPU backend runs its threads under OpenMP (`OPENMP = 1` in system_info), with
# an OpenMP barrier after every graph node (~750 per SmolLM2 token). libgomp spins ~3 ms
# in a barrier before it sleeps. On an idle machine that spin is what keeps the barriers
# quick: spinning only ~0.1 ms made Qwen2.5-Coder-1.5B decode 5% slower than llama-server
# (0.95x, bench/RESULTS.md). Next to another busy process, though, the thread a barrier
# waits for is often not running, and each barrier burns a time slice: 2 threads next to
# one busy process made 0.3-1.4 tok/s where 1 thread made 16-110 (issue 18,
# bench/contention.py). So the short spin is for a machine that is busy when specdec
# starts. libgomp reads this once, when llama.cpp loads it; a user's own OpenMP settings
# win, and child processes (a llama-server peer in the bench) keep their defaults.
OMP_SPINCOUNT = "10000"
_spin_set = ("GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ
             and machine_is_busy())
if _spin_set:
    os.environ["GOMP_SPINCOUNT"] = OMP_SPINCOUNT
import llama_cpp as lc  # noqa: E402  (loads libgomp)

if _spin_set:
    del os.environ["GOMP_SPINCOUNT"]

from .errors import SpecdecError, UsageError, option

KV_CACHE_TYPES = {"f32": lc.GGML_TYPE_F32, "f16": lc.GGML_TYPE_F16,
                  "q8_0": lc.GGML_TYPE_Q8_0, "q4_0": lc.GGML_TYPE_Q4_0, "q4_1": lc.GGML_TYPE_Q4_1,
                  "q5_0": lc.GGML_TYPE_Q5_0, "q5_1": lc.GGML_TYPE_Q5_1, "iq4_nl": lc.GGML_TYPE_IQ4_NL}
_UNQUANTIZED_KV = {"f32", "f16"}

_backend_ready = False
_log_callback = None  # keeps the ctypes callback alive for as long as llama.cpp may call it


def init_backend(verbose: bool = False) -> None:
    """Initialise llama.cpp once per process; its logging stays off unless verbose."""
    global _backend_ready, _log_callback
    if _backend_ready:
        return

    def log_to_stderr(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if verbose and text:
            os.write(2, text)

    _log_callback = lc.llama_log_callback(log_to_stderr)
    lc.llama_log_set(_log_callback, ctypes.c_void_p(0))
    with interrupt_after():
        lc.llama_backend_init()
    _backend_ready = True


@contextlib.contextmanager
def interrupt_after():
    """Hold Ctrl-C back while llama.cpp runs code that calls into Python (the log callback,
    the load progress callback) and raise KeyboardInterrupt once the call has returned.

    A KeyboardInterrupt raised inside a ctypes callback is printed ("Exception ignored on
    calling ctypes callback") and dropped: the load went on and the run exited 0. Yields
    a list that is non-empty once Ctrl-C was pressed, for callbacks that can stop early."""
    pressed: list[int] = []
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield pressed  # signals only reach the main thread; an ignored SIGINT stays ignored
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt


def system_info() -> str:
    return lc.llama_print_system_info().decode("utf-8", "replace")


@functools.cache
def repacked_weights_safe() -> bool:
    """Whether the extra CPU weight layouts (`use_extra_bufts`) can be used in this build.

    A -march=native build on a CPU with AMX compiles ggml's AMX matmul kernels, which that
    layout routes quantized weights to; at the pinned llama.cpp they die with SIGILL on the
    first batched matmul (seen on a Sapphire Rapids VM: `tilezero` in an OpenMP worker, with
    the XTILEDATA permission granted). llama.cpp PR #26954 describes the causes: the
    permission is requested on the main thread only and the tile config on the stack can be
    optimised away. Such builds keep the weights in the plain layout.

    Needs no init_backend(): calling that here, before a caller's init_backend(verbose),
    would fix llama.cpp's logging off for the whole process."""
    return "AMX_INT8 = 1" not in system_info()


def supports_gpu_offload() -> bool:
    return bool(lc.llama_supports_gpu_offload())


class LlamaModel:
    """Weights + vocabulary of one GGUF file."""

    def __init__(self, path: Path, *, repacked_weights: bool = True, verbose: bool = False,
                 n_gpu_layers: int = 0):
        init_backend(verbose)
        params = lc.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        # The repacked CPU weight layout makes batched matmuls take a different code path
        # than single-token ones on some quant types (docs/DESIGN.md, Engine modes).
        params.use_extra_bufts = repacked_weights and repacked_weights_safe()
        self.n_gpu_layers = n_gpu_layers
        self.path = Path(path)
        with interrupt_after() as pressed:
            # Returning false stops the load, so Ctrl-C does not wait for a large model.
            progress = lc.llama_progress_callback(lambda fraction, user_data: not pressed)
            params.progress_callback = progress
            self._ptr = lc.llama_model_load_from_file(str(self.path).encode(), params)
        if not self._ptr:
            gpu = f"; with {n_gpu_layers} layers on the GPU: fewer may fit" if n_gpu_layers else ""
            raise SpecdecError(f"llama.cpp failed to load model {self.path} "
                               f"(run with {option('verbose')} for details{gpu})")
        self.vocab = lc.llama_model_get_vocab(self._ptr)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        # Asked of every emitted token: a set and a dict, where numpy indexing and a ctypes
        # call each cost ~10 us a token after a decode had flushed the caches (SmolLM2).
        self._eog = frozenset(t for t in range(self.n_vocab) if lc.llama_vocab_is_eog(self.vocab, t))
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)

    @property
    def ptr(self):
        return self._ptr

    def close(self) -> None:
        if self._ptr:
            lc.llama_model_free(self._ptr)
            self._ptr = None

    def chat_template(self) -> str | None:
        tmpl = lc.llama_model_chat_template(self._ptr, None)
        return tmpl.decode("utf-8", "replace") if tmpl else None

    def is_eog(self, token: int) -> bool:
        return token in self._eog

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> np.ndarray:
        data = text.encode("utf-8")
        capacity = len(data) + 16
        out = (lc.llama_token * capacity)()
        n = lc.llama_tokenize(self.vocab, data, len(data), out, capacity, add_special, parse_special)
        if n < 0:
            capacity = -n
            out = (lc.llama_token * capacity)()
            n = lc.llama_tokenize(self.vocab, data, len(data), out, capacity, add_special, parse_special)
        return np.ctypeslib.as_array(out)[:n].astype(np.int32)

    def token_bytes(self, token: int) -> bytes:
        """The token's text as raw bytes (may be a partial UTF-8 sequence); control tokens render empty."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._piece(token)
        return piece

    def _piece(self, token: int) -> bytes:
        n = lc.llama_token_to_piece(self.vocab, token, self._piece_buf, len(self._piece_buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            return buf.raw[:n]
        return self._piece_buf.raw[:n]

    def apply_chat_template(self, template: str, messages: list[tuple[str, str]]) -> str:
        """Render (role, content) messages with llama.cpp's built-in template matcher,
        ending with the assistant header so generation starts the reply."""
        keep = [(r.encode(), c.encode()) for r, c in messages]
        chat = (lc.llama_chat_message * len(keep))()
        for i, (role, content) in enumerate(keep):
            chat[i].role = role
            chat[i].content = content
        size = 4 * sum(len(c) for _, c in keep) + 1024
        buf = ctypes.create_string_buffer(size)
        n = lc.llama_chat_apply_template(template.encode(), chat, len(keep), True, buf, size)
        if n > size:
            buf = ctypes.create_string_buffer(n)
            n = lc.llama_chat_apply_template(template.encode(), chat, len(keep), True, buf, n)
        if n < 0:
            raise SpecdecError(f"the model's chat template is not supported by llama.cpp; use {option('raw')} "
                               "(the prompt as is, without the template)")
        return buf.raw[:n].decode("utf-8", "replace")


@dataclass
class ContextConfig:
    n_ctx: int = 4096
    n_batch: int = 512
    # Largest physical batch: verification sub-batches never exceed it, which is how a
    # model whose batched kernels drift from single-token ones is kept exact.
    n_ubatch: int = 512
    n_seq_max: int = 64
    n_threads: int | None = None
    kv_k: str = "f16"
    kv_v: str = "f16"
    flash_attn: bool | None = None  # None = llama.cpp decides; a quantized V cache forces it on


class LlamaContext:
    """One llama.cpp context with a unified KV cache, so that one batch can hold a draft
    tree whose branches are separate sequences sharing the accepted prefix."""

    def __init__(self, model: LlamaModel, config: ContextConfig):
        for name in (config.kv_k, config.kv_v):
            if name not in KV_CACHE_TYPES:
                raise UsageError(f"unknown KV cache type {name!r} (choose from {', '.join(KV_CACHE_TYPES)})")
        self.model = model
        self.config = config
        # llama.cpp reserves an output row per sequence (a draft-tree branch) in every batch,
        # and caps a batch at the context size: a smaller context aborts the process
        # (GGML_ASSERT in output_reserve).
        if min(config.n_ctx, config.n_batch) < config.n_seq_max:
            raise UsageError(f"{option('n_ctx')} {config.n_ctx} is too small: the smallest context that works is "
                             f"{config.n_seq_max} tokens, one per branch of a {option('tree_size')} "
                             f"{config.n_seq_max} tree")
        params = lc.llama_context_default_params()
        params.n_ctx = config.n_ctx
        params.n_batch = config.n_batch
        params.n_ubatch = min(config.n_ubatch, config.n_batch)
        params.n_seq_max = config.n_seq_max
        threads = config.n_threads or default_threads()
        params.n_threads = threads
        params.n_threads_batch = threads
        params.type_k = KV_CACHE_TYPES[config.kv_k]
        params.type_v = KV_CACHE_TYPES[config.kv_v]
        if config.flash_attn is None:
            quantized_v = config.kv_v not in _UNQUANTIZED_KV
            params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if quantized_v else lc.LLAMA_FLASH_ATTN_TYPE_AUTO
        else:
            params.flash_attn_type = (lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if config.flash_attn
                                      else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        params.kv_unified = True
        # Rolling back rejected draft cells is only safe with the full-size sliding-window cache.
        params.swa_full = True
        params.no_perf = True
        # With no layer offloaded, a GPU build would still send large batches' matmuls to
        # the GPU (weights copied per call): 0 GPU layers means the CPU, as the stats say,
        # and exactness.py's probe for the CPU holds.
        params.op_offload = model.n_gpu_layers != 0
        with interrupt_after():
            self._ptr = lc.llama_init_from_model(model.ptr, params)
        if not self._ptr:
            raise SpecdecError(f"llama.cpp failed to create a context (try a smaller {option('n_ctx')}, "
                               f"or {option('verbose')})")
        self.n_ctx = lc.llama_n_ctx(self._ptr)
        self.n_threads = threads
        self.memory = lc.llama_get_memory(self._ptr)
        self._logits_key: tuple[int, int] | None = None
        self._logits_view: np.ndarray | None = None

    @property
    def ptr(self):
        return self._ptr

    def close(self) -> None:
        if self._ptr:
            lc.llama_free(self._ptr)
            self._ptr = None

    def decode(self, batch: "TokenBatch") -> None:
        rc = lc.llama_decode(self._ptr, batch.struct)
        if rc != 0:
            if rc == 1:
                raise SpecdecError(f"the KV cache is full (context overflow); use a larger {option('n_ctx')}")
            raise SpecdecError(f"llama_decode failed with code {rc}")

    def decode_chain(self, batch: "TokenBatch", tokens: np.ndarray, first_pos: int, seq_ids: np.ndarray,
                     chunk: int, on_logits: Callable[[int, np.ndarray], None] | None = None) -> None:
        """Decode `tokens` at consecutive positions from `first_pos`, each in `seq_ids`, in
        llama_decode calls of at most `chunk` tokens: the one chunked loop of prefill, the
        tuner, the exactness probe and the ONNX comparison. Without `on_logits` no logits
        are computed (prefill); with it, every token's are, and on_logits(offset, logits)
        sees each call's rows while they are valid."""
        for start in range(0, len(tokens), chunk):
            part = tokens[start:start + chunk]
            batch.set_chain(part, first_pos + start, seq_ids, all_outputs=on_logits is not None)
            if on_logits is None:
                batch.output[len(part) - 1] = 0
            self.decode(batch)
            if on_logits is not None:
                on_logits(start, self.logits(len(part)))

    def logits(self, n_rows: int) -> np.ndarray:
        """Zero-copy float32 view [n_rows, n_vocab] of the logits of the last decode,
        valid until the next decode."""
        ptr = lc.llama_get_logits(self._ptr)
        # The buffer stays where it is between decodes: its view is made once per address
        # and row count (np.ctypeslib.as_array cost ~50 us a step on SmolLM2, 0.6%).
        key = (ctypes.addressof(ptr.contents), n_rows)
        if key != self._logits_key:
            self._logits_view = np.ctypeslib.as_array(ptr, shape=(n_rows, self.model.n_vocab))
            self._logits_key = key
        return self._logits_view

    def seq_rm(self, seq: int, p0: int, p1: int = -1) -> bool:
        return bool(lc.llama_memory_seq_rm(self.memory, seq, p0, p1))

    def seq_cp(self, src: int, dst: int, p0: int, p1: int = -1) -> None:
        lc.llama_memory_seq_cp(self.memory, src, dst, p0, p1)

    def seq_pos_max(self, seq: int) -> int:
        return lc.llama_memory_seq_pos_max(self.memory, seq)

    def clear(self) -> None:
        lc.llama_memory_clear(self.memory, True)

    def kv_bytes(self, seq: int = 0) -> int:
        """Size of the sequence's serialized KV state: the cells actually in use, measured."""
        return int(lc.llama_state_seq_get_size(self._ptr, seq))


class TokenBatch:
    """A llama_batch whose arrays are numpy-owned, so that they can be filled with
    vectorised numpy copies (or by native code) instead of a Python loop per token."""

    def __init__(self, capacity: int, n_seq_max: int):
        self.capacity = capacity
        self.n_seq_max = n_seq_max
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.zeros(capacity, dtype=np.int32)
        self.seq_ids = np.zeros((capacity, n_seq_max), dtype=np.int32)
        self.output = np.zeros(capacity, dtype=np.int8)
        row_bytes = self.seq_ids.strides[0]
        base = self.seq_ids.ctypes.data
        self._seq_ptrs = (ctypes.POINTER(ctypes.c_int32) * capacity)(
            *[ctypes.cast(base + i * row_bytes, ctypes.POINTER(ctypes.c_int32)) for i in range(capacity)])
        self.struct = lc.llama_batch()
        self.struct.token = self.token.ctypes.data_as(ctypes.POINTER(lc.llama_token))
        self.struct.embd = None
        self.struct.pos = self.pos.ctypes.data_as(ctypes.POINTER(lc.llama_pos))
        self.struct.n_seq_id = self.n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        self.struct.seq_id = self._seq_ptrs
        self.struct.logits = self.output.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self.struct.n_tokens = 0

    @property
    def n_tokens(self) -> int:
        return self.struct.n_tokens

    def set_chain(self, tokens: np.ndarray, first_pos: int, seq_ids: np.ndarray, all_outputs: bool) -> None:
        """A plain run of tokens at consecutive positions, every token in the same sequences;
        outputs for every token, or for the last one only."""
        n = len(tokens)
        self.token[:n] = tokens
        self.pos[:n] = np.arange(first_pos, first_pos + n, dtype=np.int32)
        self.n_seq_id[:n] = len(seq_ids)
        self.seq_ids[:n, :len(seq_ids)] = seq_ids
        self.output[:n] = 1 if all_outputs else 0
        self.output[n - 1] = 1
        self.struct.n_tokens = n

    def set_token(self, token: int, pos: int, seq_ids: np.ndarray) -> None:
        """One token with its logits, in the given sequences: every plain decoding step.
        Element stores, where set_chain's slices and position range cost ~10 us more a step
        after a decode had flushed the caches."""
        self.token[0] = token
        self.pos[0] = pos
        self.n_seq_id[0] = len(seq_ids)
        self.seq_ids[0, :len(seq_ids)] = seq_ids
        self.output[0] = 1
        self.struct.n_tokens = 1

    def set_rows(self, tokens: np.ndarray, pos: np.ndarray, seq_ids: np.ndarray, n_seq_id: np.ndarray,
                 outputs: np.ndarray) -> None:
        """Arbitrary rows, e.g. a draft tree: each with its position, sequence ids and
        whether its logits are wanted."""
        n = len(tokens)
        self.token[:n] = tokens
        self.pos[:n] = pos
        self.n_seq_id[:n] = n_seq_id
        self.seq_ids[:n, :seq_ids.shape[1]] = seq_ids
        self.output[:n] = outputs
        self.struct.n_tokens = n
