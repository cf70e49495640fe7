"""From command-line options to a ready Generator: resolve the model, validate the GGUF,
load it, and turn user text into prompt tokens. Shared by `run`, `chat` and `bench`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .devices import device_fingerprint
from .drafting import DraftSettings
from .errors import SpecdecError, UsageError
from .generator import Generator
from .gguf_file import check_gguf, file_sha256
from .history import History, history_path
from .options import KV_CHOICES, EngineConfig, SamplingParams, default_kv_types
from .paths import cache_dir, write_cache_file
from .registry import Registry
from .split_model import Progress
from .tuning import ProfileKey, load_profile, policy_from_profile

UNQUANTIZED_KV = {"f32", "f16"}


@dataclass
class RunOptions:
    model: str | None = None
    ctx: int = 4096
    threads: int | None = None
    kv_cache: str | None = None  # K and V; kv_k / kv_v override one of them
    kv_k: str | None = None
    kv_v: str | None = None
    verbose: bool = False
    draft: str | None = None
    tree_size: int | None = None
    draft_len: int | None = None
    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    seed: int | None = None
    prefill: str = "auto"
    ep: str | None = None
    exact: bool | None = None  # None: the model's models.toml default, else the fast mode
    history: bool = True  # draft from, and add to, this model's history of earlier runs
    gpu_layers: str = "auto"  # "auto" | "all" | a count (offload.plan_offload)


@dataclass
class Session:
    alias: str
    generator: Generator
    sampling: SamplingParams
    draft: DraftSettings
    profile_key: ProfileKey  # where `specdec tune` stores this model's cost curve on this device

    def prompt_tokens(self, text: str, *, system: str | None = None, raw: bool = False) -> np.ndarray:
        if not text.strip():
            raise UsageError("the prompt is empty")
        if raw:
            if system:
                raise UsageError("--system needs the chat template; drop --raw")
            return self.generator.tokenize(text, special=False)
        messages = ([("system", system)] if system else []) + [("user", text)]
        return self.generator.tokenize(self.generator.render_chat(messages), special=True)

    def close(self) -> None:
        self.generator.save_matrix()
        if self.generator.policy is not None:
            write_cache_file(learned_path(self.profile_key), json.dumps(self.generator.policy.learned()))
        self.generator.close()


def learned_path(key: ProfileKey) -> Path:
    """Where the policy's acceptance rates for this model and engine mode are kept."""
    return cache_dir() / "policy" / f"{key.model_sha256[:16]}-{key.engine}.json"


def _read_json(path: Path) -> dict:
    """A cache file's JSON, or {} when it is missing or unreadable (it is rebuilt anyway)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def kv_cache_types(options: RunOptions, model_default: str | None, exact: bool) -> tuple[str, str]:
    """K and V cache types: --kv-k / --kv-v, else --kv-cache, else the model's models.toml
    `kv_cache`, else the engine mode's default (generator.default_kv_types)."""
    if model_default is not None and model_default not in KV_CHOICES:
        raise UsageError(f"models.toml sets kv_cache = {model_default!r}; choose from {', '.join(KV_CHOICES)}")
    both = options.kv_cache or model_default
    default_k, default_v = default_kv_types(exact)
    kv_k = options.kv_k or both or default_k
    kv_v = options.kv_v or both or default_v
    for flag, name in (("--kv-k", kv_k), ("--kv-v", kv_v)):
        if name not in KV_CHOICES:  # the CLI checks too; this guards the library API
            raise UsageError(f"{flag} {name!r} is not one of {', '.join(KV_CHOICES)}")
    return kv_k, kv_v


def open_session(options: RunOptions, progress: Progress | None = None) -> Session:
    """`progress` follows a model assembled from split packages on its first use."""
    sampling = SamplingParams(temperature=options.temperature, top_k=options.top_k,
                              top_p=options.top_p, seed=options.seed)
    sampling.validate()
    registry = Registry.load()
    resolved = registry.resolve(options.model, progress)
    info = check_gguf(resolved.path)
    # A context past the trained one only buys memory (a huge one, all of it); the default
    # stays allowed for models trained on less.
    if info.context_length and options.ctx > max(info.context_length, RunOptions.ctx):
        raise UsageError(f"--ctx {options.ctx} is more than {resolved.alias}'s training context "
                         f"({info.context_length} tokens)")
    entry = resolved.entry
    defaults = entry.defaults if entry is not None else {}
    exact = options.exact if options.exact is not None else bool(defaults.get("exact", False))
    kv_k, kv_v = kv_cache_types(options, defaults.get("kv_cache"), exact)
    draft = DraftSettings(
        mode=options.draft or defaults.get("draft", DraftSettings.mode),
        tree_size=options.tree_size or DraftSettings.tree_size,
        draft_len=DraftSettings.draft_len if options.draft_len is None else options.draft_len)
    config = EngineConfig(n_ctx=options.ctx, n_threads=options.threads, exact=exact, kv_k=kv_k, kv_v=kv_v,
                          verbose=options.verbose, prefill=options.prefill, ep=options.ep,
                          gpu_layers=options.gpu_layers)
    matrix = cache_dir() / "recycling" / f"{file_sha256(resolved.path)}.matrix"
    try:
        generator = Generator(resolved.path, config,
                              chat_template=info.chat_template or (entry.chat_template if entry else None),
                              matrix_path=matrix,
                              history=History(history_path(file_sha256(resolved.path))) if options.history else None)
    except SpecdecError as exc:
        if "failed to create a context" not in str(exc) or not {kv_k, kv_v} - UNQUANTIZED_KV:
            raise
        # llama.cpp refuses a quantized cache whose blocks (32 values) don't divide the
        # model's head size, or a quantized V where flash attention can't run.
        raise UsageError(f"llama.cpp could not create a K={kv_k} V={kv_v} KV cache for this model "
                         "(or ran out of memory); try --kv-cache f16, a smaller --ctx, or --verbose") from None
    key = ProfileKey(fingerprint=device_fingerprint(), n_threads=generator.ctx.n_threads, kv_k=kv_k, kv_v=kv_v,
                     engine="exact" if exact else "fast", model_sha256=file_sha256(resolved.path),
                     backend=generator.offload.backend, gpu_layers=generator.offload.n_gpu_layers)
    generator.policy = policy_from_profile(load_profile(key.path()), generator.verify_batch,
                                           max_tree=draft.tree_size, max_chain=draft.draft_len)
    generator.policy.restore(_read_json(learned_path(key)))
    return Session(alias=resolved.alias, generator=generator, sampling=sampling, draft=draft, profile_key=key)
