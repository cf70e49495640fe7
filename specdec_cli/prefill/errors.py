"""Why ONNX prefill cannot run. Every one of these means "fall back to llama.cpp prefill"."""

from __future__ import annotations

from ..errors import SpecdecError


class PrefillUnavailable(SpecdecError):
    """ONNX prefill cannot be used for this model, context or machine; llama.cpp can."""


class UnsupportedArchitecture(PrefillUnavailable):
    """The GGUF's architecture (or a feature of it) has no ONNX prefill graph."""


class ProviderUnavailable(PrefillUnavailable):
    """The requested onnxruntime execution provider is not installed or has no device."""


class KVLayoutMismatch(PrefillUnavailable):
    """llama.cpp's sequence-state buffer does not have the layout the handoff writes."""
