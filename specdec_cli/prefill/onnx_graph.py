"""An ONNX prefill graph built from a GGUF file's own weights.

One graph runs one fixed-size chunk of C prompt tokens: inputs are the chunk's token ids,
its RoPE angles, an additive attention mask (per attention kind) and, per layer, the K/V
rows of the tokens before it; outputs are the logits of one chosen chunk position and, per
layer, the chunk's K (after RoPE) and V rows laid out exactly as llama.cpp caches them
(one row of n_head_kv * head_dim values per token). Shapes are static in the chunk size;
the past length is a named free dimension ("past") that an NPU session pins with
`add_free_dimension_override_by_name`, feeding a padded, masked past.

The graph follows llama.cpp's own compute graphs for the pinned version (`src/models/
llama.cpp`, `src/models/gemma3.cpp`) rather than the Hugging Face modelling code, because
llama.cpp is the reference the handoff must agree with:
- llama: GGUF Q/K rows are permuted for llama.cpp's "normal" RoPE, which rotates adjacent
  pairs (x[2i], x[2i+1]); the cached K therefore stays in that permuted order.
- gemma3: NEOX RoPE (pairs x[i], x[i + d/2]); RMS norm on Q and K per head; norms after
  attention and after the FFN; embeddings scaled by sqrt(n_embd); GELU (tanh) FFN; every
  sixth layer global (rope base from the file), the others sliding-window with base 10000.
  The converter already stored Gemma's RMSNorm weights as (1 + w), so they are used as is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UnsupportedArchitecture

SUPPORTED_ARCHS = ("llama", "gemma3")
MASKED = -1e9  # additive mask value; finite so that NPU compilers that reject inf still work
OPSET = 17


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

    @property
    def kv_dim(self) -> int:
        return self.n_head_kv * self.head_dim

    def is_swa(self, il: int) -> bool:
        return bool(self.swa_layers) and self.swa_layers[il]

    @property
    def has_swa(self) -> bool:
        return any(self.swa_layers)


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def read_spec(reader) -> ModelSpec:
    """Hyperparameters of a llama or gemma3 GGUF; anything else (or a feature the graph
    does not implement, such as RoPE scaling or MoE) raises UnsupportedArchitecture."""
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise UnsupportedArchitecture(
            f"ONNX prefill supports the {' and '.join(SUPPORTED_ARCHS)} architectures, not {arch!r}")

    def key(name: str, default=None):
        return _field(reader, f"{arch}.{name}", default)

    if key("expert_count", 0):
        raise UnsupportedArchitecture(f"ONNX prefill does not implement mixture-of-experts {arch} models")
    scaling = key("rope.scaling.type", "none")
    if scaling not in ("none", None) and key("rope.scaling.factor", 1.0) not in (0.0, 1.0):
        raise UnsupportedArchitecture(f"ONNX prefill does not implement RoPE scaling ({scaling})")
    n_embd = int(key("embedding_length"))
    n_head = int(key("attention.head_count"))
    n_head_kv = int(key("attention.head_count_kv", n_head))
    head_dim = int(key("attention.key_length", n_embd // n_head))
    if int(key("attention.value_length", head_dim)) != head_dim:
        raise UnsupportedArchitecture("ONNX prefill needs equal K and V head sizes")
    if int(key("rope.dimension_count", head_dim)) != head_dim:
        raise UnsupportedArchitecture("ONNX prefill does not implement partial rotary embeddings")
    n_layer = int(key("block_count"))
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    common = dict(arch=arch, n_layer=n_layer, n_embd=n_embd, n_ff=int(key("feed_forward_length")),
                  n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim, n_vocab=int(embd.shape[1]),
                  rms_eps=float(key("attention.layer_norm_rms_epsilon")),
                  rope_base=float(key("rope.freq_base", 10000.0)))
    if arch == "llama":
        return ModelSpec(**common, neox_rope=False, kq_scale=1.0 / math.sqrt(head_dim))
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


@dataclass
class Weights:
    """Every tensor dequantized to float32 in the GGUF's row-major layout [ne1, ne0], and the
    ggml type it was stored in (which decides how llama.cpp quantizes the activations)."""

    arrays: dict[str, np.ndarray]
    types: dict[str, str]
    # per-block minimum m [rows, n_blocks] of Q4_1 / Q5_1 weights (see _GraphBuilder.linear)
    block_mins: dict[str, np.ndarray]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __contains__(self, name: str) -> bool:
        return name in self.arrays


def load_weights(reader) -> Weights:
    from gguf.quants import dequantize

    arrays, types, mins = {}, {}, {}
    for t in reader.tensors:
        rows = tuple(int(x) for x in reversed(t.shape))
        arrays[t.name] = np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(rows)
        types[t.name] = t.tensor_type.name
        if t.tensor_type.name in _MIN_BLOCK_BYTES:
            raw = np.asarray(t.data, dtype=np.uint8).reshape(rows[0], -1, _MIN_BLOCK_BYTES[t.tensor_type.name])
            mins[t.name] = np.ascontiguousarray(raw[:, :, 2:4]).view(np.float16)[:, :, 0].astype(np.float32)
    return Weights(arrays, types, mins)


# ggml's CPU matmul converts the activations to the weight type's `vec_dot_type` before the
# dot products (ggml-cpu.c type_traits_cpu): 32-value blocks with an fp16 scale (q8_0 /
# q8_1) for the legacy quants, 256-value blocks with an fp32 scale (q8_K) for the K-quants,
# fp16 for f16 weights. Rounding the activations the same way in the graph keeps its K/V
# close to what llama.cpp itself would have cached.
_ACT_BLOCKS = {"Q4_0": (32, True), "Q4_1": (32, True), "Q5_0": (32, True), "Q5_1": (32, True),
               "Q8_0": (32, True), "IQ4_NL": (32, True), "Q2_K": (256, False), "Q3_K": (256, False),
               "Q4_K": (256, False), "Q5_K": (256, False), "Q6_K": (256, False)}
# Block bytes of the quant types with a per-block minimum (f16 d, f16 m, ...): their dot
# product adds m * s, with s = fp16(d_x * sum(q_x)) rounded on its own.
_MIN_BLOCK_BYTES = {"Q4_1": 20, "Q5_1": 24}


def rope_angles(positions: np.ndarray, head_dim: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin of shape [C, 1, head_dim/2] for the given token positions; theta_i = p * base^(-2i/d)."""
    inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = positions.astype(np.float64)[:, None] * inv_freq[None, :]
    return (np.cos(angles).astype(np.float32)[:, None, :], np.sin(angles).astype(np.float32)[:, None, :])


