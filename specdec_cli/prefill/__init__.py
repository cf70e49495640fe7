"""ONNX-runtime prefill with the K/V handed to llama.cpp (DESIGN.md section 7)."""

from .errors import KVLayoutMismatch, PrefillUnavailable, ProviderUnavailable, UnsupportedArchitecture

__all__ = ["KVLayoutMismatch", "PrefillUnavailable", "ProviderUnavailable", "UnsupportedArchitecture"]
