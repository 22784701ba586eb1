"""What a drill saw, in one shape for every drill: requests sent and how they ended (status
counts, errors by kind, latency percentiles), what it did and when (the timeline), extra figures,
and the checks its expectation is made of. The verdict is PASS only when every check passed."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Tally:
    """Requests of one kind: status counts, errors by kind (no response at all), latencies.
    ``sent`` always equals the statuses plus the errors."""

    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)

    def answered(self, status: int, latency_s: float) -> None:
        self.statuses[status] += 1
        self.latencies_s.append(latency_s)

    def failed(self, error: BaseException | str) -> None:
        self.errors[error if isinstance(error, str) else type(error).__name__] += 1

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())

    def count(self, *statuses: int) -> int:
        return sum(self.statuses[status] for status in statuses)

    def not_ok(self) -> int:
        """Requests that did not end in a 2xx."""
        return self.sent - sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.statuses + other.statuses, self.errors + other.errors,
                     self.latencies_s + other.latencies_s)

    def as_dict(self) -> dict[str, Any]:
        latencies = np.array(self.latencies_s) * 1000
        return {
            "sent": self.sent,
            "statuses": {str(status): n for status, n in sorted(self.statuses.items())},
            "errors": dict(sorted(self.errors.items())),
            "p50_ms": round(float(np.percentile(latencies, 50)), 2) if len(latencies) else None,
            "p99_ms": round(float(np.percentile(latencies, 99)), 2) if len(latencies) else None,
            "max_ms": round(float(latencies.max()), 2) if len(latencies) else None,
        }


@dataclass
class Check:
    """One part of a drill's expectation and what was seen."""

    name: str
    passed: bool
    seen: str


@dataclass
class DrillReport:
    drill: str
    summary: str  # what it does
    expectation: str
    started: float = field(default_factory=time.monotonic)
    tallies: dict[str, Tally] = field(default_factory=dict)  # by kind: "predict", "ready", ...
    timeline: list[tuple[float, str]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    error: str | None = None  # the drill itself could not run (a service would not start ...)
    duration_s: float = 0.0

    def tally(self, kind: str) -> Tally:
        return self.tallies.setdefault(kind, Tally())

    def total(self, prefix: str) -> Tally:
        """Every tally whose kind starts with ``prefix`` (each phase of a load), added up."""
        return sum((t for kind, t in self.tallies.items() if kind.startswith(prefix)), Tally())

    def event(self, what: str) -> None:
        self.timeline.append((round(time.monotonic() - self.started, 2), what))

    def check(self, name: str, passed: bool, seen: str) -> None:
        self.checks.append(Check(name, bool(passed), seen))

    def check_all_200(self, prefix: str = "predict") -> None:
        total = self.total(prefix)
        self.check(f"every {prefix} answered 200", total.sent > 0 and total.not_ok() == 0,
                   f"{total.not_ok()} of {total.sent} not 200")

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return f"ERROR {self.drill}: {self.error}"
        failed = [c.name for c in self.checks if not c.passed]
        if failed:
            return f"FAIL {self.drill}: " + "; ".join(failed)
        return f"PASS {self.drill}: {self.expectation}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "drill": self.drill,
            "summary": self.summary,
            "expectation": self.expectation,
            "passed": self.passed,
            "verdict": self.verdict,
            "duration_s": round(self.duration_s, 2),
            "requests": {kind: tally.as_dict() for kind, tally in self.tallies.items()},
            "timeline": [{"t_s": t, "event": what} for t, what in self.timeline],
            "figures": self.figures,
            "checks": [c.__dict__ for c in self.checks],
            "error": self.error,
        }

    def text(self) -> str:
        lines = [f"== {self.drill}: {self.summary}", f"   expect: {self.expectation}"]
        lines += [f"   t={t:6.2f}s  {what}" for t, what in self.timeline]
        for kind, tally in self.tallies.items():
            figures = tally.as_dict()
            statuses = ", ".join(f"{s} x{n}" for s, n in figures["statuses"].items()) or "none"
            errors = ", ".join(f"{e} x{n}" for e, n in figures["errors"].items()) or "none"
            latency = (f"p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, "
                       f"max {figures['max_ms']} ms" if figures["p50_ms"] is not None else "-")
            lines.append(f"   {kind}: sent {figures['sent']}; status {statuses}; "
                         f"errors {errors}; {latency}")
        lines += [f"   {name}: {value}" for name, value in self.figures.items()]
        lines += [f"   [{'ok' if c.passed else 'FAILED'}] {c.name}: {c.seen}" for c in self.checks]
        lines.append(self.verdict)
        return "\n".join(lines)