class _GraphBuilder:
    """Small helper: unique node names, float constants, and the ops the decoder needs."""

    def __init__(self, quant: str, weights: "Weights"):
        from onnx import TensorProto, helper, numpy_helper

        self.helper, self.numpy_helper, self.TensorProto = helper, numpy_helper, TensorProto
        self.nodes, self.initializers = [], []
        self.quant = quant
        # The float variant mimics llama.cpp's rounding; the int8 variant is its own model.
        self.llama_numerics = quant == "fp32"
        self.weight_types = weights.types
        self.block_mins = weights.block_mins
        self._n = 0
        self._consts: dict[tuple, str] = {}

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(self.helper.make_node(op_type, inputs, outs, name=self.name(op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value, dtype=np.float32) -> str:
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            name = self.name("const")
            self.initializers.append(self.numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return self._consts[key]

    def weight(self, name: str, arr: np.ndarray) -> str:
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def linear(self, x: str, name: str, w_rows: np.ndarray) -> str:
        """x @ W^T for a GGUF weight stored as rows [out, in]; int8 variant: per-output-channel
        symmetric int8 weights behind a DequantizeLinear (the QDQ form NPU EPs consume)."""
        w_t = np.ascontiguousarray(w_rows.T)  # [in, out]
        correction = None
        if self.llama_numerics:
            x, correction = self.round_activations(x, self.weight_types.get(name, "F32"), w_t.shape[0])
        if self.quant == "int8":
            scale = np.maximum(np.abs(w_t).max(axis=0), 1e-12) / 127.0
            q = np.clip(np.rint(w_t / scale), -127, 127).astype(np.int8)
            qname = self.weight(name + ".q", q)
            sname = self.weight(name + ".scale", scale.astype(np.float32))
            zname = self.weight(name + ".zero", np.zeros_like(q[0]))
            w = self.op("DequantizeLinear", [qname, sname, zname], axis=1)
        else:
            w = self.weight(name, w_t)
        out = self.op("MatMul", [x, w])
        if correction is not None and name in self.block_mins:
            mins_t = self.weight(name + ".block_min", np.ascontiguousarray(self.block_mins[name].T))  # [nb, out]
            out = self.op("Add", [out, self.op("MatMul", [correction, mins_t])])
        return out

    def round_activations(self, x: str, weight_type: str, n_in: int) -> tuple[str, str | None]:
        """x rounded as ggml's vec_dot_type would round it, and for weights with block minima
        the per-block term fp16(d*sum q) - fp16(d)*sum q that the rounded x misses [C, n_blocks]."""
        if weight_type in ("F16", "BF16"):
            return self.round_f16(x), None
        block = _ACT_BLOCKS.get(weight_type)
        if block is None or n_in % block[0]:
            return x, None
        size, fp16_scale = block
        blocks = self.op("Reshape", [x, self.const([0, n_in // size, size], np.int64)])
        amax = self.op("ReduceMax", [self.op("Abs", [blocks])], axes=[-1], keepdims=1)
        scale = self.op("Div", [amax, self.const(127.0)])
        inv = self.op("Div", [self.const(127.0), self.op("Max", [amax, self.const(1e-30)])])
        q = self.op("Round", [self.op("Mul", [blocks, inv])])
        scale_used = self.round_f16(scale) if fp16_scale else scale
        rounded = self.op("Reshape", [self.op("Mul", [q, scale_used]), self.const([0, n_in], np.int64)])
        correction = None
        if weight_type in _MIN_BLOCK_BYTES:
            q_sum = self.op("ReduceSum", [q, self.const([-1], np.int64)], keepdims=0)      # [C, nb]
            scale2 = self.op("Squeeze", [scale, self.const([-1], np.int64)])
            scale_used2 = self.op("Squeeze", [scale_used, self.const([-1], np.int64)])
            correction = self.op("Sub", [self.round_f16(self.op("Mul", [scale2, q_sum])),
                                         self.op("Mul", [scale_used2, q_sum])])
        return rounded, correction

    def round_f16(self, x: str) -> str:
        return self.op("Cast", [self.op("Cast", [x], to=self.TensorProto.FLOAT16)], to=self.TensorProto.FLOAT)

    def rms_norm(self, x: str, weight: str, eps: float) -> str:
        sq = self.op("Mul", [x, x])
        mean = self.op("ReduceMean", [sq], axes=[-1], keepdims=1)
        denom = self.op("Sqrt", [self.op("Add", [mean, self.const(eps)])])
        return self.op("Mul", [self.op("Div", [x, denom]), weight])

    def reshape(self, x: str, shape: list[int]) -> str:
        return self.op("Reshape", [x, self.const(shape, np.int64)])

    def rope(self, x: str, cos: str, sin: str, neox: bool, n_heads: int, head_dim: int, n_tok: int) -> str:
        """x: [C, H, D] -> rotated [C, H, D]; cos/sin: [C, 1, D/2]."""
        half = head_dim // 2
        if neox:
            x1, x2 = self.op("Split", [x, self.const([half, half], np.int64)], n_out=2, axis=-1)
        else:
            pairs = self.reshape(x, [n_tok, n_heads, half, 2])
            x1, x2 = self.op("Split", [pairs, self.const([1, 1], np.int64)], n_out=2, axis=-1)
            x1 = self.reshape(x1, [n_tok, n_heads, half])
            x2 = self.reshape(x2, [n_tok, n_heads, half])
        r1 = self.op("Sub", [self.op("Mul", [x1, cos]), self.op("Mul", [x2, sin])])
        r2 = self.op("Add", [self.op("Mul", [x2, cos]), self.op("Mul", [x1, sin])])
        if neox:
            return self.op("Concat", [r1, r2], axis=-1)
        r1 = self.op("Unsqueeze", [r1, self.const([-1], np.int64)])
        r2 = self.op("Unsqueeze", [r2, self.const([-1], np.int64)])
        return self.reshape(self.op("Concat", [r1, r2], axis=-1), [n_tok, n_heads, head_dim])

    def gelu_tanh(self, x: str) -> str:
        """ggml_gelu (0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))); llama.cpp's CPU build
        reads it from an fp16 table indexed by fp16(x) for |x| < 10 (GGML_GELU_FP16)."""
        xin = self.round_f16(x) if self.llama_numerics else x
        x3 = self.op("Mul", [self.op("Mul", [xin, xin]), xin])
        inner = self.op("Mul", [self.op("Add", [xin, self.op("Mul", [x3, self.const(0.044715)])]),
                                self.const(math.sqrt(2.0 / math.pi))])
        t = self.op("Add", [self.op("Tanh", [inner]), self.const(1.0)])
        y = self.op("Mul", [self.op("Mul", [xin, t]), self.const(0.5)])
        if not self.llama_numerics:
            return y
        y = self.round_f16(y)
        y = self.op("Where", [self.op("GreaterOrEqual", [x, self.const(10.0)]), x, y])
        return self.op("Where", [self.op("LessOrEqual", [x, self.const(-10.0)]), self.const(0.0), y])


def build_prefill_graph(spec: ModelSpec, weights: Weights, chunk: int, quant: str = "fp32"):
    """The decoder for one chunk of `chunk` tokens (see the module docstring for inputs/outputs)."""
    from onnx import TensorProto, helper

    if quant not in ("fp32", "int8"):
        raise ValueError(f"unknown ONNX weight variant {quant!r} (fp32 or int8)")
    g = _GraphBuilder(quant, weights)
    C, H, Hk, D, E = chunk, spec.n_head, spec.n_head_kv, spec.head_dim, spec.n_embd
    G = H // Hk
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [helper.make_tensor_value_info("input_ids", i64, [C]),
              helper.make_tensor_value_info("logits_index", i64, [1]),
              helper.make_tensor_value_info("rope_cos", f32, [C, 1, D // 2]),
              helper.make_tensor_value_info("rope_sin", f32, [C, 1, D // 2]),
              helper.make_tensor_value_info("mask", f32, [C, "total"])]
    if spec.has_swa:
        inputs += [helper.make_tensor_value_info("rope_cos_swa", f32, [C, 1, D // 2]),
                   helper.make_tensor_value_info("rope_sin_swa", f32, [C, 1, D // 2]),
                   helper.make_tensor_value_info("mask_swa", f32, [C, "total"])]
    outputs = [helper.make_tensor_value_info("logits", f32, [1, spec.n_vocab])]

    embd = g.weight("token_embd.weight", weights["token_embd.weight"])
    x = g.op("Gather", [embd, "input_ids"], axis=0)  # [C, E]
    if spec.embd_scale != 1.0:
        x = g.op("Mul", [x, g.const(spec.embd_scale)])
    kq_scale = g.const(spec.kq_scale)
    for il in range(spec.n_layer):
        p = f"blk.{il}."
        swa = spec.is_swa(il)
        cos, sin, mask = ("rope_cos_swa", "rope_sin_swa", "mask_swa") if swa else ("rope_cos", "rope_sin", "mask")
        past_k, past_v = f"past_k.{il}", f"past_v.{il}"
        inputs += [helper.make_tensor_value_info(past_k, f32, ["past", spec.kv_dim]),
                   helper.make_tensor_value_info(past_v, f32, ["past", spec.kv_dim])]
        outputs += [helper.make_tensor_value_info(f"k.{il}", f32, [C, spec.kv_dim]),
                    helper.make_tensor_value_info(f"v.{il}", f32, [C, spec.kv_dim])]

        h = g.rms_norm(x, g.weight(p + "attn_norm.weight", weights[p + "attn_norm.weight"]), spec.rms_eps)
        q = g.reshape(g.linear(h, p + "attn_q.weight", weights[p + "attn_q.weight"]), [C, H, D])
        k = g.reshape(g.linear(h, p + "attn_k.weight", weights[p + "attn_k.weight"]), [C, Hk, D])
        v = g.linear(h, p + "attn_v.weight", weights[p + "attn_v.weight"])  # [C, Hk*D]
        if spec.arch == "gemma3":
            q = g.rms_norm(q, g.weight(p + "attn_q_norm.weight", weights[p + "attn_q_norm.weight"]), spec.rms_eps)
            k = g.rms_norm(k, g.weight(p + "attn_k_norm.weight", weights[p + "attn_k_norm.weight"]), spec.rms_eps)
        q = g.rope(q, cos, sin, spec.neox_rope, H, D, C)
        k = g.reshape(g.rope(k, cos, sin, spec.neox_rope, Hk, D, C), [C, spec.kv_dim])
        if g.llama_numerics:
            # llama.cpp attends over its f16 cache, so the chunk attends over rounded K/V too
            k, v = g.round_f16(k), g.round_f16(v)
        g.nodes.append(helper.make_node("Identity", [k], [f"k.{il}"]))
        g.nodes.append(helper.make_node("Identity", [v], [f"v.{il}"]))

        k_all = g.op("Concat", [past_k, f"k.{il}"], axis=0)                      # [T, Hk*D]
        v_all = g.op("Concat", [past_v, f"v.{il}"], axis=0)
        k_all = g.op("Transpose", [g.reshape(k_all, [-1, Hk, D])], perm=[1, 2, 0])  # [Hk, D, T]
        k_all = g.op("Unsqueeze", [k_all, g.const([1], np.int64)])                # [Hk, 1, D, T]
        v_all = g.op("Transpose", [g.reshape(v_all, [-1, Hk, D])], perm=[1, 0, 2])  # [Hk, T, D]
        v_all = g.op("Unsqueeze", [v_all, g.const([1], np.int64)])                # [Hk, 1, T, D]
        # query head h reads kv head h // G, as ggml's broadcasting mul_mat does
        q4 = g.op("Transpose", [g.reshape(q, [C, Hk, G, D])], perm=[1, 2, 0, 3])  # [Hk, G, C, D]
        scores = g.op("Mul", [g.op("MatMul", [q4, k_all]), kq_scale])             # [Hk, G, C, T]
        probs = g.op("Softmax", [g.op("Add", [scores, mask])], axis=-1)
        attn = g.op("Transpose", [g.op("MatMul", [probs, v_all])], perm=[2, 0, 1, 3])  # [C, Hk, G, D]
        attn = g.linear(g.reshape(attn, [C, H * D]), p + "attn_output.weight", weights[p + "attn_output.weight"])
        if spec.arch == "gemma3":
            attn = g.rms_norm(attn, g.weight(p + "post_attention_norm.weight",
                                             weights[p + "post_attention_norm.weight"]), spec.rms_eps)
        x = g.op("Add", [x, attn])

        h = g.rms_norm(x, g.weight(p + "ffn_norm.weight", weights[p + "ffn_norm.weight"]), spec.rms_eps)
        gate = g.linear(h, p + "ffn_gate.weight", weights[p + "ffn_gate.weight"])
        up = g.linear(h, p + "ffn_up.weight", weights[p + "ffn_up.weight"])
        act = g.gelu_tanh(gate) if spec.arch == "gemma3" else g.op("Mul", [gate, g.op("Sigmoid", [gate])])
        ffn = g.linear(g.op("Mul", [act, up]), p + "ffn_down.weight", weights[p + "ffn_down.weight"])
        if spec.arch == "gemma3":
            ffn = g.rms_norm(ffn, g.weight(p + "post_ffw_norm.weight", weights[p + "post_ffw_norm.weight"]),
                             spec.rms_eps)
        x = g.op("Add", [x, ffn])

    last = g.op("Gather", [x, "logits_index"], axis=0)  # [1, E]
    last = g.rms_norm(last, g.weight("output_norm.weight", weights["output_norm.weight"]), spec.rms_eps)
    # Tied embeddings (no output.weight) reuse the Gather table through Gemm's transB.
    head = g.weight("output.weight", weights["output.weight"]) if "output.weight" in weights else embd
    logits = g.op("Gemm", [last, head], transB=1)
    if spec.logit_softcap:
        cap = g.const(spec.logit_softcap)
        logits = g.op("Mul", [g.op("Tanh", [g.op("Div", [logits, cap])]), cap])
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"]))

    graph = helper.make_graph(g.nodes, f"specdec_prefill_{spec.arch}_c{chunk}_{quant}", inputs, outputs,
                              g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="specdec")
    model.ir_version = 8
    return model


def export_prefill_graph(gguf_path: Path, out_path: Path, chunk: int, quant: str = "fp32") -> ModelSpec:
    """Build and save the graph; weights go to `<out_path>.data` (protobuf caps files at 2 GB)."""
    import onnx
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    spec = read_spec(reader)
    model = build_prefill_graph(spec, load_weights(reader), chunk, quant)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    data_name = out_path.name + ".data"
    onnx.save_model(model, str(out_path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    return spec
