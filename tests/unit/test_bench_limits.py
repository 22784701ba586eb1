"""The bench's limits: the HTTP floor server, the runtime alone, and our throughput as a share of
what the two allow together."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import orjson
import pytest
from support.models import trained_checkpoint
from support.registry import publish_release

from service.api.protocol import GuardedHttpToolsProtocol
from service.bench import bodies, limits, report
from service.bench.harness import Run, assemble, measuring_order
from service.bench.servers import Server, free_port
from service.commands.serve import uvicorn_options
from service.ml.data import load_dataset
from service.settings import Settings


def test_the_floor_reads_the_body_and_answers_a_fixed_prediction_without_a_server_header(
    tmp_path,
):
    spec = limits.floor_spec(free_port(), {"LOG_LEVEL": "warning"})
    with Server(spec, cpu=0, log_dir=tmp_path) as server:
        server.wait_ready(60)
        request = urllib.request.Request(
            spec.url + "/predict", data=orjson.dumps({"pixels": [0] * 784}), method="POST",
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.read() == limits.FLOOR_ANSWER
            assert reply.headers["content-type"] == "application/json"
            assert reply.headers.get("server") is None  # our uvicorn settings, not its defaults
    answer = json.loads(limits.FLOOR_ANSWER)
    assert set(answer) == {"digit", "confidence", "probabilities", "model_version"}
    assert 180 <= len(limits.FLOOR_ANSWER) <= 260, "about the size of a /predict answer"


def test_the_floor_runs_on_the_services_own_uvicorn_settings():
    options = uvicorn_options(Settings(port=9123))
    assert (options["loop"], options["http"], options["port"]) == \
        ("uvloop", GuardedHttpToolsProtocol, 9123)  # httptools, each connection bounded
    assert options["access_log"] is False and options["server_header"] is False


def test_the_runtime_alone_is_what_serving_loads_timed_on_batches_of_32(tmp_path):
    dataset = load_dataset("mnist-5k")
    checkpoint = trained_checkpoint(tmp_path / "models")
    registry = tmp_path / "registry"
    publish_release(registry, checkpoint, dataset.test_images[:200], dataset.test_labels[:200])
    sets = bodies.build_body_sets(tmp_path / "bodies", distinct=64, png_count=1, batch_bodies=1,
                                  batch_items=2)
    digits = limits.bench_digits(sets["json"].path, 64)
    assert digits.shape == (64, 28, 28) and digits.dtype == np.uint8
    measured = limits.runtime_alone(registry, "mnist-cnn", "production", digits, cpu=0,
                                    seconds=0.2)
    assert measured["runtime"] == "eager"  # the release measured eager only: serving's choice
    assert measured["batch"] == 32 and measured["us_per_image"] > 0
    assert measured["wall_us_per_image"] >= measured["us_per_image"] * 0.9
    assert measured["images_per_s"] == pytest.approx(1e6 / measured["us_per_image"], rel=1e-3)


def test_the_runtime_alone_needs_a_whole_batch_of_digits(tmp_path):
    dataset = load_dataset("mnist-5k")
    registry = tmp_path / "registry"
    publish_release(registry, trained_checkpoint(tmp_path / "models"),
                    dataset.test_images[:200], dataset.test_labels[:200])
    with pytest.raises(ValueError, match="at least 32 digits"):
        limits.runtime_alone(registry, "mnist-cnn", "production",
                             np.zeros((8, 28, 28), np.uint8), cpu=0, seconds=0.1)


def test_the_limit_adds_the_floors_and_the_runtimes_time_per_request():
    runtime = {"runtime": "onnx-int8", "images_per_s": 3820.0}
    limit = limits.combined_limit(1420.0, 6100.0, runtime)
    assert limit["limit_rps"] == pytest.approx(2349.0, abs=1)  # 1 / (1/6100 + 1/3820)
    assert limit["share"] == pytest.approx(0.605, abs=0.001)
    assert limit["floor_us"] + limit["runtime_us"] + limit["overhead_us"] == pytest.approx(
        1e6 / 1420, abs=0.5)
    line = limits.limit_line(limit)
    assert "ours 1,420 req/s = **0.60** of the 2,349 limit (floor 6,100 req/s, runtime " \
           "3,820 img/s: onnx-int8" in line
    assert "cpu_share" not in limit, "no CPU figures given"
    by_cpu = limits.combined_limit(1420.0, 6100.0, runtime, ours_cpu_ms=0.6, floor_cpu_ms=0.16)
    assert by_cpu["cpu_share"] == pytest.approx((160 + 1e6 / 3820) / 600, abs=0.001)
    assert "floor 160 µs + model 262 µs of our 600 µs = **0.70**" in limits.limit_line(by_cpu)
    assert limits.combined_limit(1420.0, None, runtime) is None, "no floor in the run"
    assert limits.combined_limit(1420.0, 6100.0, None) is None, "no runtime measured"


def run(target: str, rps: float, p50: float = 20.0, p99: float = 30.0, round_index: int = 1,
        cpu_ms: float | None = None) -> Run:
    return Run(target, 64, round_index, rps, p50, p50, p99, p99, 0, 0, 0, int(rps * 5), 5.0,
               0.98, cpu_ms if cpu_ms is not None else 980 / rps)


def timed(images_per_s: float, round_index: int = 1) -> dict:
    return {"runtime": "onnx-int8", "images_per_s": images_per_s, "round": round_index}


CONTEXT = {"started": "2026-01-01T00:00:00", "server_cpu": 0, "client_cpu": 1, "rounds": 1,
           "seconds_per_point": 5, "distinct_bodies": 2048, "miss_cache_size": 256,
           "machine": "test", "load_average_at_end": [0.1, 0.1, 0.1]}


def test_the_share_and_the_tail_are_targets_in_the_report_and_the_readme(tmp_path):
    runs = [run("ours", 1800.0, p50=20.0, p99=36.0), run("floor", 6000.0)]
    data = assemble(runs, {}, CONTEXT, None, [timed(4000.0)])
    checks = {check["target"]: check for check in data["targets"]}
    assert checks["c=64 JSON req/s share of the limit"]["measured"] == 0.75
    assert checks["c=64 JSON req/s share of the limit"]["passed"] is True
    assert checks["c=64 JSON p99 vs our p50"]["measured"] == 1.8
    assert checks["c=64 JSON p99 vs our p50"]["passed"] is False
    readme = tmp_path / "README.md"
    readme.write_text(f"{report.README_START}\n{report.README_END}\n")
    paths = report.write(data, tmp_path / "out", readme)
    for text in (readme.read_text(), paths["md"].read_text()):
        assert "ours 1,800 req/s = **0.75** of the 2,400 limit (floor 6,000 req/s" in text
        assert ("| floor | limit | — | 6,000, 20.0/30 |" in text
                or "| floor | limit | 64 | 6,000" in text)
        assert "Shares by round" not in text, "one round: nothing to list"


def test_the_limit_pairs_each_rounds_ours_with_that_rounds_floor_and_runtime():
    # Round 2's floor ran while the core was shared: paired, it lowers that round's limit too,
    # instead of lowering the limit set against both rounds' ours.
    runs = [run("ours", 1800.0, round_index=0, cpu_ms=0.5), run("floor", 6000.0, round_index=0,
                                                               cpu_ms=0.15),
            run("ours", 1200.0, round_index=1, cpu_ms=0.6), run("floor", 3000.0, round_index=1,
                                                               cpu_ms=0.2),
            run("ours", 1700.0, round_index=2, cpu_ms=0.55), run("floor", 6600.0, round_index=2,
                                                                cpu_ms=0.16)]
    limit = limits.limit_by_round(runs, [timed(4000.0, 0), timed(3000.0, 1), timed(4400.0, 2)])
    assert limit["rounds"] == 3
    # round 0: 1 / (1/6000 + 1/4000) = 2400 -> 0.75; round 1: 1500 -> 0.80; round 2: 2640 -> 0.644
    assert limit["shares"] == [0.644, 0.75, 0.8]
    assert limit["round"] == 0 and limit["share"] == 0.75, "the median round's own figures"
    assert (limit["ours_rps"], limit["floor_rps"], limit["limit_rps"]) == (1800.0, 6000.0, 2400.0)
    assert limit["cpu_shares"] == sorted(limit["cpu_shares"]) and len(limit["cpu_shares"]) == 3
    line = limits.limit_line(limit)
    assert "Limit at c=64 (the median round): ours 1,800 req/s = **0.75**" in line
    assert "Shares by round (each round: ours, then the floor, then the runtime alone): " \
           "0.64, 0.75, 0.80; by CPU time" in line
    two = limits.limit_by_round(runs[:4], [timed(4000.0, 0), timed(3000.0, 1)])
    assert two["share"] == 0.75, "of two rounds, the lower: the figure a target is held to"
    assert limits.limit_by_round(runs, []) is None, "no runtime timed"
    assert limits.limit_by_round(runs[:1], [timed(4000.0, 0)]) is None, "no floor in the run"


def test_each_round_measures_the_floor_right_after_ours():
    assert measuring_order(["tutorial", "floor", "ours", "ours-png"]) == \
        ["tutorial", "ours", "floor", "ours-png"]
    assert measuring_order(["tutorial", "floor"]) == ["tutorial", "floor"]
    assert measuring_order(["ours", "tutorial"]) == ["ours", "tutorial"]
