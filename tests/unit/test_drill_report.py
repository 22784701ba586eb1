"""The drills' report: figures that add up, a verdict that follows the checks, and every drill
found by its name."""

from __future__ import annotations

import httpx
import pytest

from service.cli import build_parser
from service.drills import DRILLS, get_drill
from service.drills.report import DrillReport, Tally


def test_a_tally_counts_every_request_once_as_a_status_or_an_error() -> None:
    tally = Tally()
    for latency in (0.010, 0.020, 0.030):
        tally.answered(200, latency)
    tally.answered(503, 0.5)
    tally.failed(httpx.ConnectError("refused"))
    tally.failed("still open at the end")
    figures = tally.as_dict()
    assert figures["sent"] == 6 == tally.sent
    assert figures["statuses"] == {"200": 3, "503": 1}
    assert figures["errors"] == {"ConnectError": 1, "still open at the end": 1}
    assert tally.not_ok() == 3 and tally.count(200, 503) == 4
    assert figures["p50_ms"] == 25.0 and figures["max_ms"] == 500.0


def test_an_empty_tally_has_no_percentiles() -> None:
    assert Tally().as_dict() == {"sent": 0, "statuses": {}, "errors": {}, "p50_ms": None,
                                 "p99_ms": None, "max_ms": None}


def test_the_verdict_fails_with_the_names_of_the_failed_checks() -> None:
    report = DrillReport("redis-kill", "kills Redis", "0 non-200")
    report.check("every /predict answered 200", True, "0 of 10 not 200")
    report.check("the cache came back", False, "degraded")
    assert not report.passed
    assert report.verdict == "FAIL redis-kill: the cache came back"
    assert report.as_dict()["checks"][1] == {"name": "the cache came back", "passed": False,
                                             "seen": "degraded"}
    assert "[FAILED] the cache came back: degraded" in report.text()


def test_a_drill_with_no_checks_or_an_error_does_not_pass() -> None:
    report = DrillReport("redis-kill", "kills Redis", "0 non-200")
    assert not report.passed
    report.check("every /predict answered 200", True, "0 of 10 not 200")
    assert report.passed and report.verdict.startswith("PASS redis-kill")
    report.error = "ServiceError: redis-server is not installed"
    assert not report.passed and report.verdict.startswith("ERROR redis-kill")


@pytest.mark.parametrize("name", list(DRILLS))
def test_every_drill_is_found_by_its_name(name: str) -> None:
    drill = get_drill(name)
    assert drill.name == name and drill.summary and drill.expectation


def test_an_unknown_drill_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="rabbitmq-outage"):
        get_drill("no-such-drill")


def test_drill_options_must_be_positive() -> None:
    parser = build_parser(only="drill")
    args = parser.parse_args(["drill", "redis-kill", "--duration", "5", "--rate", "2.5"])
    assert args.names == ["redis-kill"] and args.duration == 5 and args.rate == 2.5
    with pytest.raises(SystemExit):
        parser.parse_args(["drill", "--rate", "0"])
