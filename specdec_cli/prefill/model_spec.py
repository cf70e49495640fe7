"""What a prefill graph needs to know about a GGUF model: its hyperparameters (ModelSpec,
read from the metadata, refusing what the graph does not implement), its weights
dequantized to float32, and the RoPE angles as ggml's CPU backend computes them. The
architectures and how the graph follows llama.cpp's compute graphs for each: onnx_graph.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import UnsupportedArchitecture
from .gguf_reader import GgufFile

SUPPORTED_ARCHS = ("llama", "qwen2", "gemma3")


@dataclass(frozen=True)
class ModelSpec:
    """The hyperparameters a prefill graph needs, read from GGUF metadata."""

    arch: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    rms_eps: float
    rope_base: float
    neox_rope: bool
    embd_scale: float = 1.0
    kq_scale: float = 1.0
    n_swa: int = 0
    rope_base_swa: float = 10000.0
    swa_layers: tuple[bool, ...] = field(default_factory=tuple)
    logit_softcap: float = 0.0
    rope_freq_scale: float = 1.0  # linear RoPE scaling: 1 / rope.scaling.factor (global layers only)
    rope_factors: tuple[float, ...] = ()  # Llama 3: rope_freqs.weight, a divisor per frequency

    @property
    def kv_dim(self) -> int:
        return self.n_head_kv * self.head_dim

    def is_swa(self, il: int) -> bool:
        return bool(self.swa_layers) and self.swa_layers[il]

    @property
    def has_swa(self) -> bool:
        return any(self.swa_layers)


def read_spec(gguf: GgufFile) -> ModelSpec:
    """Hyperparameters of a llama, qwen2 or gemma3 GGUF; anything else (or a feature the
    graph does not implement, such as YaRN RoPE scaling or MoE) raises UnsupportedArchitecture."""
    arch = gguf.metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise UnsupportedArchitecture(
            f"ONNX prefill supports the {', '.join(SUPPORTED_ARCHS)} architectures, not {arch!r}")

    def key(name: str, default=None):
        return gguf.metadata.get(f"{arch}.{name}", default)

    if key("expert_count", 0):
        raise UnsupportedArchitecture(f"ONNX prefill does not implement mixture-of-experts {arch} models")
    scaling = key("rope.scaling.type", "none") or "none"
    factor = float(key("rope.scaling.factor", 1.0) or 1.0)
    if scaling not in ("none", "linear") and factor != 1.0:
        raise UnsupportedArchitecture(f"ONNX prefill does not implement RoPE scaling ({scaling})")
    # llama_context: rope_freq_scale = 1 / factor for linear scaling, 1 otherwise
    freq_scale = 1.0 / factor if scaling == "linear" else 1.0
    n_embd = int(key("embedding_length"))
    n_head = int(key("attention.head_count"))
    n_head_kv = int(key("attention.head_count_kv", n_head))
    head_dim = int(key("attention.key_length", n_embd // n_head))
    if int(key("attention.value_length", head_dim)) != head_dim:
        raise UnsupportedArchitecture("ONNX prefill needs equal K and V head sizes")
    if int(key("rope.dimension_count", head_dim)) != head_dim:
        raise UnsupportedArchitecture("ONNX prefill does not implement partial rotary embeddings")
    n_layer = int(key("block_count"))
    tensors = gguf.tensors
    embd = tensors["token_embd.weight"]
    common = dict(arch=arch, n_layer=n_layer, n_embd=n_embd, n_ff=int(key("feed_forward_length")),
                  n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim, n_vocab=int(embd.ne[1]),
                  rms_eps=float(key("attention.layer_norm_rms_epsilon")),
                  rope_base=float(key("rope.freq_base", 10000.0)), rope_freq_scale=freq_scale)
    if arch in ("llama", "qwen2"):
        # llama.cpp reads rope_freqs for llama (model.get_rope_factors), not for qwen2
        factors = ()
        if arch == "llama" and "rope_freqs.weight" in tensors:
            factors = tuple(float(x) for x in gguf.raw("rope_freqs.weight").view(np.float32).ravel())
            if len(factors) != head_dim // 2:
                raise UnsupportedArchitecture(f"rope_freqs.weight has {len(factors)} values, expected {head_dim // 2}")
        scale = float(key("attention.scale", 0.0) or 0.0) or 1.0 / math.sqrt(head_dim)
        return ModelSpec(**common, neox_rope=arch == "qwen2", kq_scale=scale, rope_factors=factors)
    n_swa = int(key("attention.sliding_window", 0))
    pattern = key("attention.sliding_window_pattern", 6)
    if isinstance(pattern, list):
        swa_layers = tuple(bool(x) for x in pattern)
    else:
        # llama_hparams::set_swa_pattern: the last layer of every group of n is global.
        swa_layers = tuple(n_swa > 0 and (il % int(pattern) < int(pattern) - 1) for il in range(n_layer))
    # gemma_pytorch config: the 27B model scales queries by the model width, the others by the head size.
    kq_scale = 1.0 / math.sqrt(n_embd / n_head if n_layer == 62 else head_dim)
    return ModelSpec(**common, neox_rope=True, embd_scale=math.sqrt(n_embd), kq_scale=kq_scale, n_swa=n_swa,
                     rope_base_swa=float(key("rope.freq_base_swa", 10000.0)), swa_layers=swa_layers,
                     logit_softcap=float(key("final_logit_softcapping", 0.0) or 0.0))


class Weights:
    """The GGUF's tensors, dequantized to float32 one at a time when the weight file is
    written, in the GGUF's row-major layout [ne1, ne0]; and the ggml type each was stored in
    (which decides how llama.cpp quantizes the activations)."""

    def __init__(self, gguf: GgufFile):
        self.gguf = gguf
        self.types = {name: gguf.type_name(name) for name in gguf.tensors}
        self.shapes = {name: tuple(reversed(t.ne)) for name, t in gguf.tensors.items()}

    def __contains__(self, name: str) -> bool:
        return name in self.gguf.tensors

    def array(self, name: str) -> np.ndarray:
        from gguf.constants import GGMLQuantizationType
        from gguf.quants import dequantize

        qtype = GGMLQuantizationType(self.gguf.tensors[name].type_id)
        values = dequantize(self.gguf.raw(name), qtype)
        return np.ascontiguousarray(values, dtype=np.float32).reshape(self.shapes[name])

    def has_block_min(self, name: str) -> bool:
        return self.types[name] in MIN_BLOCK_BYTES

    def block_min(self, name: str) -> np.ndarray:
        """Per-block minimum m [rows, n_blocks] of a Q4_1 / Q5_1 weight (see _GraphBuilder.linear)."""
        raw = np.asarray(self.gguf.raw(name)).reshape(self.shapes[name][0], -1, MIN_BLOCK_BYTES[self.types[name]])
        return np.ascontiguousarray(raw[:, :, 2:4]).view(np.float16)[:, :, 0].astype(np.float32)


# Block bytes of the quant types with a per-block minimum (f16 d, f16 m, ...): their dot
# product adds m * s, with s = fp16(d_x * sum(q_x)) rounded on its own.
MIN_BLOCK_BYTES = {"Q4_1": 20, "Q5_1": 24}


def rope_angles(positions: np.ndarray, head_dim: int, base: float, freq_scale: float = 1.0,
                factors: tuple[float, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin of shape [C, 1, head_dim/2] for the given token positions, in float32 as ggml's
    CPU RoPE computes them (ggml-cpu/ops.cpp ggml_rope_cache_init / rope_yarn without YaRN):
    theta_0 = p, theta_{i+1} = theta_i * base^(-2/d) rounded step by step; angle_i =
    freq_scale * theta_i / factor_i."""
    theta_scale = np.power(np.float32(base), np.float32(-2.0) / np.float32(head_dim))
    theta = positions.astype(np.float32)
    divisors = np.asarray(factors, dtype=np.float32) if factors else np.ones(head_dim // 2, dtype=np.float32)
    angles = np.empty((len(positions), head_dim // 2), dtype=np.float32)
    for i in range(head_dim // 2):
        angles[:, i] = np.float32(freq_scale) * (theta / divisors[i])
        theta = theta * theta_scale
    return np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]

