"""specdec: lossless, model-free speculative decoding for local LLMs on llama.cpp.

The library API behind the CLI:
    Generator      load a GGUF model once, generate with or without speculation
    Registry       models.toml aliases -> local GGUF files
    open_session   command-line style options -> a ready Generator
"""

from importlib import import_module

__version__ = "0.1.0"

# Imported on first use: `specdec models list` should not pay for loading llama.cpp.
_EXPORTS = {
    "Generator": "generator", "EngineConfig": "generator", "SamplingParams": "generator",
    "GenerationResult": "generator", "DraftSettings": "drafting",
    "Registry": "registry", "open_session": "session", "RunOptions": "session",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'specdec_cli' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
