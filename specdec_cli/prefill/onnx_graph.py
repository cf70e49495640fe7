"""An ONNX prefill graph built from a GGUF file's own weights.

One graph runs one fixed-size chunk of C prompt tokens: inputs are the chunk's token ids,
its RoPE angles, an additive attention mask (per attention kind) and, per layer, the K/V
rows of the tokens before it as llama.cpp's attention reads them from its cache (f16
values, or dequantized q8_0 / q4_0 blocks in the rotated basis); outputs are the logits of
one chosen chunk position and, per layer, the chunk's K (after RoPE) and V rows in float32
(one row of n_head_kv * head_dim values per token), which the handoff encodes into the
cache's format. Inside the chunk, attention reads K/V rounded to the cache's format, as
llama.cpp's does (it writes the batch's K/V into the cache, then attends over the cache):
so there is one graph variant per (K format, V format), sharing one weight file
(weight_file.py). Shapes are static in the chunk size; the past length is a named free
dimension ("past") that an NPU session pins with `add_free_dimension_override_by_name`,
feeding a padded, masked past.

The model's hyperparameters, dequantized weights and RoPE angles come from model_spec.py.
The graph follows llama.cpp's own compute graphs for the pinned version (`src/models/
llama.cpp`, `src/models/qwen2.cpp`, `src/models/gemma3.cpp`) rather than the Hugging Face
modelling code, because llama.cpp is the reference the handoff must agree with:
- llama: GGUF Q/K rows are permuted for llama.cpp's "normal" RoPE, which rotates adjacent
  pairs (x[2i], x[2i+1]); the cached K therefore stays in that permuted order. Llama 3's
  RoPE scaling is the GGUF tensor `rope_freqs.weight` (one divisor per frequency, from
  convert_hf_to_gguf's llama3 rule), applied to the angles the graph is fed; linear
  scaling likewise (`rope.scaling.factor`); optional biases are added where present.
- qwen2: NEOX RoPE (pairs x[i], x[i + d/2]; llama.cpp's rope type for the architecture,
  so the converter leaves Q/K unpermuted), biases on Q, K and V.
- gemma3: NEOX RoPE (pairs x[i], x[i + d/2]); RMS norm on Q and K per head; norms after
  attention and after the FFN; embeddings scaled by sqrt(n_embd); GELU (tanh) FFN; every
  sixth layer global (rope base from the file), the others sliding-window with base 10000.
  The converter already stored Gemma's RMSNorm weights as (1 + w), so they are used as is.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .gguf_reader import GgufFile
from .kv_blocks import QK, QUANTIZED, CacheFormat, hadamard
from .model_spec import MIN_BLOCK_BYTES, ModelSpec, Weights, read_spec
from .weight_file import StaleWeights, WeightFile, read_manifest

MASKED = -1e9  # additive mask value; finite so that NPU compilers that reject inf still work
OPSET = 17

# ggml's CPU matmul converts the activations to the weight type's `vec_dot_type` before the
# dot products (ggml-cpu.c type_traits_cpu): 32-value blocks with an fp16 scale (q8_0 /
# q8_1) for the legacy quants, 256-value blocks with an fp32 scale (q8_K) for the K-quants,
# fp16 for f16 weights. Rounding the activations the same way in the graph keeps its K/V
# close to what llama.cpp itself would have cached.
_ACT_BLOCKS = {"Q4_0": (32, True), "Q4_1": (32, True), "Q5_0": (32, True), "Q5_1": (32, True),
               "Q8_0": (32, True), "IQ4_NL": (32, True), "Q2_K": (256, False), "Q3_K": (256, False),
               "Q4_K": (256, False), "Q5_K": (256, False), "Q6_K": (256, False)}


class _GraphBuilder:
    """Small helper: unique node names, float constants, and the ops the decoder needs."""

    def __init__(self, quant: str, weights: Weights, store: WeightFile):
        from onnx import TensorProto, helper, numpy_helper

        self.helper, self.numpy_helper, self.TensorProto = helper, numpy_helper, TensorProto
        self.nodes, self.initializers = [], []
        self.quant = quant
        # The float variant mimics llama.cpp's rounding; the int8 variant is its own model.
        self.llama_numerics = quant == "fp32"
        self.weights = weights
        self.weight_types = weights.types
        self.store = store
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

    def weight(self, name: str, dims: tuple[int, ...], make, dtype: str = "float32") -> str:
        """An initializer in the shared weight file; `make()` gives its values when written."""
        self.initializers.append(self.store.tensor(name, dims, dtype, make))
        return name

    def tensor(self, name: str) -> str:
        """A GGUF tensor as it is (norm weights, biases, the embedding table)."""
        return self.weight(name, self.weights.shapes[name], lambda: self.weights.array(name))

    def add_bias(self, x: str, name: str) -> str:
        return self.op("Add", [x, self.tensor(name)]) if name in self.weights else x

    def linear(self, x: str, name: str) -> str:
        """x @ W^T for a GGUF weight stored as rows [out, in]; int8 variant: per-output-channel
        symmetric int8 weights behind a DequantizeLinear (the QDQ form NPU EPs consume)."""
        n_out, n_in = self.weights.shapes[name]
        correction = None
        if self.llama_numerics:
            x, correction = self.round_activations(x, self.weight_types.get(name, "F32"), n_in)
        if self.quant == "int8":
            int8 = _Int8Weight(self.weights, name)
            qname = self.weight(name + ".q", (n_in, n_out), int8.q, "int8")
            sname = self.weight(name + ".scale", (n_out,), int8.scale)
            zname = self.weight(name + ".zero", (n_out,), lambda: np.zeros(n_out, dtype=np.int8), "int8")
            w = self.op("DequantizeLinear", [qname, sname, zname], axis=1)
        else:
            w = self.weight(name, (n_in, n_out), lambda: self.weights.array(name).T)
        out = self.op("MatMul", [x, w])
        if correction is not None and self.weights.has_block_min(name):
            mins_t = self.weight(name + ".block_min", (n_in // 32, n_out),
                                 lambda: self.weights.block_min(name).T)  # [nb, out]
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
        if weight_type in MIN_BLOCK_BYTES:
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


    def rotate(self, x: str, n: int, shape: list[int]) -> str:
        """x (any shape, `shape` after) with each group of n consecutive values multiplied by
        the Hadamard matrix H_n, as llama.cpp rotates quantized K/V (kv_blocks.py)."""
        groups = self.reshape(x, [-1, n])
        return self.reshape(self.op("MatMul", [groups, self.const(hadamard(n))]), shape)

    def fake_quant(self, x: str, fmt: str, n_values: int) -> str:
        """Rows [C, n_values] rounded through q8_0 or q4_0 blocks and back (kv_blocks.py has
        ggml's quantizers these ops repeat)."""
        blocks = self.reshape(x, [-1, n_values // QK, QK])
        if fmt == "q8_0":
            amax = self.op("ReduceMax", [self.op("Abs", [blocks])], axes=[-1], keepdims=1)
            d = self.round_f16(self.op("Div", [amax, self.const(127.0)]))
            inv = self.op("Div", [self.const(127.0), self.op("Max", [amax, self.const(1e-30)])])
            q = self.op("Round", [self.op("Mul", [blocks, inv])])  # half to even, as the AVX path
        else:
            where = self.op("ArgMax", [self.op("Abs", [blocks])], axis=-1, keepdims=1, select_last_index=0)
            signed_max = self.op("GatherElements", [blocks, where], axis=-1)
            d_exact = self.op("Div", [signed_max, self.const(-8.0)])
            zero = self.op("Equal", [d_exact, self.const(0.0)])
            inv = self.op("Where", [zero, self.const(0.0), self.op("Div", [self.const(1.0), d_exact])])
            shifted = self.op("Add", [self.op("Mul", [blocks, inv]), self.const(8.5)])
            q = self.op("Sub", [self.op("Min", [self.op("Floor", [shifted]), self.const(15.0)]), self.const(8.0)])
            d = self.round_f16(d_exact)
        return self.reshape(self.op("Mul", [q, d]), [-1, n_values])

    def cache_values(self, x: str, fmt: CacheFormat, n_tok: int) -> str:
        """K or V rows [C, dim] as llama.cpp's attention reads them back from a cache of this
        format: f16-rounded, or rotated and through q8_0 / q4_0 blocks (rotated basis)."""
        if fmt.name == "f16":
            return self.round_f16(x)
        if fmt.name == "bf16":
            raise ValueError("no ONNX prefill graph for a bf16 cache")
        if fmt.name not in QUANTIZED:
            return x
        if fmt.rotation:
            x = self.rotate(x, fmt.rotation, [n_tok, fmt.dim])
        return self.fake_quant(x, fmt.name, fmt.dim)


class _Int8Weight:
    """Per-output-channel symmetric int8 form of one weight, computed once for its q and scale."""

    def __init__(self, weights: Weights, name: str):
        self.weights, self.name = weights, name
        self._done: tuple[np.ndarray, np.ndarray] | None = None

    def _compute(self) -> tuple[np.ndarray, np.ndarray]:
        if self._done is None:
            w_t = self.weights.array(self.name).T  # [in, out]
            scale = np.maximum(np.abs(w_t).max(axis=0), 1e-12) / 127.0
            self._done = (np.clip(np.rint(w_t / scale), -127, 127).astype(np.int8), scale.astype(np.float32))
        return self._done

    def q(self) -> np.ndarray:
        return self._compute()[0]

    def scale(self) -> np.ndarray:
        return self._compute()[1]


@dataclass(frozen=True)
class KVVariant:
    """The cache formats a graph variant's attention rounds K and V to."""

    k: CacheFormat
    v: CacheFormat

    @property
    def tag(self) -> str:
        """File-name part, e.g. `kq8_0r64-vq8_0r64` (r: the Hadamard block, when rotated)."""
        return "-".join(f"{kind}{fmt.name}{f'r{fmt.rotation}' if fmt.rotation else ''}"
                        for kind, fmt in (("k", self.k), ("v", self.v)))


def build_prefill_graph(spec: ModelSpec, weights: Weights, store: WeightFile, chunk: int, kv: KVVariant,
                        quant: str = "fp32", progress: Callable[[int, int], None] | None = None):
    """The decoder for one chunk of `chunk` tokens (see the module docstring for inputs/outputs);
    `progress(layers done, n_layer)` after each layer (the weight file is written as it goes)."""
    from onnx import TensorProto, helper

    if quant not in ("fp32", "int8"):
        raise ValueError(f"unknown ONNX weight variant {quant!r} (fp32 or int8)")
    g = _GraphBuilder(quant, weights, store)
    C, H, Hk, D = chunk, spec.n_head, spec.n_head_kv, spec.head_dim
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

    embd = g.tensor("token_embd.weight")
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

        h = g.rms_norm(x, g.tensor(p + "attn_norm.weight"), spec.rms_eps)
        q = g.reshape(g.add_bias(g.linear(h, p + "attn_q.weight"), p + "attn_q.bias"), [C, H, D])
        k = g.reshape(g.add_bias(g.linear(h, p + "attn_k.weight"), p + "attn_k.bias"), [C, Hk, D])
        v = g.add_bias(g.linear(h, p + "attn_v.weight"), p + "attn_v.bias")  # [C, Hk*D]
        if spec.arch == "gemma3":
            q = g.rms_norm(q, g.tensor(p + "attn_q_norm.weight"), spec.rms_eps)
            k = g.rms_norm(k, g.tensor(p + "attn_k_norm.weight"), spec.rms_eps)
        q = g.rope(q, cos, sin, spec.neox_rope, H, D, C)
        k = g.reshape(g.rope(k, cos, sin, spec.neox_rope, Hk, D, C), [C, spec.kv_dim])
        g.nodes.append(helper.make_node("Identity", [k], [f"k.{il}"]))
        g.nodes.append(helper.make_node("Identity", [v], [f"v.{il}"]))
        # llama.cpp writes the batch's K/V into its cache and attends over the cache: the
        # chunk attends over K/V rounded to the cache's format too, in its basis (build_attn
        # rotates Q with K's matrix; the one-row flash-attention kernel then rounds Q to K's
        # vec_dot_type, q8_0 for a quantized K: ggml-cpu/ops.cpp q_to_vec_dot).
        k = g.cache_values(k, kv.k, C)
        v = g.cache_values(v, kv.v, C)
        if kv.k.rotation:
            q = g.rotate(q, kv.k.rotation, [C, H, D])
        if kv.k.name in QUANTIZED and g.llama_numerics:
            q = g.reshape(g.fake_quant(g.reshape(q, [C, H * D]), "q8_0", H * D), [C, H, D])

        k_all = g.op("Concat", [past_k, k], axis=0)                               # [T, Hk*D]
        v_all = g.op("Concat", [past_v, v], axis=0)
        k_all = g.op("Transpose", [g.reshape(k_all, [-1, Hk, D])], perm=[1, 2, 0])  # [Hk, D, T]
        k_all = g.op("Unsqueeze", [k_all, g.const([1], np.int64)])                # [Hk, 1, D, T]
        v_all = g.op("Transpose", [g.reshape(v_all, [-1, Hk, D])], perm=[1, 0, 2])  # [Hk, T, D]
        v_all = g.op("Unsqueeze", [v_all, g.const([1], np.int64)])                # [Hk, 1, T, D]
        # query head h reads kv head h // G, as ggml's broadcasting mul_mat does
        q4 = g.op("Transpose", [g.reshape(q, [C, Hk, G, D])], perm=[1, 2, 0, 3])  # [Hk, G, C, D]
        scores = g.op("Mul", [g.op("MatMul", [q4, k_all]), kq_scale])             # [Hk, G, C, T]
        probs = g.op("Softmax", [g.op("Add", [scores, mask])], axis=-1)
        attn = g.op("Transpose", [g.op("MatMul", [probs, v_all])], perm=[2, 0, 1, 3])  # [C, Hk, G, D]
        attn = g.reshape(attn, [C, H * D])
        if kv.v.rotation:  # back from V's rotated basis (build_attn)
            attn = g.rotate(attn, kv.v.rotation, [C, H * D])
        attn = g.add_bias(g.linear(attn, p + "attn_output.weight"), p + "attn_output.bias")
        if spec.arch == "gemma3":
            attn = g.rms_norm(attn, g.tensor(p + "post_attention_norm.weight"), spec.rms_eps)
        x = g.op("Add", [x, attn])

        h = g.rms_norm(x, g.tensor(p + "ffn_norm.weight"), spec.rms_eps)
        gate = g.add_bias(g.linear(h, p + "ffn_gate.weight"), p + "ffn_gate.bias")
        up = g.add_bias(g.linear(h, p + "ffn_up.weight"), p + "ffn_up.bias")
        act = g.gelu_tanh(gate) if spec.arch == "gemma3" else g.op("Mul", [gate, g.op("Sigmoid", [gate])])
        ffn = g.add_bias(g.linear(g.op("Mul", [act, up]), p + "ffn_down.weight"), p + "ffn_down.bias")
        if spec.arch == "gemma3":
            ffn = g.rms_norm(ffn, g.tensor(p + "post_ffw_norm.weight"), spec.rms_eps)
        x = g.op("Add", [x, ffn])
        if progress is not None:
            progress(il + 1, spec.n_layer)

    last = g.op("Gather", [x, "logits_index"], axis=0)  # [1, E]
    last = g.rms_norm(last, g.tensor("output_norm.weight"), spec.rms_eps)
    # Tied embeddings (no output.weight) reuse the Gather table through Gemm's transB.
    head = g.tensor("output.weight") if "output.weight" in weights else embd
    logits = g.add_bias(g.op("Gemm", [last, head], transB=1), "output.bias")
    if spec.logit_softcap:
        cap = g.const(spec.logit_softcap)
        logits = g.op("Mul", [g.op("Tanh", [g.op("Div", [logits, cap])]), cap])
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"]))

    graph = helper.make_graph(g.nodes, f"specdec_prefill_{spec.arch}_c{chunk}_{quant}_{kv.tag}", inputs, outputs,
                              g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="specdec")
    model.ir_version = 8
    return model


def export_prefill_graph(gguf_path: Path, out_path: Path, data_path: Path, chunk: int, kv: KVVariant,
                         quant: str = "fp32", progress: Callable[[int, int], None] | None = None) -> None:
    """Save the graph to `out_path`, which must end up in `data_path`'s folder; its weights
    live in `data_path` (protobuf caps a file at 2 GB): referenced when that file already
    holds them, else written to a temporary file that then replaces it with its manifest."""
    import onnx

    gguf = GgufFile(gguf_path)
    spec = read_spec(gguf)
    weights = Weights(gguf)
    existing = read_manifest(data_path)
    model = None
    if existing is not None:
        try:
            model = build_prefill_graph(spec, weights, WeightFile(data_path.name, existing=existing), chunk, kv,
                                        quant, progress)
        except StaleWeights:
            model = None
    if model is None:
        tmp_data = data_path.with_name(f"{data_path.name}.tmp-{os.getpid()}")
        tmp_manifest = data_path.with_name(f"{data_path.name}.json.tmp-{os.getpid()}")
        try:
            with open(tmp_data, "wb") as out:
                store = WeightFile(data_path.name, out=out)
                model = build_prefill_graph(spec, weights, store, chunk, kv, quant, progress)
            tmp_manifest.write_text(store.manifest_json())
            os.replace(tmp_data, data_path)
            os.replace(tmp_manifest, data_path.with_name(data_path.name + ".json"))
        finally:
            tmp_data.unlink(missing_ok=True)
            tmp_manifest.unlink(missing_ok=True)
    onnx.save_model(model, str(out_path))
