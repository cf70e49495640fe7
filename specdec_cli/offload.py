"""How many of a model's layers run on the GPU (EngineConfig.gpu_layers: N, all or auto).
Pure: the GPU devices with their free memory and the model's sizes in, a plan out;
devices.offload_plan asks ggml and the GGUF file for the numbers.

llama.cpp counts a model's repeating blocks and then its output layer: with n blocks,
n_gpu_layers = n + 1 puts every layer on the GPU, n keeps the output layer on the CPU,
and the last k blocks go first (the token embeddings always stay in host memory). The
KV cache of an offloaded layer lives on the GPU with it. Like llama.cpp, the plan uses
every discrete GPU, and integrated GPUs only when there is no discrete one.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError

GPU_LAYER_WORDS = ("auto", "all")
# Memory a GPU needs besides weights, KV cache and logits: the backend's own context
# (CUDA's is ~300-500 MiB), cuBLAS workspaces and the activations of a 512-token batch.
RESERVE_BYTES = 512 * 2**20
_GIB = 2**30
# What the warning for layers without a GPU backend tells the user to run (README, "GPU offload").
INSTALL_HINT = ('pip uninstall llama-cpp-python, then in specdec\'s source '
                'CMAKE_ARGS="-DGGML_CUDA=on" PIP_NO_CACHE_DIR=1 pip install . '
                '(Vulkan: -DGGML_VULKAN=on; README, "GPU offload")')


@dataclass(frozen=True)
class GpuDevice:
    name: str  # ggml's device name, e.g. "CUDA0", "Metal", "Vulkan0"
    backend: str  # the ggml backend it belongs to: "CUDA", "Metal", "Vulkan", "HIP", "SYCL", ...
    description: str
    integrated: bool  # an iGPU sharing host memory (ggml's IGPU type)
    free_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class ModelFootprint:
    n_layers: int  # repeating blocks (GGUF `{arch}.block_count`)
    weight_bytes: int
    kv_bytes: int  # the whole KV cache at the run's context size and KV types
    logits_bytes: int  # llama.cpp's output buffer for one full batch of rows

    @property
    def layer_bytes(self) -> float:
        """One offloaded block: its weights and its KV cache. The weights are spread over
        n + 1 layers, which over-counts a block (the embeddings stay on the CPU): a plan
        that fits this way fits."""
        return self.weight_bytes / (self.n_layers + 1) + self.kv_bytes / self.n_layers

    @property
    def all_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.logits_bytes + RESERVE_BYTES


@dataclass(frozen=True)
class OffloadPlan:
    n_gpu_layers: int  # what llama.cpp gets: 0 = CPU only, n_layers + 1 = every layer
    backend: str  # where the offloaded layers run: "CPU" when none are, else e.g. "CUDA"
    devices: tuple[str, ...]  # ggml device names holding layers
    reason: str  # why this many, in words
    warning: str | None = None  # layers were asked for that cannot be had


def parse_gpu_layers(text: str) -> str:
    """The canonical form of a layer request: "auto", "all" or a count ("10")."""
    value = text.strip().lower()
    if value in GPU_LAYER_WORDS:
        return value
    if value.isdigit():  # digits only: no sign, so no negative count
        return str(int(value))
    raise UsageError(f"{text!r} is not a number of GPU layers, 'all' or 'auto'")


def kv_type_bytes(name: str) -> float:
    """Bytes per stored value of a KV cache type ("f16": 2, "q8_0": 34/32, ...)."""
    # Imported here: the CLI parses --gpu-layers with this module, and gguf costs ~75 ms to import.
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[name.upper()]]
    return size / block


def model_footprint(metadata: dict, architecture: str | None, *, file_size: int, n_vocab: int | None,
                    n_ctx: int, n_batch: int, kv_k: str, kv_v: str) -> ModelFootprint | None:
    """The sizes the plan needs, from a GGUF file's scalar metadata; None when the file
    does not give its layer count (llama.cpp refuses such a file anyway)."""
    def number(key: str) -> int | None:
        value = metadata.get(f"{architecture}.{key}")
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    n_layers = number("block_count")
    if n_layers is None:
        return None
    embedding = number("embedding_length") or 0
    heads = number("attention.head_count") or 1
    # Per-layer head counts are arrays, which the metadata leaves out: then every head
    # has its own K and V, an upper bound.
    kv_heads = number("attention.head_count_kv") or heads
    key_length = number("attention.key_length") or embedding // heads
    value_length = number("attention.value_length") or embedding // heads
    per_cell = kv_heads * (key_length * kv_type_bytes(kv_k) + value_length * kv_type_bytes(kv_v))
    return ModelFootprint(n_layers=n_layers, weight_bytes=file_size,
                          kv_bytes=int(n_layers * n_ctx * per_cell),
                          logits_bytes=4 * n_batch * (n_vocab or 0))


def plan_offload(request: str, devices: list[GpuDevice], footprint: ModelFootprint | None) -> OffloadPlan:
    """How many layers to offload for a request ("auto", "all" or a count)."""
    request = parse_gpu_layers(request)
    gpus = [d for d in devices if not d.integrated] or list(devices)
    if request == "0":
        return OffloadPlan(0, "CPU", (), "0 GPU layers asked for")
    if not gpus:
        if request == "auto":
            return OffloadPlan(0, "CPU", (), "this llama.cpp build has no GPU backend")
        return OffloadPlan(0, "CPU", (), "this llama.cpp build has no GPU backend",
                           warning=f"{request} GPU layers asked for, but this llama.cpp build has no GPU backend: "
                                   f"running on the CPU. To install one: {INSTALL_HINT}")
    if footprint is None:
        return OffloadPlan(0, "CPU", (), "the model file does not give its layer count")
    backend = "+".join(dict.fromkeys(d.backend for d in gpus))
    names = tuple(d.name for d in gpus)
    every = footprint.n_layers + 1
    if request == "all":
        return OffloadPlan(every, backend, names, "all layers asked for")
    if request != "auto":
        return OffloadPlan(min(int(request), every), backend, names, f"{request} GPU layers asked for")
    free = sum(d.free_bytes for d in gpus)
    where = f"{free / _GIB:.1f} GiB free on {', '.join(names)}"
    if footprint.all_bytes <= free:
        return OffloadPlan(every, backend, names,
                           f"auto: the model ({footprint.weight_bytes / _GIB:.2f} GiB) and its KV cache "
                           f"({footprint.kv_bytes / _GIB:.2f} GiB) fit in {where}")
    room = free - RESERVE_BYTES - footprint.logits_bytes
    fit = max(0, min(footprint.n_layers, int(room // footprint.layer_bytes))) if room > 0 else 0
    if fit == 0:
        return OffloadPlan(0, "CPU", (), f"auto: not one layer fits in {where}")
    return OffloadPlan(fit, backend, names, f"auto: {fit} of {every} layers fit in {where}")
