"""The one loader for serving: checkpoint -> runtime, verified on this machine before it serves.

``load_runtime`` loads the checkpoint (weights only, checksum-verified), then walks a chain of
runtime variants: the one the release measured fastest for this model, then the others that
qualified there, ending with eager PyTorch. Each built variant is run over the version's
verification set (digits and eager's probabilities recorded at release) and used only if it
still meets the release policy's bars here; otherwise the miss is logged, kept in
``LoadedModel.fallbacks`` and the next variant is tried. Eager is the reference and always
serves. A named ``RUNTIME`` is taken as a requirement: if it cannot be built or misses here,
loading fails with a message that says so (``RuntimeRejected``), as the release gate would.

A version published without a verification set (before the release measured runtimes) cannot
be checked, so ``auto`` serves it with eager, the runtime that needs no check.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from service.inference.runtime import (
    LoadedModel,
    RuntimeUnavailable,
    auto_preference,
    build_runtime,
)
from service.inference.verification import VERIFICATION_FILE, VerificationSet, verify
from service.ml.checkpoint import LoadedCheckpoint, open_checkpoint
from service.ml.device import Device, device_name

log = logging.getLogger(__name__)


class RuntimeRejected(RuntimeUnavailable):
    """The runtime RUNTIME names misses the release's bars on this machine."""


def load_runtime(
    path: str | Path,
    *,
    runtime: str = "auto",
    device: str = "auto",
    version: str = "unversioned",
    selection: dict[str, Any] | None = None,
    read_only: bool = False,
) -> LoadedModel:
    """Load a checkpoint and the runtime that serves it here (see the module docstring).

    ``selection`` is the release's runtime measurement (the model card's ``runtimes``); the
    verification set is read from the checkpoint's folder when it was published there.
    ``read_only``: the folder is a published version; nothing is written into it.
    """
    path = Path(path)
    target = device_name(device)
    checkpoint = open_checkpoint(path, target, read_only=read_only)  # the model when needed
    verification_set = _verification_set(path.parent, checkpoint)
    chain = runtime_chain(runtime, target, selection, verifiable=verification_set is not None)
    fallbacks: list[dict[str, str]] = []
    for name in chain:
        try:
            built = build_runtime(checkpoint, name, target)
        except (RuntimeUnavailable, ImportError, OSError) as exc:
            if runtime != "auto":
                raise
            _fall_back(fallbacks, version, name, f"cannot be built here: {exc}")
            continue
        checked = verify(built, verification_set, checkpoint.normalization) \
            if verification_set is not None else None
        if checked is not None and not checked.passed:
            misses = "; ".join(checked.reasons)
            if name == "eager":  # the reference: a miss here is reported, never refused
                log.error("eager PyTorch differs from its own answers at release for %s (%s)",
                          version, misses)
            elif runtime != "auto":
                raise RuntimeRejected(
                    f"RUNTIME={runtime} does not answer like eager PyTorch on this machine "
                    f"({misses}, on the {checked.agreement.digits} digits published with "
                    f"{version}); set RUNTIME=auto to fall back to a variant that does"
                )
            else:
                _fall_back(fallbacks, version, name, f"misses on this machine: {misses}")
                continue
        if checked is not None:
            log.info("runtime %s for %s verified in %.0f ms: %s", name, version,
                     checked.seconds * 1000, checked.agreement.summary())
        return LoadedModel(built, checkpoint.metadata, version, path, runtime, checked, fallbacks)
    raise RuntimeUnavailable(  # only when even eager cannot be built
        f"no runtime could serve {version} here: "
        + "; ".join(f"{f['runtime']}: {f['reason']}" for f in fallbacks)
    )


def runtime_chain(
    requested: str, device: Device, selection: dict[str, Any] | None, *, verifiable: bool
) -> list[str]:
    """The variants to try in order for ``requested`` on ``device``."""
    if requested != "auto":
        return [requested]
    if not verifiable:
        return ["eager"]
    measured_here = selection and Device(selection.get("device", "cpu")).type == device.type
    chain = list(selection.get("chain") or []) if measured_here else []  # type: ignore[union-attr]
    chain = chain or list(auto_preference(device))
    return chain if "eager" in chain else [*chain, "eager"]


def _verification_set(folder: Path, checkpoint: LoadedCheckpoint) -> VerificationSet | None:
    path = folder / VERIFICATION_FILE
    if not path.is_file():
        return None
    try:
        verification_set = VerificationSet.load(path)
    except ValueError as exc:
        log.error("ignoring the verification set: %s", exc)
        return None
    if verification_set.weights_sha256 != checkpoint.metadata.get("weights_sha256"):
        log.error("ignoring %s: it was recorded for other weights (%s, not %s)", path,
                  verification_set.weights_sha256[:19],
                  str(checkpoint.metadata.get("weights_sha256"))[:19])
        return None
    return verification_set


def _fall_back(fallbacks: list[dict[str, str]], version: str, name: str, reason: str) -> None:
    fallbacks.append({"runtime": name, "reason": reason})
    log.warning("runtime %s for %s %s; trying the next one", name, version, reason)
