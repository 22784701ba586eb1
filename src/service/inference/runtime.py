"""Runtimes: one interface over the ways of running the model (eager, exported, quantized).

Every runtime takes a normalised float batch [N,1,28,28] and returns class probabilities
[N,C] as a numpy array. The release gate, the API and the worker all load through
``load_runtime``, so the checkpoint is checked along the same path that serves it.

Variants register themselves by name (``@register_runtime("onnx")``). ``runtime="auto"`` picks
the fastest variant that kept test accuracy within 0.2 points of eager and agreed with eager on
at least 99.5% of test digits when measured on this kind of machine (``lab2prod bench
--runtimes``; the numbers are in docs/benchmarks/runtimes.md). When the preferred variant
cannot be built here (onnxruntime missing, no calibration digits), ``auto`` logs why and
takes the next one; an explicitly named variant that cannot be built raises RuntimeUnavailable.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from service.ml.checkpoint import LoadedCheckpoint, load_checkpoint
from service.ml.preprocess import Normalization

log = logging.getLogger(__name__)

# Measured order on CPU (docs/benchmarks/runtimes.md): int8 ONNX Runtime ~3x fp32 ONNX Runtime,
# which beats TorchScript, which beats eager. ``auto`` walks this list until one builds.
AUTO_PREFERENCE_CPU: tuple[str, ...] = ("onnx-int8", "onnx", "torchscript", "eager")
# On CUDA the CPU-only variants (int8 kernels, ONNX Runtime's CPU provider) are never chosen.
AUTO_PREFERENCE_CUDA: tuple[str, ...] = ("eager",)


class RuntimeUnavailable(RuntimeError):
    """A runtime variant cannot be built here; the message says why and what to do instead."""


class Runtime(Protocol):
    name: str
    device: torch.device

    def predict_proba(self, batch: torch.Tensor) -> np.ndarray: ...


def resolve_device(requested: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; an explicit device is taken as given."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


@dataclass
class EagerRuntime:
    """Plain PyTorch under inference_mode."""

    model: torch.nn.Module
    device: torch.device
    name: str = "eager"

    def predict_proba(self, batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            log_probs = self.model(batch.to(self.device, non_blocking=True))
            return log_probs.exp_().float().cpu().numpy()


@dataclass
class ChannelsLastRuntime:
    """Eager PyTorch with weights and inputs in NHWC, which oneDNN convolutions prefer."""

    model: torch.nn.Module
    device: torch.device
    name: str = "channels-last"

    def predict_proba(self, batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            inputs = batch.to(self.device, non_blocking=True).contiguous(
                memory_format=torch.channels_last
            )
            return self.model(inputs).exp_().float().cpu().numpy()


@dataclass
class OnnxRuntime:
    """An ONNX Runtime session over an exported graph that already ends in probabilities."""

    session: Any  # onnxruntime.InferenceSession
    device: torch.device
    name: str = "onnx"
    artifact: Path | None = None
    input_name: str = "digits"

    def predict_proba(self, batch: torch.Tensor) -> np.ndarray:
        array = batch.detach().to("cpu").numpy() if isinstance(batch, torch.Tensor) else batch
        if array.dtype != np.float32 or not array.flags.c_contiguous:
            array = np.ascontiguousarray(array, dtype=np.float32)
        return self.session.run(None, {self.input_name: array})[0]


@dataclass
class LoadedModel:
    """What serving holds: a runtime plus the checkpoint's metadata."""

    runtime: Runtime
    metadata: dict[str, Any]
    version: str
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def normalization(self) -> Normalization:
        return Normalization(**self.metadata["normalization"])

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["class_names"])


# --- the registry of variants ---------------------------------------------------------------

RuntimeBuilder = Callable[[LoadedCheckpoint, torch.device], Runtime]


@dataclass(frozen=True)
class RuntimeSpec:
    name: str
    builder: RuntimeBuilder
    cpu_only: bool
    summary: str


RUNTIMES: dict[str, RuntimeSpec] = {}


def register_runtime(
    name: str, *, cpu_only: bool = False, summary: str = ""
) -> Callable[[RuntimeBuilder], RuntimeBuilder]:
    def decorator(builder: RuntimeBuilder) -> RuntimeBuilder:
        RUNTIMES[name] = RuntimeSpec(name, builder, cpu_only, summary or (builder.__doc__ or ""))
        return builder

    return decorator


def runtime_names() -> list[str]:
    """Every selectable name, ``auto`` first."""
    return ["auto", *RUNTIMES]


