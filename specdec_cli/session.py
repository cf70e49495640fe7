"""From command-line options to a ready Generator: resolve the model, validate the GGUF,
load it, and turn user text into prompt tokens. Shared by `run`, `chat` and `bench`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .drafting import DraftSettings
from .errors import UsageError
from .generator import EngineConfig, Generator, SamplingParams
from .gguf_file import check_gguf, file_sha256
from .paths import cache_dir
from .registry import Registry

DEFAULT_DRAFT = "auto"
DEFAULT_TREE_SIZE = 16
DEFAULT_DRAFT_LEN = 8


@dataclass
class RunOptions:
    model: str | None = None
    ctx: int = 4096
    threads: int | None = None
    kv_cache: str | None = None
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


@dataclass
class Session:
    alias: str
    generator: Generator
    sampling: SamplingParams
    draft: DraftSettings

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
        self.generator.close()


def open_session(options: RunOptions, progress: bool = True) -> Session:
    sampling = SamplingParams(temperature=options.temperature, top_k=options.top_k,
                              top_p=options.top_p, seed=options.seed)
    sampling.validate()
    registry = Registry.load()
    resolved = registry.resolve(options.model)
    info = check_gguf(resolved.path)
    entry = resolved.entry
    defaults = entry.defaults if entry is not None else {}
    kv_name = options.kv_cache or defaults.get("kv_cache")
    kv_k, kv_v = (kv_name, kv_name) if kv_name else (EngineConfig.kv_k, EngineConfig.kv_v)
    draft = DraftSettings(
        mode=options.draft or defaults.get("draft", DEFAULT_DRAFT),
        tree_size=options.tree_size or DEFAULT_TREE_SIZE,
        draft_len=DEFAULT_DRAFT_LEN if options.draft_len is None else options.draft_len)
    config = EngineConfig(n_ctx=options.ctx, n_threads=options.threads, kv_k=kv_k, kv_v=kv_v,
                          verbose=options.verbose, prefill=options.prefill, ep=options.ep)
    matrix = cache_dir() / "recycling" / f"{file_sha256(resolved.path)}.matrix"
    generator = Generator(resolved.path, config,
                          chat_template=info.chat_template or (entry.chat_template if entry else None),
                          matrix_path=matrix)
    return Session(alias=resolved.alias, generator=generator, sampling=sampling, draft=draft)
