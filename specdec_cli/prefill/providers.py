"""Which onnxruntime execution providers this machine offers, and which of them are NPUs.

`get_available_providers()` only lists what the onnxruntime package was built with; since
onnxruntime 1.22 `get_ep_devices()` lists (provider, hardware device) pairs with the
device type (CPU / GPU / NPU), including plugin EPs registered at run time. Use the newer
API when present (docs/DESIGN.md, NPU prefill).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ProviderUnavailable

# Provider name -> (NPU it drives, package that ships it, provider options that target the NPU).
NPU_PROVIDERS: dict[str, tuple[str, str, dict[str, str]]] = {
    "QNNExecutionProvider": ("Qualcomm Hexagon", "onnxruntime-qnn", {"backend_type": "htp"}),
    "OpenVINOExecutionProvider": ("Intel NPU", "onnxruntime-openvino", {"device_type": "NPU"}),
    "CoreMLExecutionProvider": ("Apple Neural Engine", "onnxruntime (macOS wheel)",
                                {"MLComputeUnits": "CPUAndNeuralEngine", "ModelFormat": "MLProgram",
                                 "RequireStaticInputShapes": "1"}),
    "VitisAIExecutionProvider": ("AMD Ryzen AI", "onnxruntime-vitisai (Ryzen AI SDK)", {}),
    "DmlExecutionProvider": ("DirectML NPU", "onnxruntime-directml", {"device_filter": "npu"}),
}
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider",
                 "MIGraphXExecutionProvider", "WebGpuExecutionProvider")
# Providers that are never a compute target for prefill.
_IGNORED = {"AzureExecutionProvider"}
SHORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "qnn": "QNNExecutionProvider",
               "openvino": "OpenVINOExecutionProvider", "coreml": "CoreMLExecutionProvider",
               "vitisai": "VitisAIExecutionProvider", "dml": "DmlExecutionProvider",
               "tensorrt": "TensorrtExecutionProvider"}


@dataclass(frozen=True)
class ExecutionProvider:
    name: str            # e.g. "QNNExecutionProvider"
    device_type: str     # "NPU" | "GPU" | "CPU"
    description: str     # what it runs on, for `specdec devices`
    vendor: str = ""
    options: tuple[tuple[str, str], ...] = ()

    @property
    def is_npu(self) -> bool:
        return self.device_type == "NPU"


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - onnxruntime is a dependency
        raise ProviderUnavailable(f"onnxruntime is not installed ({exc})") from exc
    return onnxruntime


def _static_type(name: str) -> str:
    if name in NPU_PROVIDERS:
        # OpenVINO / DirectML also drive CPUs and GPUs; without the device API we only
        # know that the package *can* target an NPU.
        return "NPU"
    return "GPU" if name in GPU_PROVIDERS else "CPU"


def _describe(name: str, device_type: str) -> str:
    if name in NPU_PROVIDERS and device_type == "NPU":
        return f"{NPU_PROVIDERS[name][0]} ({NPU_PROVIDERS[name][1]})"
    return {"CPU": "CPU", "GPU": "GPU"}.get(device_type, device_type)


def list_providers() -> list[ExecutionProvider]:
    """Every (provider, device type) pair onnxruntime can run prefill on, NPUs first."""
    ort = _ort()
    found: dict[tuple[str, str], ExecutionProvider] = {}
    get_ep_devices = getattr(ort, "get_ep_devices", None)
    if get_ep_devices is not None:
        for ep_device in get_ep_devices():
            name = ep_device.ep_name
            dev_type = ep_device.device.type.name if hasattr(ep_device.device.type, "name") \
                else str(ep_device.device.type).rsplit(".", 1)[-1]
            if name in _IGNORED:
                continue
            found.setdefault((name, dev_type), ExecutionProvider(
                name, dev_type, _describe(name, dev_type), vendor=str(ep_device.device.vendor),
                options=tuple(NPU_PROVIDERS[name][2].items()) if dev_type == "NPU" and name in NPU_PROVIDERS else ()))
    # Providers compiled into the package but not (yet) reported by the device API.
    for name in ort.get_available_providers():
        if name in _IGNORED or any(key[0] == name for key in found):
            continue
        dev_type = _static_type(name)
        found[(name, dev_type)] = ExecutionProvider(
            name, dev_type, _describe(name, dev_type),
            options=tuple(NPU_PROVIDERS[name][2].items()) if dev_type == "NPU" else ())
    order = {"NPU": 0, "GPU": 1, "CPU": 2}
    return sorted(found.values(), key=lambda ep: (order.get(ep.device_type, 3), ep.name))


def npu_providers() -> list[ExecutionProvider]:
    return [ep for ep in list_providers() if ep.is_npu]


def choose_provider(requested: str | None = "auto") -> ExecutionProvider:
    """`auto`: the first NPU, else a GPU, else the CPU provider (which stands in for an NPU
    on machines without one). A name ("qnn", "QNNExecutionProvider", ...) must be present."""
    providers = list_providers()
    if requested in (None, "", "auto"):
        if providers:
            return providers[0]  # sorted NPU, GPU, CPU
        raise ProviderUnavailable("onnxruntime reports no execution provider")
    name = SHORT_NAMES.get(requested.lower(), requested)
    for ep in providers:
        if ep.name.lower() == name.lower():
            return ep
    hint = ""
    if name in NPU_PROVIDERS:
        hint = f" (install {NPU_PROVIDERS[name][1]})"
    available = ", ".join(sorted({ep.name for ep in providers})) or "none"
    raise ProviderUnavailable(f"execution provider {requested!r} is not available{hint}; available: {available}")