@register_runtime("eager", summary="plain PyTorch under inference_mode")
def _build_eager(checkpoint: LoadedCheckpoint, device: torch.device) -> Runtime:
    return EagerRuntime(checkpoint.model, device)


@register_runtime("channels-last", summary="eager PyTorch, NHWC weights and inputs")
def _build_channels_last(checkpoint: LoadedCheckpoint, device: torch.device) -> Runtime:
    model = copy.deepcopy(checkpoint.model).to(device, memory_format=torch.channels_last).eval()
    return ChannelsLastRuntime(model, device)


@register_runtime("torchscript", summary="traced, frozen, optimize_for_inference")
def _build_torchscript(checkpoint: LoadedCheckpoint, device: torch.device) -> Runtime:
    example = torch.zeros(1, 1, 28, 28, device=device)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still fastest
        traced = torch.jit.trace(checkpoint.model.to(device).eval(), example)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    return EagerRuntime(frozen, device, name="torchscript")


@register_runtime("compile", summary="torch.compile (inductor), dynamic batch size")
def _build_compile(checkpoint: LoadedCheckpoint, device: torch.device) -> Runtime:
    """Compiles on first call, so it is warmed here; a failure falls back to eager, logged."""
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
def _build_int8(checkpoint: LoadedCheckpoint, device: torch.device) -> Runtime:
    model = copy.deepcopy(checkpoint.model).to("cpu").eval()
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(
            model, {torch.nn.Linear}, dtype=torch.qint8
        )
    return EagerRuntime(quantized, device, name="int8")


@register_runtime("onnx", summary="ONNX Runtime, fp32 graph exported next to the checkpoint")
def _build_onnx(checkpoint: LoadedCheckpoint, device: torch.device) -> Runtime:
    from service.inference import export

    path = export.ensure_artifact(checkpoint, "onnx")
    return _onnx_session(path, device, "onnx")


@register_runtime(
    "onnx-int8", cpu_only=True,
    summary="ONNX Runtime, static int8 (QDQ, calibrated on training digits)",
)
def _build_onnx_int8(checkpoint: LoadedCheckpoint, device: torch.device) -> Runtime:
    from service.inference import export

    path = export.ensure_artifact(checkpoint, "onnx-int8")
    return _onnx_session(path, device, "onnx-int8")


def _onnx_session(path: Path, device: torch.device, name: str) -> OnnxRuntime:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise RuntimeUnavailable(
            f"runtime {name!r} needs onnxruntime: pip install onnxruntime (or RUNTIME=eager)"
        ) from exc
    options = ort.SessionOptions()
    # One serving process per core: ONNX Runtime follows torch's thread setting (TORCH_THREADS).
    options.intra_op_num_threads = torch.get_num_threads()
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


def auto_preference(device: torch.device) -> tuple[str, ...]:
    return AUTO_PREFERENCE_CUDA if device.type == "cuda" else AUTO_PREFERENCE_CPU


def build_runtime(checkpoint: LoadedCheckpoint, name: str, device: torch.device) -> Runtime:
    """The named variant on ``device``; ``auto`` takes the first of the measured preference
    order that builds here and logs each one it had to skip."""
    if name == "auto":
        failures: list[str] = []
        for candidate in auto_preference(device):
            try:
                runtime = _build_named(checkpoint, candidate, device)
            except (RuntimeUnavailable, ImportError, OSError) as exc:
                failures.append(f"{candidate}: {exc}")
                log.warning("runtime=auto: %s unavailable (%s); trying the next one",
                            candidate, exc)
                continue
            return runtime
        raise RuntimeUnavailable(
            "runtime=auto found no variant that builds: " + "; ".join(failures)
        )
    return _build_named(checkpoint, name, device)


def _build_named(checkpoint: LoadedCheckpoint, name: str, device: torch.device) -> Runtime:
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


def load_runtime(
    path: str | Path, *, runtime: str = "auto", device: str = "auto", version: str = "unversioned"
) -> LoadedModel:
    """Load a checkpoint through the one loader and wrap it in the chosen runtime."""
    target = resolve_device(device)
    checkpoint = load_checkpoint(path, device=target)
    built = build_runtime(checkpoint, runtime, target)
    return LoadedModel(
        runtime=built,
        metadata=checkpoint.metadata,
        version=version,
        path=Path(path),
        extra={"runtime": built.name, "runtime_requested": runtime},
    )
