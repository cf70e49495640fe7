"""The Generator: prefill, then one verification step at a time (verifier.py; docs/DESIGN.md,
One step), each step's draft from the drafter (drafting.py) sized by the policy (policy.py)
in `auto` mode; stopping, streamed text and statistics.
"""

from __future__ import annotations

import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import _native as nat
from .devices import offload_plan
from .drafting import CHAIN_SOURCE, DRAFT_MODES, MATRIX_K, USES_TREE, DraftSettings, Drafter, fence_tokens
from .errors import SpecdecError, UsageError, option
from .exactness import exactness_rule
from .history import History
from .llama import ContextConfig, LlamaContext, LlamaModel, TokenBatch, repacked_weights_safe
from .metrics import DepthCounter, GenerationStats, decode_rate, rows_per_token, tokens_per_step
from .options import EngineConfig, SamplingParams, default_kv_types
from .prefill.backend import MIN_ONNX_TOKENS, measured_prefiller, open_prefiller, prefill_with_fallback
from .prefill.measured import PrefillSpeed
from .prefill.progress import export_progress
from .policy import SpeculationPolicy, prior_curve
from .text_stream import TextStream
from .verifier import Verifier


@dataclass
class GenerationResult:
    text: str
    tokens: list[int]
    finish_reason: str  # "stop" | "length" (max_tokens) | "context" (the context is full) | "interrupted"
    stats: GenerationStats


