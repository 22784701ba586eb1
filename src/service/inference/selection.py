"""Which runtime serves this model: every selectable variant measured at release, the fastest
that answers like eager chosen.

For one checkpoint, on the evaluation digits and the device and thread count serving will use,
each variant that builds here is run against eager PyTorch (agreement, accuracy drop, largest
probability difference: ``verification.compare``) and timed at batch 1 and 32, the variants
taking turns in SPEED_ROUNDS rounds so that a busy spell of a shared machine slows them all
alike instead of whichever was being timed (docs/runtime-selection.md). The variants that
meet the policy's bars, fastest at batch 32 first, form the *chain*: the choice and, behind it,
what serving falls back to when a variant misses on its own machine. Eager always qualifies (it
is the reference), so the chain always ends with a runtime that serves. A variant that misses or
cannot be built is kept in the table with its figures and the reason, never an error.

An *inexact* variant (int8: its probabilities move by 1e-2 and more) ranks ahead of an exact one
(fp32, within EXACT_PROBABILITY_DIFF of eager) only when it is at least ``min_inexact_speedup``
times as fast: where the two are level, timings on a shared machine would otherwise pick either
from one release to the next, and the answers clients see would change with them.

``RUNTIME=auto`` takes the chain. A named ``RUNTIME`` is a request: it is chosen only if it
qualifies, and ``RuntimeSelection.explain`` names the variants that would.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from service.inference.runtime import (
    EagerRuntime,
    RuntimeUnavailable,
    build_runtime,
    selectable_variants,
)
from service.inference.verification import (
    EXACT_PROBABILITY_DIFF,
    MIN_INEXACT_SPEEDUP,
    Agreement,
    RuntimeCriteria,
    compare,
    predict_all,
)
from service.ml.checkpoint import LoadedCheckpoint
from service.ml.preprocess import normalize
from service.provenance import cpu_description

log = logging.getLogger(__name__)

Status = Literal["qualifies", "misses", "unavailable"]
SPEED_BATCHES = (1, 32)
SPEED_SECONDS = 0.4  # of calls per variant and batch size: medians settle well within this
SPEED_ROUNDS = 8  # turns the variants take within those seconds
MIN_CALLS = 10  # per variant and batch size, however short the seconds


@dataclass
class VariantMeasurement:
    """One variant for one model on this machine."""

    name: str
    status: Status
    reasons: list[str] = field(default_factory=list)  # why it misses or cannot be built
    agreement: Agreement | None = None
    images_per_s: dict[str, float] = field(default_factory=dict)  # {"batch_1": .., "batch_32": ..}
    build_s: float = 0.0
    artifact: str | None = None  # an exported file serving needs (ONNX graphs)

    @property
    def speed(self) -> float:
        return self.images_per_s.get("batch_32", 0.0)

    @property
    def exact(self) -> bool:
        """Answers as eager does, to rounding (fp32 variants; int8 ones do not)."""
        return (self.agreement is not None
                and self.agreement.max_probability_diff <= EXACT_PROBABILITY_DIFF)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["agreement"] = asdict(self.agreement) if self.agreement else None
        return data


@dataclass
class RuntimeSelection:
    """The table of variants for one model, the choice and the fallback chain behind it."""

    requested: str
    device: str
    threads: int
    machine: dict[str, Any]
    criteria: RuntimeCriteria
    digits: int
    variants: list[VariantMeasurement]
    chosen: str | None = None  # None: the requested variant misses (the gate refuses)
    chain: list[str] = field(default_factory=list)  # what serving tries in order: choice first
    min_inexact_speedup: float = MIN_INEXACT_SPEEDUP

    def qualifying(self) -> list[VariantMeasurement]:
        """Variants that meet the bars, in the order ``auto`` prefers them: fastest at batch 32
        first, an inexact variant's speed divided by ``min_inexact_speedup``."""
        passed = [v for v in self.variants if v.status == "qualifies"]
        return sorted(passed, key=lambda v: (
            -(v.speed if v.exact else v.speed / self.min_inexact_speedup), -v.speed))

    def choose(self) -> None:
        """Set the choice and the chain from the measurements: ``auto`` takes the qualifying
        variants in order, down to eager (which never misses, so nothing after it needs
        trying); a named variant is chosen alone if it qualifies, else nothing is."""
        qualifying = [v.name for v in self.qualifying()]
        if self.requested == "auto":
            self.chain = qualifying[: qualifying.index("eager") + 1]
            self.chosen = self.chain[0]
        elif self.requested in qualifying:
            self.chosen, self.chain = self.requested, [self.requested]
        else:
            self.chosen, self.chain = None, []

    def measured(self, name: str) -> VariantMeasurement | None:
        return next((v for v in self.variants if v.name == name), None)

    def explain(self) -> str:
        """One line: the choice against eager (or why the requested variant is refused, and
        what would pass instead), then every variant passed over with its reason."""
        eager, qualifying = self.measured("eager"), self.qualifying()
        chosen = self.measured(self.chosen) if self.chosen else None
        if chosen is not None and chosen.agreement is not None:
            speedup = chosen.speed / eager.speed if eager and eager.speed else float("nan")
            head = (f"{chosen.name} (RUNTIME={self.requested}): {chosen.speed:,.0f} images/s at "
                    f"batch 32 ({speedup:.1f}x eager), {chosen.agreement.summary()}")
            head += "".join(self._ranked_behind(chosen))
        else:
            wanted = self.measured(self.requested)
            why = "; ".join(wanted.reasons) if wanted else "not measured"
            head = f"RUNTIME={self.requested} misses on this machine ({why})"
            if qualifying:
                head += (f"; these pass: {', '.join(v.name for v in qualifying)}. Set "
                         f"RUNTIME=auto (serves {qualifying[0].name}) or RUNTIME="
                         f"{qualifying[0].name}")
        skipped = [f"{v.name} ({'; '.join(v.reasons)})" for v in self.variants
                   if v.status != "qualifies" and v.name != self.requested]
        return head + (f"; passed over: {', '.join(skipped)}" if skipped else "")

    def _ranked_behind(self, chosen: VariantMeasurement) -> list[str]:
        """Why a faster qualifying variant was not chosen: it is inexact and not fast enough."""
        if self.requested != "auto":
            return []
        return [f"; {v.name} is {v.speed / chosen.speed:.2f}x as fast but inexact (max |dp| "
                f"{v.agreement.max_probability_diff:.2e}), under the "
                f"{self.min_inexact_speedup:g}x an inexact variant needs to rank ahead"
                for v in self.qualifying() if v.speed > chosen.speed and v.agreement]

    def as_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "chosen": self.chosen,
            "chain": self.chain,
            "min_inexact_speedup": self.min_inexact_speedup,
            "device": self.device,
            "threads": self.threads,
            "machine": self.machine,
            "criteria": asdict(self.criteria),
            "digits": self.digits,
            "variants": [variant.as_dict() for variant in self.variants],
        }


