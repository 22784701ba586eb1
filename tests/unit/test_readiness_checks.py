"""The checks behind GET /ready: bounded in time, run at once, and not called while their
circuit is open."""

from __future__ import annotations

import asyncio
import time

from service.api.readiness import ReadinessChecks


class Dependency:
    """A check that answers ``answer`` after ``delay_s``, counting its calls."""

    def __init__(self, answer: str = "ok", delay_s: float = 0.0) -> None:
        self.answer = answer
        self.delay_s = delay_s
        self.calls = 0
        self.started_at: list[float] = []

    async def __call__(self) -> str:
        self.calls += 1
        self.started_at.append(time.monotonic())
        await asyncio.sleep(self.delay_s)
        return self.answer


async def test_slow_checks_run_at_once_and_are_cut_off_at_the_timeout():
    checks = ReadinessChecks(timeout_s=0.5, breaker_failures=3, breaker_reset_s=60)
    named = {"frozen": Dependency(delay_s=30), "slow": Dependency(delay_s=30),
             "fine": Dependency()}
    answers = await checks.run(named)
    assert answers == {"frozen": "no answer within 0.5 s", "slow": "no answer within 0.5 s",
                       "fine": "ok"}
    starts = [dependency.started_at[0] for dependency in named.values()]
    assert max(starts) - min(starts) < 0.5, "all started before the first one timed out"
    await checks.close()


async def test_a_check_still_running_is_not_started_again():
    checks = ReadinessChecks(timeout_s=0.05, breaker_failures=10, breaker_reset_s=60)
    frozen = Dependency(delay_s=30)
    for _ in range(3):
        await checks.run({"frozen": frozen})
    assert frozen.calls == 1
    await checks.close()


async def test_after_repeated_failures_the_check_is_skipped_and_costs_nothing():
    checks = ReadinessChecks(timeout_s=0.05, breaker_failures=2, breaker_reset_s=60)
    down = Dependency("unreachable: connection refused")
    for _ in range(2):
        assert (await checks.run({"store": down}))["store"] == "unreachable: connection refused"
    answers = await checks.run({"store": down})
    assert down.calls == 2, "the open circuit does not call it"
    assert answers["store"].startswith("unreachable: connection refused (not checked again")


async def test_a_frozen_dependency_costs_nothing_once_its_circuit_opens():
    checks = ReadinessChecks(timeout_s=10, breaker_failures=2, breaker_reset_s=60)
    frozen = Dependency(delay_s=30)
    checks.timeout_s = 0.05
    for _ in range(2):
        await checks.run({"redis": frozen})
    checks.timeout_s = 10  # were it waited on again, this call would take 10 s
    answers = await asyncio.wait_for(checks.run({"redis": frozen}), timeout=5)
    assert answers["redis"].startswith("no answer within 0.05 s (not checked again")
    await checks.close()


async def test_a_check_that_answers_late_is_seen_on_the_next_call():
    checks = ReadinessChecks(timeout_s=0.05, breaker_failures=3, breaker_reset_s=60)
    slow_to_connect = Dependency(delay_s=0.2)
    assert (await checks.run({"broker": slow_to_connect}))["broker"] == "no answer within 0.05 s"
    await asyncio.sleep(0.3)
    assert (await checks.run({"broker": slow_to_connect}))["broker"] == "ok"
    assert slow_to_connect.calls == 1


async def test_the_circuit_closes_again_when_the_dependency_recovers():
    checks = ReadinessChecks(timeout_s=0.05, breaker_failures=1, breaker_reset_s=0.1)
    store = Dependency("unreachable (redis)")
    await checks.run({"store": store})
    store.answer = "ok"
    assert (await checks.run({"store": store}))["store"].endswith("failures in a row)")
    await asyncio.sleep(0.15)
    assert (await checks.run({"store": store}))["store"] == "ok"


async def test_a_check_that_raises_is_reported_as_failed_with_the_reason():
    checks = ReadinessChecks(timeout_s=0.1, breaker_failures=3, breaker_reset_s=60)

    async def broken() -> str:
        raise ConnectionError("no route to host")

    answers = await checks.run({"broker": broken})
    assert answers == {"broker": "failed: ConnectionError: no route to host"}


async def test_a_check_with_its_own_breaker_is_only_bounded_in_time():
    checks = ReadinessChecks(timeout_s=0.05, breaker_failures=1, breaker_reset_s=60)
    frozen = Dependency(delay_s=30)
    for _ in range(3):
        assert await checks.bounded(frozen, on_timeout="degraded") == "degraded"
    assert frozen.calls == 3
