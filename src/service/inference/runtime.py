"""Runtimes: one interface over the ways of running the model (eager, exported, quantized).

Every runtime takes a normalised float batch [N,1,28,28] (a numpy array, as serving passes it,
or a tensor) and returns class probabilities [N,C] as a numpy array. Variants register
themselves by name (``@register_runtime("onnx")``); ``build_runtime`` builds one by name; those
that run torch import it when built, so a process serving an ONNX graph never loads it. Which
variant serves a given model is not decided here: the release measures every selectable variant
for that model (``inference.selection``) and serving verifies the choice on its own machine
before using it (``inference.loader``).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from service.inference.verification import Verification
from service.ml.checkpoint import LoadedCheckpoint
from service.ml.device import Device
from service.ml.preprocess import Normalization
from service.ml.threads import compute_threads, torch_module

if TYPE_CHECKING:  # torch is imported by the variants that run it (never by ONNX Runtime's)
    import torch

    DeviceLike = Device | torch.device

log = logging.getLogger(__name__)

# The order ``auto`` tries when a version carries no measurement for this kind of device (it was
# released on another one): measured on CPU in docs/benchmarks/runtimes.md, and every step is
# still verified against eager on this machine before it serves.
AUTO_PREFERENCE_CPU: tuple[str, ...] = ("onnx-int8", "onnx", "torchscript", "eager")
# On CUDA the CPU-only variants (int8 kernels, ONNX Runtime's CPU provider) are never chosen.
AUTO_PREFERENCE_CUDA: tuple[str, ...] = ("eager",)


class RuntimeUnavailable(RuntimeError):
    """A runtime variant cannot be built here; the message says why and what to do instead."""


class Runtime(Protocol):
    name: str
    device: DeviceLike

    def predict_proba(self, batch: np.ndarray | torch.Tensor) -> np.ndarray: ...


@dataclass
class EagerRuntime:
    """Plain PyTorch under inference_mode."""

    model: torch.nn.Module
    device: DeviceLike
    name: str = "eager"

    def predict_proba(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        import torch

        with torch.inference_mode():
            log_probs = self.model(torch.as_tensor(batch).to(self.device, non_blocking=True))
            return log_probs.exp_().float().cpu().numpy()


@dataclass
class ChannelsLastRuntime:
    """Eager PyTorch with weights and inputs in NHWC, which oneDNN convolutions prefer."""

    model: torch.nn.Module
    device: DeviceLike
    name: str = "channels-last"

    def predict_proba(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        import torch

        with torch.inference_mode():
            inputs = torch.as_tensor(batch).to(self.device, non_blocking=True).contiguous(
                memory_format=torch.channels_last
            )
            return self.model(inputs).exp_().float().cpu().numpy()


@dataclass
class OnnxRuntime:
    """An ONNX Runtime session over an exported graph that already ends in probabilities."""

    session: Any  # onnxruntime.InferenceSession
    device: DeviceLike
    name: str = "onnx"
    artifact: Path | None = None
    input_name: str = "digits"

    def predict_proba(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        array = batch if isinstance(batch, np.ndarray) else batch.detach().to("cpu").numpy()
        if array.dtype != np.float32 or not array.flags.c_contiguous:
            array = np.ascontiguousarray(array, dtype=np.float32)
        return self.session.run(None, {self.input_name: array})[0]


@dataclass
class LoadedModel:
    """What serving holds: a runtime, the checkpoint's metadata, and how the runtime was chosen."""

    runtime: Runtime
    metadata: dict[str, Any]
    version: str
    path: Path
    runtime_requested: str = "auto"
    verification: Verification | None = None  # None: no verification set to check against
    fallbacks: list[dict[str, str]] = field(default_factory=list)  # variants passed over, why

    @property
    def runtime_name(self) -> str:
        return str(getattr(self.runtime, "name", "unknown"))

    def runtime_status(self) -> dict[str, Any]:
        """What /model-info and /ready say about the runtime in use and how it was chosen."""
        return {
            "runtime": self.runtime_name,
            "runtime_requested": self.runtime_requested,
            "device": str(getattr(self.runtime, "device", "unknown")),
            "verification": self.verification.as_dict() if self.verification else None,
            "runtime_fallbacks": self.fallbacks,
        }

    @property
    def normalization(self) -> Normalization:
        return Normalization(**self.metadata["normalization"])

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["class_names"])


# --- the registry of variants ---------------------------------------------------------------

RuntimeBuilder = Callable[[LoadedCheckpoint, "DeviceLike"], Runtime]


@dataclass(frozen=True)
class RuntimeSpec:
    name: str
    builder: RuntimeBuilder
    cpu_only: bool
    summary: str
    selectable: bool = True  # whether ``auto`` measures and may choose it


RUNTIMES: dict[str, RuntimeSpec] = {}


def register_runtime(
    name: str, *, cpu_only: bool = False, summary: str = "", selectable: bool = True
) -> Callable[[RuntimeBuilder], RuntimeBuilder]:
    def decorator(builder: RuntimeBuilder) -> RuntimeBuilder:
        RUNTIMES[name] = RuntimeSpec(
            name, builder, cpu_only, summary or (builder.__doc__ or ""), selectable
        )
        return builder

    return decorator


def runtime_names() -> list[str]:
    """Every name RUNTIME takes, ``auto`` first."""
    return ["auto", *RUNTIMES]


