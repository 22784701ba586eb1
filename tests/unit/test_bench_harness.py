"""The serving benchmark's parts: bodies, the wrk script and its result line, process-tree CPU
and memory, aggregation into medians, ratios and targets, and the written report."""

from __future__ import annotations

import http.server
import json
import signal
import sys
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from service.bench import bodies, report, wrk
from service.bench.harness import (
    BenchConfig,
    Run,
    assemble,
    check_targets,
    parse_counters,
    png_ceiling,
    ratios,
    summarise,
    upload_costs,
)
from service.bench.servers import Server, ServerSpec, process_group

WRK_OUTPUT = """Running 5s test @ http://127.0.0.1:8000
  1 threads and 64 connections
  Latency Distribution
     50%   30.00ms
Requests/sec:   2000.00
WRK_RESULT {"requests": 10000, "duration_us": 5000000, "bytes": 2400000, "connect_errors": 0, \
"read_errors": 2, "write_errors": 0, "status_errors": 5, "timeouts": 1, "p50_us": 30000, \
"p90_us": 40000, "p99_us": 55000, "max_us": 90000, "mean_us": 31000.5}
"""


def test_wrk_result_line_becomes_rates_latencies_and_errors():
    result = wrk.parse(WRK_OUTPUT)
    assert result.requests_per_s == 2000.0
    assert (result.p50_ms, result.p99_ms, result.max_ms) == (30.0, 55.0, 90.0)
    assert (result.status_errors, result.socket_errors, result.errors) == (5, 3, 8)


def test_wrk_output_without_a_result_line_is_refused_with_its_end():
    with pytest.raises(wrk.BenchError, match=r"(?s)no WRK_RESULT line.*connection refused"):
        wrk.parse("Running 5s test\nunable to connect: connection refused\n")


def test_wrk_is_pinned_to_its_core_with_one_thread_and_the_bodies_file(tmp_path):
    body_set = bodies.BodySet("json", tmp_path / "json.bodies", "application/json", "/predict", 3)
    argv = wrk.command("http://127.0.0.1:9", body_set, connections=64, seconds=5, cpu=1)
    assert argv[:6] == ["taskset", "-c", "1", "wrk", "-t1", "-c64"]
    assert "-d5s" in argv and "--latency" in argv and str(wrk.LUA_SCRIPT) in argv
    assert argv[-5:] == ["--", str(body_set.path), "application/json", "/predict", "0"]


def test_missing_wrk_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(wrk.BenchError, match="apt-get install wrk"):
        wrk.require_tools()


def test_bodies_file_round_trips_binary_bodies(tmp_path):
    written = [b'{"pixels": [1]}', b"\x89PNG\r\n\x00\nbinary", b"x" * 5000]
    assert bodies.write_bodies(tmp_path / "b.bodies", written) == 3
    assert bodies.read_bodies(tmp_path / "b.bodies") == written


def test_every_miss_path_digit_is_different_even_past_the_dataset():
    digits = bodies.distinct_digits(5100)  # more than the 5,000 mnist-5k digits
    assert digits.shape == (5100, 28, 28) and digits.dtype == np.uint8
    assert len({d.tobytes() for d in digits}) == 5100


def test_body_sets_hold_json_png_uploads_and_batches(tmp_path):
    sets = bodies.build_body_sets(tmp_path, distinct=40, png_count=6, batch_bodies=2,
                                  batch_items=4, png_sides=(28, 60))
    first = json.loads(bodies.read_bodies(sets["json"].path)[0])
    assert len(first["pixels"]) == 784 and sets["json"].count == 40
    assert sets["json-same"].count == 1
    uploads = bodies.read_bodies(sets["png"].path)
    boundary = sets["png"].content_type.split("boundary=")[1]
    assert len(uploads) == 6
    assert all(u.startswith(f"--{boundary}".encode()) and b"\x89PNG" in u for u in uploads)
    batch = json.loads(bodies.read_bodies(sets["batch"].path)[1])
    assert len(batch["items"]) == 4 and sets["batch"].route == "/predict/batch"
    assert sets["batch"].items_per_body == 4


