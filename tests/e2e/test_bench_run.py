"""A whole `lab2prod bench` run, small: real servers (ours and the HTTP floor) pinned to one core,
wrk on the other, two rounds; the limit is worked out round by round from pairs measured one
after the other."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.models import trained_checkpoint

from service.bench.harness import BenchConfig, run_benchmark
from service.bench.limits import FLOOR_TARGET

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_each_round_pairs_ours_with_the_floor_and_the_runtime_alone_measured_right_after(
    tmp_path,
):
    config = BenchConfig(
        checkpoint=trained_checkpoint(tmp_path / "models"), checkpoint_source="test",
        out_dir=tmp_path / "out", work_dir=tmp_path / "work", seconds=1.0, rounds=2,
        concurrencies=[64], targets=[FLOOR_TARGET, "ours"], warmup_s=0.5, distinct=1000,
        workers=0, scripts_dir=ROOT / "scripts",
    )
    data = run_benchmark(config)

    measured = [(run["round"], run["target"]) for run in data["runs"]]
    assert measured == [(1, "ours"), (1, FLOOR_TARGET), (2, "ours"), (2, FLOOR_TARGET)]
    assert all(run["requests"] > 0 and run["errors"] == 0 for run in data["runs"])
    assert [runtime["round"] for runtime in data["runtime_alone"]] == [1, 2]
    limit = data["limit"]
    assert limit["rounds"] == 2 and len(limit["shares"]) == 2
    assert limit["share"] == min(limit["shares"]), "of two rounds, the lower"
    chosen = next(run for run in data["runs"]
                  if run["round"] == limit["round"] and run["target"] == "ours")
    assert limit["ours_rps"] == pytest.approx(chosen["requests_per_s"], abs=0.1)
    share = next(check for check in data["targets"]
                 if check["target"] == "c=64 JSON req/s share of the limit")
    assert share["measured"] == limit["share"]
