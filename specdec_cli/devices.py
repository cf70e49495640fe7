"""What this machine offers for inference: CPU, memory, llama.cpp backends, onnxruntime EPs."""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from .gguf_file import check_gguf
from .offload import GpuDevice, OffloadPlan, model_footprint, plan_offload

_SIMD_FLAGS = ("sse3", "ssse3", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512vnni",
               "avx512_bf16", "amx_tile", "neon", "asimd", "sve", "dotprod", "asimddp", "i8mm")
_GGML_DEVICE_TYPES = {0: "CPU", 1: "GPU", 2: "IGPU", 3: "ACCEL"}
_GPU_TYPES = ("GPU", "IGPU")


@dataclass
class BackendDevice:
    name: str
    description: str
    type: str
    backend: str = ""  # the ggml backend it belongs to: CPU, CUDA, Metal, Vulkan, ...
    free_bytes: int = 0
    total_bytes: int = 0


@dataclass
class OrtDevice:
    provider: str
    type: str  # NPU | GPU | CPU
    description: str


@dataclass
class DeviceReport:
    cpu_model: str
    arch: str
    physical_cores: int
    logical_cores: int
    simd: list[str]
    ram_total_bytes: int
    ram_available_bytes: int
    llama_system_info: str
    llama_devices: list[BackendDevice] = field(default_factory=list)
    gpu_offload: bool = False
    onnxruntime_version: str = ""
    onnxruntime_providers: list[str] = field(default_factory=list)
    onnxruntime_devices: list[OrtDevice] = field(default_factory=list)
    npu_providers: list[str] = field(default_factory=list)

    @property
    def has_npu(self) -> bool:
        return bool(self.npu_providers)

    @property
    def gpu_backends(self) -> list[str]:
        """The GPU backends compiled into this llama.cpp build (none: a CPU-only build)."""
        return sorted({d.backend for d in self.llama_devices if d.type in _GPU_TYPES})

    def to_dict(self) -> dict:
        data = asdict(self)
        data["has_npu"] = self.has_npu
        data["gpu_backends"] = self.gpu_backends
        return data

    def fingerprint(self) -> str:
        """Stable id of the compute this machine offers, for per-device tuner profiles."""
        return _fingerprint(self.cpu_model, self.physical_cores, self.logical_cores, self.llama_devices)


def _fingerprint(cpu: str, physical: int, logical: int, llama_devices: list[BackendDevice]) -> str:
    gpus = sorted(d.description for d in llama_devices if d.type != "CPU")
    key = "|".join([cpu, str(physical), str(logical), *gpus])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def device_fingerprint() -> str:
    """The same id as DeviceReport.fingerprint() without the rest of the report (which
    starts onnxruntime): what a tuner profile is keyed by."""
    return _fingerprint(cpu_model(), psutil.cpu_count(logical=False) or os.cpu_count() or 1,
                        psutil.cpu_count(logical=True) or os.cpu_count() or 1, llama_backend_devices())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Hardware", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def simd_features() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    if "pni" in flags:  # Linux names SSE3 "pni" (Prescott New Instructions)
        flags.add("sse3")
    return [f for f in _SIMD_FLAGS if f in flags]


def llama_backend_devices() -> list[BackendDevice]:
    """ggml's registered devices (CPU, CUDA, Metal, Vulkan, ...) from the library that
    llama-cpp-python was built with."""
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(lib_dir.glob("libggml.so*")) + sorted(lib_dir.glob("libggml.dylib")) + \
        sorted(lib_dir.glob("ggml.dll"))
    if not candidates:
        return []
    lib = ctypes.CDLL(str(candidates[0]))
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for fn in (lib.ggml_backend_dev_name, lib.ggml_backend_dev_description):
        fn.restype = ctypes.c_char_p
        fn.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_memory.restype = None
    lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                            ctypes.POINTER(ctypes.c_size_t)]
    lib.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    lib.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_name.restype = ctypes.c_char_p
    lib.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    devices = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        devices.append(BackendDevice(
            name=(lib.ggml_backend_dev_name(dev) or b"").decode(),
            description=(lib.ggml_backend_dev_description(dev) or b"").decode(),
            type=_GGML_DEVICE_TYPES.get(lib.ggml_backend_dev_type(dev), "OTHER"),
            backend=(lib.ggml_backend_reg_name(lib.ggml_backend_dev_backend_reg(dev)) or b"").decode(),
            free_bytes=free.value, total_bytes=total.value))
    return devices


def gpu_devices() -> list[GpuDevice]:
    """The GPUs llama.cpp can offload layers to, with their free memory now (RPC servers
    are remote machines, not this one's GPUs)."""
    return [GpuDevice(name=d.name, backend=d.backend, description=d.description, integrated=d.type == "IGPU",
                      free_bytes=d.free_bytes, total_bytes=d.total_bytes)
            for d in llama_backend_devices() if d.type in _GPU_TYPES and d.backend != "RPC"]


def offload_plan(model_path: Path, request: str, *, n_ctx: int, n_batch: int, kv_k: str, kv_v: str) -> OffloadPlan:
    """offload.plan_offload for this model on this machine's GPUs; the GGUF header is only
    read when there is a GPU to plan for."""
    devices = gpu_devices()
    footprint = None
    if devices:
        info = check_gguf(model_path)
        footprint = model_footprint(info.metadata, info.architecture, file_size=info.file_size,
                                    n_vocab=info.n_vocab, n_ctx=n_ctx, n_batch=n_batch, kv_k=kv_k, kv_v=kv_v)
    return plan_offload(request, devices, footprint)


def onnxruntime_devices() -> tuple[str, list[str], list[OrtDevice]]:
    import onnxruntime as ort

    from .prefill.providers import list_providers

    devices = [OrtDevice(ep.name, ep.device_type, ep.description) for ep in list_providers()]
    return ort.__version__, list(ort.get_available_providers()), devices


def device_report() -> DeviceReport:
    from . import llama

    llama.init_backend()
    mem = psutil.virtual_memory()
    ort_version, providers, ort_devs = onnxruntime_devices()
    return DeviceReport(
        cpu_model=cpu_model(),
        arch=platform.machine(),
        physical_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        logical_cores=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        simd=simd_features(),
        ram_total_bytes=mem.total,
        ram_available_bytes=mem.available,
        llama_system_info=llama.system_info().strip(" |"),
        llama_devices=llama_backend_devices(),
        gpu_offload=llama.supports_gpu_offload(),
        onnxruntime_version=ort_version,
        onnxruntime_providers=providers,
        onnxruntime_devices=ort_devs,
        npu_providers=sorted({d.provider for d in ort_devs if d.type == "NPU"}),
    )
