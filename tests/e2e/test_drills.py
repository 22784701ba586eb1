"""`lab2prod drill`: each failure drill run through the CLI in a short form (real processes,
a private redis-server and RabbitMQ node), reporting figures that add up, and a verdict.

Each drill runs once per module; one test reads what it reported, another its verdict."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.releases import lab2prod

pytestmark = pytest.mark.slow

# Short forms: a few seconds of load each, a shorter outage.
SHORT = {
    "rabbitmq-outage": ["--duration", "10", "--rate", "10", "--outage", "3"],
    "redis-kill": ["--duration", "6", "--rate", "20"],
    "redis-freeze": ["--duration", "6", "--rate", "20"],
    "version-repair": ["--rate", "10"],
    "slow-headers": ["--duration", "12", "--rate", "5"],
    "big-header": [],
    "sigterm-drain": ["--duration", "4", "--rate", "20"],
}
Reports = Callable[[str], dict[str, Any]]


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory, trained_checkpoint: Path) -> Reports:
    """``drill(name)``: its JSON report, the drill run (once) by `lab2prod drill NAME --json`;
    the exit status must say whether it passed."""
    reports: dict[str, dict[str, Any]] = {}

    def run(name: str) -> dict[str, Any]:
        if name not in reports:
            folder = tmp_path_factory.mktemp(name)
            done = lab2prod(folder, "drill", name, "--json", "--checkpoint",
                            str(trained_checkpoint), "--work-dir", str(folder / "work"),
                            *SHORT[name])
            assert done.stdout.strip(), done.stderr[-3000:]
            document = json.loads(done.stdout)
            assert done.returncode == (0 if document["passed"] else 1), done.stderr[-3000:]
            [reports[name]] = document["drills"]
        return reports[name]

    return run


def assert_reported(report: dict[str, Any], name: str) -> None:
    """It ran (no error), counted what it sent, said what it did, and judged every check."""
    assert report["drill"] == name
    assert report["error"] is None, report["error"]
    assert any(tally["sent"] > 0 for tally in report["requests"].values()), "nothing sent"
    for kind, tally in report["requests"].items():  # some count only what may happen (0 here)
        answered = sum(tally["statuses"].values())
        assert tally["sent"] == answered + sum(tally["errors"].values()), kind
        if answered:
            assert 0 <= tally["p50_ms"] <= tally["p99_ms"] <= tally["max_ms"], kind
    assert len(report["timeline"]) >= 2
    assert report["checks"] and all(isinstance(c["passed"], bool) for c in report["checks"])
    assert report["passed"] == all(c["passed"] for c in report["checks"])
    assert report["verdict"].startswith(("PASS " if report["passed"] else "FAIL ") + name)


def assert_passed(report: dict[str, Any]) -> None:
    assert report["passed"], [c for c in report["checks"] if not c["passed"]]


def test_drill_lists_every_drill_with_its_expectation(tmp_path: Path) -> None:
    done = lab2prod(tmp_path, "drill", "--list", timeout=60)
    assert done.returncode == 0, done.stderr
    for name in SHORT:
        assert name in done.stdout
    assert done.stdout.count("expect:") == len(SHORT)


def test_an_unknown_drill_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    done = lab2prod(tmp_path, "drill", "no-such-drill", timeout=60)
    assert done.returncode == 2
    assert "no drill no-such-drill" in done.stderr and "rabbitmq-outage" in done.stderr


def test_rabbitmq_outage_reports_every_job(drill: Reports) -> None:
    report = drill("rabbitmq-outage")
    assert_reported(report, "rabbitmq-outage")
    figures = report["figures"]
    accepted = sum(tally["statuses"].get("202", 0) for kind, tally in report["requests"].items()
                   if kind.startswith("classify"))
    assert figures["accepted"] == accepted > 0
    assert figures["completed"] + figures["failed"] + figures["lost"] == figures["accepted"]
    assert any("stop_app" in event["event"] for event in report["timeline"])


def test_rabbitmq_outage_loses_no_accepted_job_and_reconnects(drill: Reports) -> None:
    report = drill("rabbitmq-outage")
    assert_passed(report)
    assert report["figures"]["lost"] == 0
    assert report["figures"]["accepted after the broker came back"] > 0


def test_redis_kill_reports_its_figures(drill: Reports) -> None:
    report = drill("redis-kill")
    assert_reported(report, "redis-kill")
    assert any("SIGKILL" in event["event"] for event in report["timeline"])


def test_redis_kill_answers_every_predict(drill: Reports) -> None:
    report = drill("redis-kill")
    assert_passed(report)
    phases = {kind: tally for kind, tally in report["requests"].items()
              if kind.startswith("predict")}
    assert set(phases) == {"predict (before)", "predict (Redis down)", "predict (after)"}
    assert all(tally["statuses"] == {"200": tally["sent"]} for tally in phases.values())


def test_redis_freeze_reports_ready_while_frozen(drill: Reports) -> None:
    report = drill("redis-freeze")
    assert_reported(report, "redis-freeze")
    assert report["requests"]["ready (Redis frozen)"]["sent"] >= 1


def test_redis_freeze_ready_answers_fast_and_degraded(drill: Reports) -> None:
    assert_passed(drill("redis-freeze"))


def test_version_repair_reports_the_versions_served(drill: Reports) -> None:
    report = drill("version-repair")
    assert_reported(report, "version-repair")
    assert sum(report["figures"]["answers by version"].values()) == \
        report["requests"]["predict"]["statuses"].get("200", 0)


def test_version_repair_serves_the_repaired_version_without_restart(drill: Reports) -> None:
    report = drill("version-repair")
    assert_passed(report)
    assert report["figures"]["answers by version"].get("v2", 0) > 0


def test_slow_headers_reports_both_clients(drill: Reports) -> None:
    report = drill("slow-headers")
    assert_reported(report, "slow-headers")
    assert {"predict (normal client)", "stalled connections"} <= set(report["requests"])


def test_slow_headers_normal_client_is_served_and_stalled_ones_get_408(drill: Reports) -> None:
    report = drill("slow-headers")
    checks = {check["name"].split(" within ")[0]: check for check in report["checks"]}
    assert checks["stalled connections closed with 408 (or 503)"]["passed"], report["checks"]
    # Known limit (docs/hardening.md): under ~1,400 stalled reconnects a second at the cap, a
    # few of the normal client's new connections (0-3 in 100 here) are reset; never more.
    normal = report["requests"]["predict (normal client)"]
    assert normal["statuses"].get("200", 0) >= 0.95 * normal["sent"], normal


def test_big_header_reports_memory(drill: Reports) -> None:
    report = drill("big-header")
    assert_reported(report, "big-header")
    before, peak, after = report["figures"]["server RSS before / peak / after (MiB)"]
    assert 0 < before <= peak and after > 0


def test_big_header_is_refused_with_431_without_growing_memory(drill: Reports) -> None:
    assert_passed(drill("big-header"))


def test_sigterm_drain_reports_what_ready_said(drill: Reports) -> None:
    report = drill("sigterm-drain")
    assert_reported(report, "sigterm-drain")
    assert report["figures"]["/ready after SIGTERM"]
    assert any("SIGTERM" in event["event"] for event in report["timeline"])


def test_sigterm_drain_resets_nothing_and_exits_0(drill: Reports) -> None:
    assert_passed(drill("sigterm-drain"))
