"""From command-line options to a ready Generator: resolve the model, fill in every option
the command line left out (the model's models.toml default, else the built-in one),
validate the GGUF, load it, and turn user text into prompt tokens. Shared by `run`, `chat`,
`bench` and `tune`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .devices import device_fingerprint
from .drafting import DRAFT_MODES, DraftSettings
from .errors import SpecdecError, UsageError, option
from .generator import Generator
from .gguf_file import check_gguf, file_sha256
from .history import History, history_path
from .options import KV_CHOICES, EngineConfig, SamplingParams, default_kv_types
from .paths import cache_dir, write_cache_file
from .prefill.backend import PREFILL_MODES
from .registry import Registry
from .split_model import Progress
from .tuning import ProfileKey, load_profile, policy_from_profile

UNQUANTIZED_KV = {"f32", "f16"}


@dataclass
class RunOptions:
    """What a run asks for. None: not given; open_session fills it in with the model's
    models.toml default, else the built-in one (resolve_options)."""

    model: str | None = None
    ctx: int | None = None
    threads: int | None = None  # built-in: the physical cores other processes leave idle
    kv_cache: str | None = None  # K and V; kv_k / kv_v override one of them
    kv_k: str | None = None
    kv_v: str | None = None
    verbose: bool = False
    draft: str | None = None
    tree_size: int | None = None
    draft_len: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None  # built-in: a random one
    prefill: str | None = None
    ep: str | None = None
    exact: bool | None = None
    max_tokens: int | None = None
    system: str | None = None
    history: bool = True  # draft from, and add to, this model's history of earlier runs
    largest_tree: int = 1  # the largest --tree-size a generation asks for besides `tree_size` (bench methods)
    gpu_layers: str = "auto"  # "auto" | "all" | a count (offload.plan_offload)


# Each option that neither the command line nor the model's models.toml sets. None leaves
# it to the engine: threads, the KV cache types (default_kv_types), a random seed, no system prompt.
BUILT_IN_DEFAULTS = {
    "ctx": EngineConfig.n_ctx, "threads": EngineConfig.n_threads, "kv_cache": None,
    "draft": DraftSettings.mode, "tree_size": DraftSettings.tree_size, "draft_len": DraftSettings.draft_len,
    "temperature": SamplingParams.temperature, "top_k": SamplingParams.top_k, "top_p": SamplingParams.top_p,
    "seed": SamplingParams.seed, "prefill": EngineConfig.prefill, "ep": EngineConfig.ep,
    "exact": EngineConfig.exact, "max_tokens": 256, "system": None,
}
# A models.toml `defaults` key is the RunOptions field it presets, but for these.
TOML_KEYS = {"temperature": "temp"}
# The words a models.toml default may be (the CLI checks the command line's itself).
_CHOICES = {"draft": DRAFT_MODES, "kv_cache": KV_CHOICES, "prefill": PREFILL_MODES}


def resolve_options(options: RunOptions, model_defaults: dict, built_in: dict | None = None,
                    where: str = "models.toml") -> RunOptions:
    """Every defaultable option with its value: the one given (not None), else the model's
    models.toml default, else the built-in one; `built_in` holds a command's own built-in
    defaults (chat's max_tokens). `where` names the models.toml entry in messages."""
    for key, words in _CHOICES.items():
        if key in model_defaults and model_defaults[key] not in words:
            raise UsageError(f"{where} sets {key} = {model_defaults[key]!r}; choose from {', '.join(words)}")
    fallback = {**BUILT_IN_DEFAULTS, **(built_in or {})}
    values = {}
    for name, default in fallback.items():
        given = getattr(options, name)
        values[name] = given if given is not None else model_defaults.get(TOML_KEYS.get(name, name), default)
    return dataclasses.replace(options, **values)


@dataclass
class Session:
    alias: str
    generator: Generator
    sampling: SamplingParams
    draft: DraftSettings
    profile_key: ProfileKey  # where `specdec tune` stores this model's cost curve on this device
    options: RunOptions  # what was asked, every option filled in (resolve_options): max_tokens, system

    def prompt_tokens(self, text: str, *, system: str | None = None, raw: bool = False) -> np.ndarray:
        if not text.strip():
            raise UsageError("the prompt is empty")
        if raw:
            if system:
                raise UsageError(f"{option('system')} needs the chat template; drop {option('raw')}")
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


def kv_cache_types(options: RunOptions) -> tuple[str, str]:
    """K and V cache types: kv_k / kv_v, else kv_cache (given, or the model's models.toml
    default: resolve_options), else the engine mode's default (options.default_kv_types)."""
    default_k, default_v = default_kv_types(bool(options.exact))
    kv_k = options.kv_k or options.kv_cache or default_k
    kv_v = options.kv_v or options.kv_cache or default_v
    for name, kind in ((kv_k, "kv_k"), (kv_v, "kv_v")):
        if name not in KV_CHOICES:  # the CLI checks too; this guards the library API
            raise UsageError(f"{option(kind)} {name!r} is not one of {', '.join(KV_CHOICES)}")
    return kv_k, kv_v


def open_session(options: RunOptions, progress: Progress | None = None, *,
                 built_in: dict | None = None) -> Session:
    """`progress` follows a model assembled from split packages on its first use;
    `built_in`: the command's own built-in defaults (resolve_options)."""
    registry = Registry.load()
    resolved = registry.resolve(options.model, progress)
    entry = resolved.entry
    options = resolve_options(options, entry.defaults, built_in, where=f"{entry.origin}: [models.{entry.alias}]")
    sampling = SamplingParams(temperature=options.temperature, top_k=options.top_k,
                              top_p=options.top_p, seed=options.seed)
    sampling.validate()
    info = check_gguf(resolved.path)
    # A context past the trained one only buys memory (a huge one, all of it); the default
    # stays allowed for models trained on less.
    if info.context_length and options.ctx > max(info.context_length, BUILT_IN_DEFAULTS["ctx"]):
        raise UsageError(f"{option('n_ctx')} {options.ctx} is more than {resolved.alias}'s training context "
                         f"({info.context_length} tokens)")
    kv_k, kv_v = kv_cache_types(options)
    draft = DraftSettings(mode=options.draft, tree_size=options.tree_size, draft_len=options.draft_len)
    config = EngineConfig(n_ctx=options.ctx, n_threads=options.threads, exact=options.exact, kv_k=kv_k, kv_v=kv_v,
                          verbose=options.verbose, prefill=options.prefill, ep=options.ep,
                          gpu_layers=options.gpu_layers, n_seq_max=max(draft.tree_size, options.largest_tree))
    matrix = cache_dir() / "recycling" / f"{file_sha256(resolved.path)}.matrix"
    try:
        generator = Generator(resolved.path, config,
                              chat_template=info.chat_template or entry.chat_template,
                              matrix_path=matrix,
                              history=History(history_path(file_sha256(resolved.path))) if options.history else None)
    except SpecdecError as exc:
        if "failed to create a context" not in str(exc) or not {kv_k, kv_v} - UNQUANTIZED_KV:
            raise
        # llama.cpp refuses a quantized cache whose blocks (32 values) don't divide the
        # model's head size, or a quantized V where flash attention can't run.
        raise UsageError(f"llama.cpp could not create a K={kv_k} V={kv_v} KV cache for this model "
                         f"(or ran out of memory); try {option('kv_cache')} f16, a smaller {option('n_ctx')}, "
                         f"or {option('verbose')}") from None
    key = ProfileKey(fingerprint=device_fingerprint(), n_threads=generator.ctx.n_threads, kv_k=kv_k, kv_v=kv_v,
                     engine="exact" if options.exact else "fast", model_sha256=file_sha256(resolved.path),
                     backend=generator.offload.backend, gpu_layers=generator.offload.n_gpu_layers)
    profile = load_profile(key.path())
    generator.policy = policy_from_profile(profile, generator.verify_batch,
                                           max_tree=draft.tree_size, max_chain=draft.chain_cap)
    generator.use_measured_prefill(profile.prefill if profile is not None else None)
    generator.policy.restore(_read_json(learned_path(key)))
    return Session(alias=resolved.alias, generator=generator, sampling=sampling, draft=draft, profile_key=key,
                   options=options)