def test_the_v2_set_sends_the_json_sets_digits_in_order_and_walks_one_sequence_with_it(tmp_path):
    sets = bodies.build_body_sets(tmp_path, distinct=40, png_count=1, batch_bodies=1,
                                  batch_items=2, model_name="digits")
    v2 = [json.loads(body)["inputs"] for body in bodies.read_bodies(sets["v2"].path)]
    pixels = [json.loads(body)["pixels"] for body in bodies.read_bodies(sets["json"].path)]
    assert [tensor["data"] for (tensor,) in v2] == pixels
    assert {(t["name"], tuple(t["shape"]), t["datatype"]) for (t,) in v2} == {
        ("pixels", (1, 784), "UINT8")}
    assert sets["v2"].route == "/v2/models/digits/infer"
    assert sets["v2"].sequence == sets["json"].sequence == "json"
    assert sets["png"].sequence == "png"


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Recorder.seen.append(body)
        status = 200 if self.headers["Content-Type"] == "application/json" else 415
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def test_the_wrk_script_cycles_through_every_body_and_counts_bad_statuses(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    sent = [json.dumps({"pixels": [i] * 784}).encode() for i in range(5)]
    bodies.write_bodies(tmp_path / "json.bodies", sent)
    good = bodies.BodySet("json", tmp_path / "json.bodies", "application/json", "/predict", 5)
    bad = bodies.BodySet("json", tmp_path / "json.bodies", "text/plain", "/predict", 5)
    try:
        result = wrk.run(url, good, connections=2, seconds=1, cpu=0)
        refused = wrk.run(url, bad, connections=1, seconds=1, cpu=0)
        _Recorder.seen.clear()
        first = wrk.run(url, good, connections=1, seconds=1, cpu=0, start=3)
    finally:
        server.shutdown()
    assert result.requests > 5 and result.errors == 0
    assert refused.status_errors == refused.requests > 0
    assert first.requests >= 5 and set(_Recorder.seen) == set(sent)
    # wrk may build one request ahead per connection: the walk starts at START or just after
    begin = sent.index(_Recorder.seen[0])
    assert begin in (3, 4), f"started at body {begin}, not at START=3"
    assert _Recorder.seen[:5] == (sent[begin:] + sent[:begin]), "then cycles in order"


def test_a_server_tree_is_measured_and_stopped_as_one_group(tmp_path):
    # the leader burns some CPU, then starts a child, then both wait to be stopped
    code = ("import subprocess, sys, time\n"
            "end = time.process_time() + 0.3\n"
            "while time.process_time() < end: pass\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print('started', flush=True)\n"
            "time.sleep(60)\n")
    spec = ServerSpec("tree", [sys.executable, "-c", code], 0, ready_log_line="started")
    with Server(spec, cpu=0, log_dir=tmp_path) as server:
        server.wait_ready(30)
        leader = server.process.pid
        assert len(server.pids()) == 2
        assert server.cpu_seconds() >= 0.25
        memory = server.memory()
        assert memory["processes"] == 2 and memory["rss_bytes"] > memory["pss_bytes"] > 0
    assert process_group(leader) == []


def test_a_server_that_dies_at_start_fails_with_its_log(tmp_path):
    spec = ServerSpec("broken", [sys.executable, "-c", "raise SystemExit('no model here')"], 1)
    with Server(spec, cpu=0, log_dir=tmp_path) as server, \
            pytest.raises(wrk.BenchError, match=r"(?s)broken exited.*no model here"):
        server.wait_ready(30)


def test_cache_and_shadow_counters_are_read_from_prometheus_text():
    text = ('# HELP lab2prod_cache_requests_total x\n'
            'lab2prod_cache_requests_total{result="hit",tier="memory"} 12.0\n'
            'lab2prod_cache_requests_total{result="miss",tier="memory"} 3.0\n'
            'lab2prod_cache_requests_total{result="hit",tier="redis"} 2.0\n'
            'lab2prod_cache_requests_created{result="hit",tier="redis"} 1.7e9\n'
            'lab2prod_shadow_predictions_total{model_version="v1",outcome="agree",'
            'shadow_version="v2"} 40.0\n'
            'lab2prod_shadow_predictions_total{model_version="v1",outcome="dropped",'
            'shadow_version="v2"} 7.0\n')
    assert parse_counters(text) == {"memory:hit": 12.0, "memory:miss": 3.0, "redis:hit": 2.0,
                                    "shadow:agree": 40.0, "shadow:dropped": 7.0}


def run(target: str, concurrency: int, round_: int, rps: float, p50: float = 1.0,
        p99: float = 10.0, items: int = 1, hits: float = 0.0) -> Run:
    return Run(target, concurrency, round_, rps, p50, p50 * 2, p99, p99 * 2, 0, 0, 0,
               int(rps * 5), 5.0, 0.98, 980 / rps, items, {"memory:hit": hits})


def sample_runs() -> list[Run]:
    runs = []
    for round_, noise in enumerate((0.9, 1.0, 1.2), start=1):
        runs += [run("ours", 64, round_, 2000 * noise, p99=40), run("tutorial", 64, round_, 900),
                 run("litserve", 64, round_, 550), run("ours", 1, round_, 900, p50=1.0),
                 run("tutorial", 1, round_, 800, p50=1.2), run("ours", 8, round_, 1300),
                 run("tutorial", 8, round_, 900), run("ours-png", 64, round_, 1300),
                 run("ours-batch", 64, round_, 100, items=32),
                 run("ours-hit-memory", 64, round_, 5000, hits=25000)]
    return runs


def test_rounds_become_medians_with_their_range():
    rows = {(r["target"], r["concurrency"]): r for r in summarise(sample_runs())}
    ours = rows[("ours", 64)]
    assert ours["requests_per_s"] == {"median": 2000.0, "min": 1800.0, "max": 2400.0}
    assert ours["rounds"] == 3 and ours["errors"] == 0
    assert rows[("ours-batch", 64)]["items_per_s"]["median"] == 3200.0
    assert rows[("ours-hit-memory", 64)]["cache_hits"] == 75000


def test_ratios_and_targets_compare_medians():
    rows = summarise(sample_runs())
    assert ratios(rows)["c=64"]["ours / tutorial"] == 2.22
    checks = {c["target"].split(" vs ")[0] if "p50" in c["target"] else c["target"]: c
              for c in check_targets(rows)}
    assert checks["c=64 JSON req/s vs tutorial"]["passed"] is True
    assert checks["c=64 JSON req/s vs litserve"]["measured"] == 3.64
    assert checks["c=8 JSON req/s vs tutorial"]["passed"] is True
    assert checks["c=64 JSON p99 (ms)"]["passed"] is True
    assert checks["c=1 p50 (ms)"]["passed"] is True
    assert checks["c=64 ours-hit-memory vs misses"]["measured"] == 2.5
    assert checks["c=64 ours-hit-redis vs misses"]["passed"] is None  # not in this run
    assert checks["c=64 PNG vs our JSON"]["passed"] is True


def test_the_png_ceiling_is_a_json_request_over_that_plus_decoding_an_upload():
    rows = summarise(sample_runs())  # ours at c=64: 2,000 req/s on 0.98 of a core = 0.49 ms
    bound = png_ceiling(rows, {"decode_ms": 0.49, "image_path_ms": 0.7})
    assert bound == {"json_cpu_ms": 0.49, "decode_ms": 0.49, "image_path_ms": 0.7,
                     "ceiling": 0.5}
    assert png_ceiling(rows, {}) is None, "no PNG target in the run: no ceiling"


def test_upload_costs_decode_the_bench_pngs_on_the_servers_core(tmp_path):
    sets = bodies.build_body_sets(tmp_path, distinct=4, png_count=6, batch_bodies=1,
                                  batch_items=2)
    costs = upload_costs(sets["png"], cpu=0)
    assert costs["uploads"] == 6
    assert costs["decode_ms"] > 0 and costs["image_path_ms"] > 0


def test_report_writes_json_markdown_chart_and_the_readme_block(tmp_path):
    context = {"started": "2026-01-01T00:00:00", "server_cpu": 0, "client_cpu": 1, "rounds": 3,
               "seconds_per_point": 5, "distinct_bodies": 2048, "miss_cache_size": 256,
               "machine": "test", "load_average_at_end": [0.1, 0.1, 0.1]}
    memory = {"ours": {"after_warmup": {"rss_bytes": 2**29, "pss_bytes": 2**28, "processes": 1}},
              "workers": {"processes": 2,
                          "total": {"rss_bytes": 2**30, "pss_bytes": 2**29, "processes": 3},
                          "workers_only": {"rss_bytes": 2**30, "pss_bytes": 2**29,
                                           "processes": 2}}}
    data = assemble(sample_runs(), memory, context, {"decode_ms": 0.4, "image_path_ms": 0.6})
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{report.README_START}\nold\n{report.README_END}\nafter\n")
    paths = report.write(data, tmp_path / "out", readme)
    assert json.loads(paths["json"].read_text())["ratios"]["c=64"]["ours / tutorial"] == 2.22
    text = paths["md"].read_text()
    assert "| ours | ours | 64 | 2,000 (1,800–2,400) | 256 |" in text
    assert "ours / litserve **3.64x**" in text
    assert "| ours (after the load) | 512 | 256 | 1 |" in text
    assert "2 × lab2prod worker (workers only) | 1,024 | 512 | 2 |" in text
    assert paths["png"].read_bytes().startswith(b"\x89PNG")
    updated = readme.read_text()
    assert "old" not in updated and "before" in updated and "after" in updated
    assert "PNG could reach at most **0.55x** our JSON throughput" in updated
    assert "c=64 JSON req/s vs tutorial | 2.22 | >= 2.0x | yes |" in updated
    assert "| ours | ours | 256 | 900, 1.0/10 | 1,300, 1.0/10 | 2,000, 1.0/40 |" in updated


def test_the_lua_script_is_in_the_projects_scripts_folder():
    script = Path(__file__).resolve().parents[2] / wrk.LUA_SCRIPT
    assert script.read_text().count("WRK_RESULT") == 1


def test_a_bench_outside_the_project_folder_says_where_to_run_it(tmp_path):
    config = BenchConfig(checkpoint=tmp_path / "m", checkpoint_source="x", out_dir=tmp_path,
                         work_dir=tmp_path, scripts_dir=tmp_path / "scripts")
    with pytest.raises(wrk.BenchError, match=r"scripts/baselines is missing: run lab2prod bench "
                                             r"in the project folder"):
        config.validate()


def test_check_peers_with_an_unknown_target_names_the_choices(tiny_checkpoint, capsys):
    from service.cli import main

    before = signal.getsignal(signal.SIGTERM)
    status = main(["bench", "--check-peers", "--targets", "tritonn",
                   "--checkpoint", str(tiny_checkpoint)])
    assert status == 1
    assert "unknown targets ['tritonn']; choose from" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before, "the bench left its SIGTERM handler"