def selectable_variants(device: DeviceLike) -> list[str]:
    """The variants ``auto`` measures for ``device``: registered, selectable, able to run there."""
    return [spec.name for spec in RUNTIMES.values()
            if spec.selectable and not (spec.cpu_only and device.type != "cpu")]


@register_runtime("eager", summary="plain PyTorch under inference_mode")
def _build_eager(checkpoint: LoadedCheckpoint, device: DeviceLike) -> Runtime:
    torch_module()
    return EagerRuntime(checkpoint.model, device)


@register_runtime("channels-last", summary="eager PyTorch, NHWC weights and inputs")
def _build_channels_last(checkpoint: LoadedCheckpoint, device: DeviceLike) -> Runtime:
    torch = torch_module()
    model = copy.deepcopy(checkpoint.model).to(device, memory_format=torch.channels_last).eval()
    return ChannelsLastRuntime(model, device)


@register_runtime("torchscript", summary="traced, frozen, optimize_for_inference")
def _build_torchscript(checkpoint: LoadedCheckpoint, device: DeviceLike) -> Runtime:
    torch = torch_module()
    example = torch.zeros(1, 1, 28, 28, device=device)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still fastest
        traced = torch.jit.trace(checkpoint.model.to(device).eval(), example)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    return EagerRuntime(frozen, device, name="torchscript")


# Not selectable: inductor compiles in every process that loads it (33 s on the 2-core CI box)
# and was slower than TorchScript there (docs/benchmarks/runtimes.md); RUNTIME=compile still works.
@register_runtime(
    "compile", summary="torch.compile (inductor), dynamic batch size", selectable=False
)
def _build_compile(checkpoint: LoadedCheckpoint, device: DeviceLike) -> Runtime:
    """Compiles on first call, so it is warmed here; a failure falls back to eager, logged."""
    torch = torch_module()
    try:
        compiled = torch.compile(checkpoint.model.to(device).eval(), dynamic=True)
        runtime = EagerRuntime(compiled, device, name="compile")  # type: ignore[arg-type]
        for size in (1, 2):
            runtime.predict_proba(torch.zeros(size, 1, 28, 28))
        return runtime
    except Exception as exc:  # inductor needs a C++ compiler (CPU) or Triton (CUDA)
        log.warning(
            "torch.compile is unavailable here (%s: %s); serving the eager runtime instead",
            type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "",
        )
        return EagerRuntime(checkpoint.model.to(device).eval(), device)


@register_runtime("int8", cpu_only=True, summary="PyTorch dynamic int8 quantization (Linear)")
def _build_int8(checkpoint: LoadedCheckpoint, device: DeviceLike) -> Runtime:
    torch = torch_module()
    model = copy.deepcopy(checkpoint.model).to("cpu").eval()
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(
            model, {torch.nn.Linear}, dtype=torch.qint8
        )
    return EagerRuntime(quantized, device, name="int8")


@register_runtime("onnx", summary="ONNX Runtime, fp32 graph exported next to the checkpoint")
def _build_onnx(checkpoint: LoadedCheckpoint, device: DeviceLike) -> Runtime:
    from service.inference import export

    path = export.ensure_artifact(checkpoint, "onnx")
    return onnx_session(path, device, "onnx")


@register_runtime(
    "onnx-int8", cpu_only=True,
    summary="ONNX Runtime, static int8 (QDQ, calibrated on training digits)",
)
def _build_onnx_int8(checkpoint: LoadedCheckpoint, device: DeviceLike) -> Runtime:
    from service.inference import export

    path = export.ensure_artifact(checkpoint, "onnx-int8")
    return onnx_session(path, device, "onnx-int8")


def onnx_session(path: Path, device: DeviceLike, name: str) -> OnnxRuntime:
    """An ONNX graph as serving runs it: TORCH_THREADS intra-op threads, sequential, every graph
    optimisation, CUDA when ``device`` is (scripts that measure a graph open it here too)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise RuntimeUnavailable(
            f"runtime {name!r} needs onnxruntime: pip install onnxruntime (or RUNTIME=eager)"
        ) from exc
    options = ort.SessionOptions()
    # One serving process per core: ONNX Runtime follows the model's threads (TORCH_THREADS).
    options.intra_op_num_threads = compute_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeUnavailable(
                f"runtime {name!r} on {device} needs onnxruntime-gpu (CUDAExecutionProvider); "
                "install it, or use RUNTIME=eager on CUDA"
            )
        providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), *providers]
    session = ort.InferenceSession(str(path), options, providers=providers)
    return OnnxRuntime(session, device, name=name, artifact=path,
                       input_name=session.get_inputs()[0].name)


# --- choosing and building --------------------------------------------------------------------


def auto_preference(device: DeviceLike) -> tuple[str, ...]:
    return AUTO_PREFERENCE_CUDA if device.type == "cuda" else AUTO_PREFERENCE_CPU


def build_runtime(checkpoint: LoadedCheckpoint, name: str, device: DeviceLike) -> Runtime:
    """The named variant on ``device``; RuntimeUnavailable says why it cannot be built here."""
    try:
        spec = RUNTIMES[name]
    except KeyError:
        choices = ", ".join(runtime_names())
        raise ValueError(f"unknown runtime {name!r}; choose one of {choices}") from None
    if spec.cpu_only and device.type != "cpu":
        raise RuntimeUnavailable(
            f"runtime {name!r} runs on CPU only ({spec.summary}); set DEVICE=cpu, or "
            f"RUNTIME=auto to get {auto_preference(device)[0]!r} on {device}"
        )
    return spec.builder(checkpoint, device)