class Generator:
    """Loads a GGUF model once and generates from it; the KV cache of the previous call is
    reused for the longest common prefix, so chat turns prefill only what is new."""

    def __init__(self, model_path: Path, config: EngineConfig | None = None, *,
                 chat_template: str | None = None, matrix_path: Path | None = None,
                 policy: SpeculationPolicy | None = None, history: History | None = None):
        self.config = config or EngineConfig()
        default_k, default_v = default_kv_types(self.config.exact)
        self.config.kv_k = self.config.kv_k or default_k
        self.config.kv_v = self.config.kv_v or default_v
        # llama.cpp caps a batch at the requested context size (and aborts on a larger one).
        self.config.n_batch = min(self.config.n_batch, self.config.n_ctx)
        self.model_path = Path(model_path)
        self.offload = offload_plan(self.model_path, self.config.gpu_layers, n_ctx=self.config.n_ctx,
                                    n_batch=self.config.n_batch, kv_k=self.config.kv_k, kv_v=self.config.kv_v)
        if self.offload.warning:
            _warn(self.offload.warning)
        # Why `auto` cannot speculate here, if it cannot: set when no batch is exact.
        self.plain_reason: str | None = None
        if self.config.exact:
            rule = exactness_rule(self.model_path, verbose=self.config.verbose, n_threads=self.config.n_threads,
                                  backend=self.offload.backend, n_gpu_layers=self.offload.n_gpu_layers,
                                  kv_types=(self.config.kv_k, self.config.kv_v))
            self.repacked_weights, self.verify_batch = rule.repacked_weights, rule.max_verify_batch
            if self.verify_batch <= 1:
                self.plain_reason = (f"exact mode: on {self.offload.backend} no batch of more than one token "
                                     f"decodes bit-identically to one-token decoding for this model (probed), "
                                     f"so auto decodes plainly")
        else:
            self.repacked_weights, self.verify_batch = repacked_weights_safe(), self.config.n_batch
        self.model = LlamaModel(self.model_path, repacked_weights=self.repacked_weights,
                                verbose=self.config.verbose, n_gpu_layers=self.offload.n_gpu_layers)
        # Flash attention on (as llama.cpp's `auto` picks on a CPU): below 64 query rows its
        # CPU kernel sums each row the same way whatever the batch, which keeps exact-mode
        # verification exact (see exactness.py), and with f16 K/V prefill takes its tiled kernel.
        self.ctx = LlamaContext(self.model, ContextConfig(
            n_ctx=self.config.n_ctx, n_batch=self.config.n_batch, n_ubatch=self.config.n_batch,
            n_seq_max=self.config.n_seq_max, n_threads=self.config.n_threads,
            kv_k=self.config.kv_k, kv_v=self.config.kv_v, flash_attn=True))
        self.n_vocab = self.model.n_vocab
        self.chat_template = self.model.chat_template() or chat_template
        self.matrix_path = matrix_path
        self._batch = TokenBatch(self.config.n_batch, self.config.n_seq_max)
        self._all_seqs = np.arange(self.config.n_seq_max, dtype=np.int32)
        self._kv_tokens: list[int] = []  # tokens whose KV cells are in every shared sequence
        fences = fence_tokens(lambda text: self.model.tokenize(text, add_special=False, parse_special=False),
                              self.model.token_bytes)
        self.drafter = Drafter(self.n_vocab, self._load_matrix(), stop_tokens=fences)
        self.verifier = Verifier(self.ctx, self._batch, self.drafter, verify_batch=self.verify_batch,
                                 n_seq_max=self.config.n_seq_max)
        self.history = history  # earlier prompts and outputs: drafted from, and added to
        self.prefiller = open_prefiller(self.model_path, self.config.prefill, self.config.ep,
                                        n_threads=self.ctx.n_threads, kv_types=(self.config.kv_k, self.config.kv_v),
                                        warn=_warn, progress=export_progress())
        self._measured_prefill: PrefillSpeed | None = None  # use_measured_prefill
        # `--draft auto` asks it for each step's sizes: the session's, from the device's
        # measured profile (tuning.py); without one, the built-in prior curve.
        self.policy = policy

    def use_measured_prefill(self, measured: PrefillSpeed | None) -> None:
        """`--prefill auto` without an NPU: ONNX prefill for the prompt lengths at which the
        device profile (`specdec tune`) measured it faster, if its graph is already exported.
        Nothing is built until a prompt is long enough for it: the prefiller costs ~70 ms
        (onnxruntime's import, reading the GGUF's layout) that a short `run` would only lose."""
        if self.prefiller is None:
            self._measured_prefill = measured

    def _open_measured_prefiller(self, n_new: int) -> None:
        """Build the measured ONNX prefiller at the first prompt whose `n_new` tokens it
        would prefill faster, graph load included; decided once."""
        measured = self._measured_prefill
        if measured is None or n_new < MIN_ONNX_TOKENS or not measured.onnx_faster(n_new, loaded=False):
            return
        self._measured_prefill = None
        self.prefiller = measured_prefiller(self.model_path, measured, self.config.prefill, self.config.ep,
                                            n_threads=self.ctx.n_threads, kv_types=(self.config.kv_k, self.config.kv_v))

    def close(self) -> None:
        self.ctx.close()
        self.model.close()

    # ---- prompts -------------------------------------------------------------------

    def render_chat(self, messages: list[tuple[str, str]]) -> str:
        if not self.chat_template:
            raise SpecdecError(f"this model has no chat template; use {option('raw')} "
                               f"or set chat_template in models.toml")
        return self.model.apply_chat_template(self.chat_template, messages)

    def tokenize(self, text: str, *, special: bool = True) -> np.ndarray:
        """Tokens of a prompt: BOS added when the model wants it; special-token text
        (chat markers) parsed only for templated prompts."""
        return self.model.tokenize(text, add_special=True, parse_special=special)

    # ---- generation ----------------------------------------------------------------

    def generate(self, prompt: np.ndarray, *, max_tokens: int = 256, sampling: SamplingParams | None = None,
                 draft: DraftSettings | None = None, stop: tuple[str, ...] = (),
                 on_text: Callable[[str], None] | None = None) -> GenerationResult:
        sampling = sampling or SamplingParams()
        draft = draft or DraftSettings()
        sampling.validate()
        if draft.mode not in DRAFT_MODES:
            raise UsageError(f"unknown {option('draft')} mode {draft.mode!r} (choose from {', '.join(DRAFT_MODES)})")
        if max_tokens <= 0:
            raise UsageError(f"{option('max_tokens')} must be positive, got {max_tokens}")
        prompt = np.ascontiguousarray(prompt, dtype=np.int32)
        if len(prompt) == 0:
            raise UsageError("the prompt is empty")
        if len(prompt) >= self.ctx.n_ctx:
            raise SpecdecError(f"the prompt has {len(prompt)} tokens but the context holds {self.ctx.n_ctx}; "
                               f"use a larger {option('n_ctx')} or a shorter prompt")
        tree_size, draft_len = self._resolve_sizes(draft)
        plain = draft.mode == "auto" and self.plain_reason is not None
        if plain:  # verifying a draft would cost a one-token call per row: it cannot pay
            tree_size, draft_len = 1, 0
        stats = GenerationStats(n_prompt=len(prompt), draft=draft.mode, tree_size=tree_size, draft_len=draft_len,
                                engine="exact" if self.config.exact else "fast", kv_cache=self.config.kv_k if self.config.kv_k == self.config.kv_v
                                else f"{self.config.kv_k}/{self.config.kv_v}",
                                backend=self.offload.backend, gpu_layers=self.offload.n_gpu_layers,
                                plain_reason=self.plain_reason if plain else None)
        sampler = None
        if not sampling.greedy:
            # A drawn seed has 53 bits, so that JSON readers that hold numbers as doubles
            # (JavaScript, jq 1.6) print it back exactly and the run can be repeated.
            stats.seed = sampling.seed if sampling.seed is not None else secrets.randbits(53)
            sampler = nat.Sampler(stats.seed)
        text = TextStream(stop, on_text)
        depths = DepthCounter()
        out: list[int] = []
        n_emitted = 0  # tokens the steps emitted: `out` plus an end-of-generation token
        finish = "length"

        t0 = time.perf_counter()
        n_past = self._prefill(prompt, stats)
        stats.prefill_s = time.perf_counter() - t0
        # Plain decoding (also `auto` where drafts cannot pay) and recycling trees look no
        # chain up: their context is not indexed.
        chain_source = CHAIN_SOURCE[draft.mode] if draft_len > 0 else None
        if self.history is not None and chain_source == "suffix":
            t_history = time.perf_counter()
            self.drafter.history = self.history.automaton_for(prompt)
            stats.draft_ms += (time.perf_counter() - t_history) * 1000
        else:
            self.drafter.history = None
        self.drafter.reset_context(indexed=(chain_source,) if chain_source is not None else ())
        if chain_source is not None:
            self.drafter.observe(prompt)
        root = int(prompt[-1])
        deferred: list[int] = []  # verified tokens whose KV cells are written in the next step
        policy = self._auto_policy(tree_size, draft_len) if draft.mode == "auto" and not plain else None
        t_decode = time.perf_counter()
        try:
            while len(out) < max_tokens:
                room = self.ctx.n_ctx - n_past - len(deferred)
                if room < 1:
                    finish = "context"
                    break
                # A step emits its accepted draft and one more token: near max_tokens, rows
                # beyond what may still be emitted could only be thrown away (on a 2-core CPU
                # a 31-row bet 6 tokens before the end cost as much as 10 plain steps).
                wanted = max_tokens - len(out)
                found = self.drafter.lookup(chain_source, min(draft_len, wanted - 1))
                step_tree, step_chain = tree_size, len(found.tokens)
                if policy is not None and wanted > 1:
                    choice = policy.choose(found.tokens, found.match_length, n_deferred=len(deferred),
                                           agreement=found.agreement, depth=n_past)
                    step_tree, step_chain = choice.tree_size, choice.draft_len
                rows = min(room, self.config.n_batch - len(deferred))  # one batch holds the deferred tokens too
                step_tree = min(step_tree, rows) if wanted > 1 else 1
                chain = found.tokens[:min(step_chain, max(0, rows - step_tree))]
                step = self.verifier.step(deferred, root, n_past, draft.mode, step_tree, chain, sampling, sampler,
                                          stats, position=len(out))
                if len(chain):
                    stats.chains_from[found.origin] = stats.chains_from.get(found.origin, 0) + 1
                if policy is not None:
                    policy.observe(step.accepted)
                n_past += len(step.committed)
                self._kv_tokens.extend(step.committed)
                deferred = step.deferred
                depths.add(step.tree.depth, len(step.accepted) - 1)
                stats.steps += 1
                stats.speculative_steps += step.tree.size > 1
                stats.rows_verified += step.tree.size
                if stats.steps == 1:
                    stats.ttft_s = time.perf_counter() - t0
                done = False
                for tok in step.accepted:
                    n_emitted += 1
                    if self.model.is_eog(tok):
                        finish, done = "stop", True
                        break
                    out.append(tok)
                    text.push(self.model.token_bytes(tok))
                    if text.stopped:
                        finish, done = "stop", True
                        break
                    if len(out) >= max_tokens:
                        finish, done = "length", True
                        break
                if done:
                    break
                if chain_source is not None:
                    self.drafter.observe(np.array(step.accepted, dtype=np.int32))
                root = step.accepted[-1]
        except KeyboardInterrupt:
            finish = "interrupted"
            self._drop_uncommitted(len(self._kv_tokens))
        finally:
            text.finish()
            stats.decode_s = time.perf_counter() - t_decode
        if self.history is not None:
            # One document: the prompt's new part and its answer, so that a prompt seen
            # again finds the answer it had (and is found by its shared text).
            self.history.add([np.concatenate([prompt[len(prompt) - stats.n_prompt_prefilled:],
                                              np.array(out, dtype=np.int32)])])
        stats.n_generated = len(out)
        # As llama-server counts it: its first token comes out of the prompt's pass, ours
        # out of the first step (the last prompt token, decoded as the root).
        after_first = stats.decode_s - (stats.ttft_s - stats.prefill_s) if stats.steps > 1 else stats.decode_s
        stats.tokens_per_s = round(decode_rate(len(out), after_first), 2)
        stats.tokens_per_step = round(tokens_per_step(n_emitted, stats.steps), 4)
        stats.rows_per_token = round(rows_per_token(stats.rows_verified, n_emitted), 4)
        stats.accept_rate_by_depth = depths.rates()
        stats.kv_bytes = self.ctx.kv_bytes(0)
        for name in ("prefill_s", "decode_s", "ttft_s"):
            setattr(stats, name, round(getattr(stats, name), 6))
        for name in ("draft_ms", "decode_ms", "verify_ms"):
            setattr(stats, name, round(getattr(stats, name), 3))
        return GenerationResult(text=text.text, tokens=out, finish_reason=finish, stats=stats)

    def next_token_logits(self, tokens: np.ndarray) -> np.ndarray:
        """Plain decoding's logits for the token after `tokens` (a copy): the last token
        decoded alone, as every plain step is. The bench measures a divergence's logit gap
        with it. The cache keeps `tokens[:-1]` for the next call."""
        tokens = np.ascontiguousarray(tokens, dtype=np.int32)
        n_past = self._prefill(tokens, GenerationStats())
        self._batch.set_chain(tokens[-1:], n_past, self._all_seqs, all_outputs=True)
        self.ctx.decode(self._batch)
        logits = self.ctx.logits(1)[0].copy()
        self._drop_uncommitted(n_past)
        return logits

    def save_matrix(self) -> None:
        if self.matrix_path is not None:
            self.drafter.save_matrix(self.matrix_path)

    # ---- internals -----------------------------------------------------------------

    def _auto_policy(self, max_tree: int, max_chain: int) -> SpeculationPolicy:
        """The policy for `--draft auto`, whose sizes are capped by --tree-size/--draft-len."""
        if self.policy is None:
            self.policy = SpeculationPolicy(prior_curve(), verify_batch=self.verify_batch, max_tree=max_tree,
                                            max_chain=max_chain, measured=False)
        self.policy.set_limits(max_tree, max_chain)
        self.policy.reset()
        return self.policy

    def _resolve_sizes(self, draft: DraftSettings) -> tuple[int, int]:
        """Tree nodes (root included) and chain length for a mode (for `auto`: the caps)."""
        tree = draft.tree_size if draft.mode in USES_TREE else 1
        chain = draft.chain_cap if CHAIN_SOURCE[draft.mode] else 0
        if draft.draft_len is None:  # the mode's own cap shrinks to a small context's batch
            chain = max(0, min(chain, self.config.n_batch - tree))
        if tree < 1 or chain < 0:
            raise UsageError(f"{option('tree_size')} must be >= 1 and {option('draft_len')} >= 0")
        if tree > self.config.n_seq_max:  # a bench method asking for a larger tree than its session
            raise UsageError(f"{option('tree_size')} {tree} is more than the {self.config.n_seq_max} branches "
                             f"this session was opened for")
        if tree + chain > self.config.n_batch:
            raise UsageError(f"{option('tree_size')} + {option('draft_len')} must fit one batch "
                             f"({self.config.n_batch})")
        return tree, chain

    def _prefill(self, prompt: np.ndarray, stats: GenerationStats) -> int:
        """Put every prompt token but the last into the KV cache (the last one is the first
        step's root, which yields the first logits). Reuses the cached common prefix."""
        body = prompt[:-1]
        keep = _common_prefix(self._kv_tokens, body)
        if keep < len(self._kv_tokens):
            self._drop_uncommitted(keep)
        pos = keep
        stats.prefill_backend = "llama"
        self._open_measured_prefiller(len(body) - keep)  # a no-op unless `auto` has a measured speed pending
        # ONNX continues from the cached prefix too (a chat turn's new tokens)
        if prefill_with_fallback(self.prefiller, self.ctx, body, self.config.n_seq_max, start=keep, warn=_warn):
            pos = len(body)
            stats.prefill_backend = self.prefiller.backend_name
        try:
            self.ctx.decode_chain(self._batch, body[pos:], pos, self._all_seqs, self.config.n_batch)
        except KeyboardInterrupt:
            self._drop_uncommitted(len(self._kv_tokens))  # written cells that _kv_tokens does not record
            raise
        self._kv_tokens.extend(int(t) for t in body[keep:])
        stats.n_prompt_prefilled = len(body) - keep + 1
        return len(body)

    def _drop_uncommitted(self, n_past: int) -> None:
        self.ctx.seq_rm(-1, n_past, -1)  # -1: every sequence
        del self._kv_tokens[n_past:]

    def _load_matrix(self) -> nat.RecyclingMatrix | None:
        if self.matrix_path is None or not self.matrix_path.exists():
            return None
        try:
            return nat.RecyclingMatrix.load(str(self.matrix_path), self.n_vocab, MATRIX_K)
        except ValueError:
            return None


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")


def _common_prefix(a: list[int], b: np.ndarray) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.nonzero(np.asarray(a[:n], dtype=np.int32) != b[:n])[0]
    return int(diff[0]) if len(diff) else n