def select_runtime(
    checkpoint: LoadedCheckpoint,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    requested: str = "auto",
    criteria: RuntimeCriteria | None = None,
    threads: int = 1,
    seconds: float = SPEED_SECONDS,
    names: list[str] | None = None,
    min_inexact_speedup: float = MIN_INEXACT_SPEEDUP,
) -> tuple[RuntimeSelection, np.ndarray]:
    """Measure the variants for ``checkpoint`` on ``images`` (uint8 [N,28,28]) with ``threads``
    inference threads, as serving runs them; returns the selection and eager's probabilities."""
    criteria = criteria or RuntimeCriteria()
    device = next(checkpoint.model.parameters()).device
    names = names or _candidates(device, requested)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inputs = normalize(images, checkpoint.normalization)
        reference = predict_all(EagerRuntime(checkpoint.model, device), inputs)
        built = [_build_and_compare(checkpoint, name, device, inputs, reference, labels,
                                    criteria) for name in names]
        runtimes = {variant.name: runtime for variant, runtime in built if runtime is not None}
        speeds = _images_per_second(runtimes, inputs, seconds)
        variants = [variant for variant, _ in built]
        for variant in variants:
            if variant.name in speeds:
                variant.images_per_s = speeds[variant.name]
                log.info("runtime %s: %s; %s images/s at batch 32", variant.name,
                         variant.agreement.summary() if variant.agreement else "",
                         f"{variant.speed:,.0f}")
    finally:
        torch.set_num_threads(previous_threads)
    selection = RuntimeSelection(
        requested=requested, device=str(device), threads=threads, machine=cpu_description(),
        criteria=criteria, digits=len(images), variants=variants,
        min_inexact_speedup=min_inexact_speedup,
    )
    selection.choose()
    return selection, reference


