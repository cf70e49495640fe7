"""`specdec models export-onnx NAME`: build (or find) the cached ONNX prefill graph of a model."""

from __future__ import annotations

from pathlib import Path

from .errors import UsageError
from .options import default_kv_types
from .prefill.onnx_prefill import DEFAULT_CHUNK, cache_variant, check_supported, exported_graph
from .prefill.progress import export_progress

QUANT_VARIANTS = ("fp32", "int8")


def export_onnx(alias_or_path: str | None, quant: str = "fp32", chunk: int = DEFAULT_CHUNK) -> Path:
    """The path of the model's ONNX prefill graph for the default (fast) engine's KV cache
    (its weights lie beside it in a .data file that the graphs for other KV cache types,
    exported on first use, share), exporting it on first use; cached per model file hash
    under the cache dir."""
    from .registry import Registry

    if quant not in QUANT_VARIANTS:
        raise UsageError(f"unknown --quant {quant!r} (choose from {', '.join(QUANT_VARIANTS)})")
    if chunk < 1 or chunk > 4096:
        raise UsageError(f"--chunk must be between 1 and 4096, got {chunk}")
    model_path = Registry.load().resolve(alias_or_path).path
    spec = check_supported(model_path)
    return exported_graph(model_path, cache_variant(spec, default_kv_types(exact=False)), chunk, quant,
                          export_progress())

