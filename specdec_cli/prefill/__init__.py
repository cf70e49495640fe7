"""ONNX-runtime prefill with the K/V handed to llama.cpp (docs/DESIGN.md, NPU prefill)."""

from .errors import KVLayoutMismatch, PrefillUnavailable, ProviderUnavailable, UnsupportedArchitecture

__all__ = ["KVLayoutMismatch", "PrefillUnavailable", "ProviderUnavailable", "UnsupportedArchitecture"]