def _candidates(device: torch.device, requested: str) -> list[str]:
    names = selectable_variants(device)
    if requested not in ("auto", *names):
        names.append(requested)
    return names


def _build_and_compare(
    checkpoint: LoadedCheckpoint,
    name: str,
    device: torch.device,
    inputs: torch.Tensor,
    reference: np.ndarray,
    labels: np.ndarray,
    criteria: RuntimeCriteria,
) -> tuple[VariantMeasurement, Any]:
    """The variant's measurement without its speed, and the runtime to time (None: not built)."""
    started = time.perf_counter()
    try:
        runtime = build_runtime(checkpoint, name, device)
    except (RuntimeUnavailable, ImportError, OSError) as exc:
        log.info("runtime %s cannot be built here: %s", name, exc)
        return VariantMeasurement(name, "unavailable", [f"cannot be built here: {exc}"]), None
    build_s = time.perf_counter() - started
    if runtime.name != name:  # torch.compile without a compiler serves eager instead
        return VariantMeasurement(name, "unavailable", [f"built as {runtime.name} here"],
                                  build_s=round(build_s, 3)), None
    agreement = compare(reference, predict_all(runtime, inputs), labels)
    reasons = [] if name == "eager" else agreement.misses(criteria)
    artifact = getattr(runtime, "artifact", None)
    measurement = VariantMeasurement(
        name, "misses" if reasons else "qualifies", reasons, agreement,
        build_s=round(build_s, 3), artifact=str(artifact) if artifact else None,
    )
    return measurement, runtime


def _images_per_second(runtimes: dict[str, Any], inputs: torch.Tensor, seconds: float,
                       clock: Callable[[], float] = time.perf_counter,
                       ) -> dict[str, dict[str, float]]:
    """Digits per second of each runtime at each of SPEED_BATCHES, from the median of calls on
    distinct batches: ``seconds`` per runtime and size, spent in SPEED_ROUNDS turns."""
    if not runtimes:
        return {}
    batches = {size: [inputs[start:start + size].clone()
                      for start in range(0, len(inputs) - size + 1, size)][:64] or [inputs[:size]]
               for size in SPEED_BATCHES}
    for runtime in runtimes.values():
        for sized in batches.values():
            for batch in sized[:3]:
                runtime.predict_proba(batch)  # first calls allocate and pick kernels
    timings: dict[tuple[str, int], list[float]] = {
        (name, size): [] for name in runtimes for size in SPEED_BATCHES}
    names = list(runtimes)
    for round_index in range(SPEED_ROUNDS):
        shift = round_index % len(names)  # no variant always goes first
        for name in names[shift:] + names[:shift]:
            for size in SPEED_BATCHES:
                _time_turn(runtimes[name], batches[size], timings[name, size],
                           seconds / SPEED_ROUNDS, clock)
    return {name: {f"batch_{size}": round(len(batches[size][0])
                                          / statistics.median(timings[name, size]), 1)
                   for size in SPEED_BATCHES}
            for name in names}


def _time_turn(runtime: Any, batches: list[torch.Tensor], timings: list[float], seconds: float,
               clock: Callable[[], float]) -> None:
    """One turn: calls on the next of ``batches`` for ``seconds`` (and at least MIN_CALLS over
    all turns), each call's time appended to ``timings``."""
    deadline, calls = clock() + seconds, 0
    while clock() < deadline or calls < -(-MIN_CALLS // SPEED_ROUNDS):
        batch = batches[len(timings) % len(batches)]
        tick = clock()
        runtime.predict_proba(batch)
        timings.append(clock() - tick)
        calls += 1
