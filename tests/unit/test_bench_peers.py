"""The bench's baselines and peers: how each server is started (eager or on the int8 ONNX file,
from its own venv), which of our rows each is compared with, the venvs `make bench-peers`
builds, the answers --check-peers reads, and a server tree measured and stopped whole."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.bench import bodies, peers
from service.bench.harness import TARGETS, BenchConfig
from service.bench.peer_check import answered_digit
from service.bench.servers import Server, ServerSpec, memory, process_group, process_tree
from service.bench.wrk import BenchError

ROOT = Path(__file__).resolve().parents[2]


def config(tmp_path: Path, **changes) -> BenchConfig:
    return BenchConfig(checkpoint=tmp_path / "model.safetensors", checkpoint_source="test",
                       out_dir=tmp_path, work_dir=tmp_path, scripts_dir=ROOT / "scripts",
                       venvs_dir=tmp_path / "venvs", **changes)


def test_every_peer_is_a_script_in_the_baselines_folder_and_a_bench_target():
    for server in peers.PEER_SERVERS.values():
        assert (ROOT / "scripts" / "baselines" / server.script).is_file(), server.script
        assert any(s == server.name for s, _ in TARGETS.values()), f"{server.name} is never driven"
    assert set(peers.TARGETS) <= set(TARGETS)


def test_eager_baselines_load_the_checkpoint_and_same_runtime_servers_the_onnx_file(tmp_path):
    onnx = tmp_path / "model.abc.int8.onnx"
    specs = peers.specs(config(tmp_path), onnx)
    assert set(specs) == set(peers.PEER_SERVERS)
    tutorial, tutorial_int8 = specs["tutorial"].command, specs["tutorial-int8"].command
    assert tutorial[0] == sys.executable and tutorial[1].endswith("tutorial.py")
    assert tutorial[2:4] == ["--checkpoint", str((tmp_path / "model.safetensors").resolve())]
    assert tutorial_int8[2:6] == ["--runtime", "onnx-int8", "--onnx", str(onnx)]
    for name in ("triton", "bentoml", "kserve", "ray-serve"):
        command = specs[name].command
        assert command[0] == str(tmp_path / "venvs" / f".venv-bench-{name.split('-')[0]}"
                                 / "bin" / "python"), "each peer runs from its own venv"
        assert command[2:4] == ["--onnx", str(onnx)]
        assert command[-2:] == ["--port", str(specs[name].port)]
    assert specs["triton"].ready_path == specs["kserve"].ready_path == "/v2/models/mnist-cnn/ready"
    assert specs["triton"].env["BENTOML_DO_NOT_TRACK"] == "true"


def test_without_the_onnx_file_only_the_eager_baselines_are_built(tmp_path):
    assert set(peers.specs(config(tmp_path), None)) == {"tutorial", "threadpool", "litserve"}


def test_each_row_is_compared_with_ours_sending_the_same_bodies():
    assert peers.REFERENCE["tutorial"] == peers.REFERENCE["tutorial-int8"] == "ours"
    assert peers.REFERENCE["bentoml"] == peers.REFERENCE["ray-serve"] == "ours"
    assert peers.REFERENCE["triton"] == peers.REFERENCE["kserve"] == "ours-v2"
    assert TARGETS["triton"][1] == TARGETS["kserve"][1] == TARGETS["ours-v2"][1] == "v2"
    for png in ("tutorial-int8-png", "bentoml-png", "ray-serve-png"):
        assert peers.REFERENCE[png] == "ours-png"
    assert peers.family("litserve") == peers.EAGER
    assert peers.family("kserve") == peers.family("litserve-int8") == peers.SAME_RUNTIME
    assert peers.family("ours-v2") is None


def test_a_missing_peer_venv_says_to_run_make_bench_peers(tmp_path):
    wanted = config(tmp_path, targets=["ours", "tutorial-int8", "triton"])
    with pytest.raises(BenchError, match=r"triton needs .*\.venv-bench-triton/bin/python "
                                         r"\(run `make bench-peers`"):
        wanted.validate()
    config(tmp_path, targets=["ours", "tutorial-int8"]).validate()  # no venv needed


def test_make_bench_peers_builds_a_torch_free_venv_for_every_peer():
    makefile = (ROOT / "Makefile").read_text()
    listed = re.search(r"^PEERS := (.+)$", makefile, re.MULTILINE).group(1).split()
    venvs = {server.venv for server in peers.PEER_SERVERS.values() if server.venv}
    assert {f".venv-bench-{name}" for name in listed} == venvs
    assert re.search(r"^bench: .*bench-peers", makefile, re.MULTILINE)
    requirements = ROOT / "scripts" / "baselines" / "requirements"
    for name in listed:
        own, common = (requirements / f"{name}.txt").read_text(), (
            requirements / "common.txt").read_text()
        assert "-r common.txt" in own and "onnxruntime" in common
        text = own + common
        assert not re.search(r"^torch", text, re.MULTILINE), f"{name} must not install torch"
    assert ".venv-bench-*/" in (ROOT / ".gitignore").read_text()
    # Triton's Python-backend stub needs Debian's Python, not a pyenv build
    assert "PEER_PYTHON_triton ?=" in makefile and "/usr/bin/python3.11" in makefile


def test_the_peers_image_routes_get_the_benchs_png_uploads(tmp_path):
    sets = bodies.build_body_sets(tmp_path, distinct=4, png_count=2, batch_bodies=1,
                                  batch_items=2)
    extra = peers.peer_body_sets(sets)
    assert extra["png-image"].route == "/predict/image"
    assert extra["png-bentoml"].route == "/predict_image"
    for body_set in extra.values():
        assert body_set.path == sets["png"].path and body_set.sequence == "png"
        assert body_set.content_type == sets["png"].content_type


def test_batchable_rows_carry_the_json_digits_as_one_row_arrays(tmp_path):
    sets = bodies.build_body_sets(tmp_path, distinct=6, png_count=1, batch_bodies=1,
                                  batch_items=2)
    rows = [json.loads(body)["pixels"] for body in bodies.read_bodies(sets["json-rows"].path)]
    plain = [json.loads(body)["pixels"] for body in bodies.read_bodies(sets["json"].path)]
    assert rows == [[pixels] for pixels in plain]
    assert sets["json-rows"].sequence == "json"


def test_every_kind_of_answer_gives_its_digit():
    assert answered_digit({"digit": 7, "confidence": 0.9}) == 7
    assert answered_digit([{"digit": 3}]) == 3  # BentoML's batchable API: one row, one answer
    assert answered_digit({"outputs": [{"name": "probabilities", "data": [0.1, 0.0, 0.9]}]}) == 2
    with pytest.raises(BenchError, match="no digit"):
        answered_digit({"error": "overloaded"})


def test_a_child_in_a_process_group_of_its_own_is_measured_and_stopped_with_its_server(tmp_path):
    # as BentoML's worker and Ray's actors do: the child calls setsid()
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
            " start_new_session=True)\n"
            "print('started', child.pid, flush=True)\n"
            "time.sleep(120)\n")
    spec = ServerSpec("tree", [sys.executable, "-c", code], 0, ready_log_line="started")
    with Server(spec, cpu=0, log_dir=tmp_path) as server:
        server.wait_ready(30)
        leader = server.process.pid
        child = int(server.log_path.read_text().split()[-1])
        assert process_group(leader) == [leader], "the child left the group"
        assert process_tree(leader) == sorted([leader, child])
        measured = server.memory()
        assert measured["processes"] == 2 and measured["rss_bytes"] >= measured["pss_bytes"] > 0
    assert not Path(f"/proc/{child}").exists() or _state(child) == "Z", "stopped with it"


def test_pss_splits_pages_shared_between_processes():
    # a forked child shares its parent's pages: both count them fully in RSS, half in PSS
    code = "import os, time\nif os.fork() == 0:\n    time.sleep(30)\nelse:\n    time.sleep(30)\n"
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 20
        while len(process_tree(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        both = memory(process_tree(parent.pid))
        assert both["processes"] == 2
        assert both["pss_bytes"] < both["rss_bytes"]
    finally:
        for pid in process_tree(parent.pid):
            os.kill(pid, signal.SIGTERM)
        parent.wait(10)


def test_the_report_shows_both_families_what_each_ratio_means_and_pss_beside_throughput():
    from service.bench import report
    from service.bench.harness import Run, assemble

    def run(target: str, c: int, rps: float) -> Run:
        return Run(target, c, 1, rps, 1.0, 2.0, 5.0, 9.0, 0, 0, 0, int(rps * 5), 5.0, 0.9,
                   900 / rps)

    runs = [run("ours", 64, 3000), run("ours-v2", 64, 2400), run("tutorial", 64, 500),
            run("tutorial-int8", 64, 1000), run("triton", 64, 1200), run("kserve", 64, 600)]
    mib = 2**20
    memory = {name: {"after_load": {"rss_bytes": 500 * mib, "pss_bytes": pss * mib,
                                    "processes": 1}, "idle_cpu_cores": 0.01}
              for name, pss in (("ours", 400), ("tutorial", 350), ("tutorial-int8", 70),
                                ("triton", 190), ("kserve", 160))}
    context = {"started": "2026-01-01T00:00:00", "server_cpu": 0, "client_cpu": 1, "rounds": 1,
               "seconds_per_point": 5, "distinct_bodies": 2048, "miss_cache_size": 256,
               "machine": "test", "load_average_at_end": [0.1, 0.1, 0.1],
               "target_servers": {"ours": "ours", "ours-v2": "ours", "tutorial": "tutorial",
                                  "tutorial-int8": "tutorial-int8", "triton": "triton",
                                  "kserve": "kserve"},
               "same_runtime": {"file": "/r/v1/model.abc.int8.onnx", "ours_runtime": "onnx-int8"}}
    data = assemble(runs, memory, context)
    assert data["ratios"]["c=64"] == {"ours / tutorial": 6.0, "ours / tutorial-int8": 3.0,
                                      "ours-v2 / triton": 2.0, "ours-v2 / kserve": 4.0}
    text = report.markdown(data)
    eager = text.index("**Eager PyTorch, as the tutorials do**: " + report.RATIO_MEANING["eager"])
    same = text.index("**The same int8 ONNX file as ours**: "
                      + report.RATIO_MEANING["same runtime"])
    assert eager < text.index("- c=64: ours / tutorial **6.00x**") < same
    assert same < text.index("ours / tutorial-int8 **3.00x**, ours-v2 / triton **2.00x**")
    assert "`model.abc.int8.onnx`" in text and "ours served that very file" in text
    table = report.readme_table(data)
    assert "| ours-v2 | ours | 400 | 2,400, 1.0/5 |" in table, "ours-v2 is the ours server"
    assert "| tutorial | eager | 350 | 500, 1.0/5 |" in table
    assert "| triton | same runtime | 190 | 1,200, 1.0/5 |" in table
    rows = [line.split(" | ")[0] for line in table.splitlines()[2:]]
    assert rows == ["| ours", "| ours-v2", "| tutorial", "| tutorial-int8", "| triton",
                    "| kserve"], "ours, then the eager family, then the same-runtime family"
    assert "| kserve (after the load) | 500 | 160 | 1 | 0.010 |" in report.memory_table(data)


def test_ray_serve_gets_a_run_of_its_own_and_is_never_paused():
    from service.bench.harness import DEFAULT_TARGETS

    assert set(peers.OWN_RUN_TARGETS) == {"ray-serve", "ray-serve-png"}
    assert not set(peers.OWN_RUN_TARGETS) & set(DEFAULT_TARGETS)
    assert {"triton", "kserve", "bentoml", "litserve-int8", "ours"} <= set(DEFAULT_TARGETS)
    assert not peers.pausable("ray-serve")
    assert peers.pausable("litserve") and peers.pausable("ours")
    makefile = (ROOT / "Makefile").read_text()
    assert "--targets ours,ours-png,ray-serve,ray-serve-png" in makefile


def test_a_paused_server_tree_takes_no_cpu_and_still_stops(tmp_path):
    code = ("import subprocess, sys\n"
            "subprocess.Popen([sys.executable, '-c', 'while True: pass'], start_new_session=True)\n"
            "print('started', flush=True)\n"
            "while True: pass\n")
    spec = ServerSpec("spinner", [sys.executable, "-c", code], 0, ready_log_line="started")
    with Server(spec, cpu=0, log_dir=tmp_path) as server:
        server.wait_ready(30)
        while len(server.pids()) < 2:
            time.sleep(0.05)
        server.pause()
        time.sleep(0.2)
        states = {_state(pid) for pid in server.pids()}
        assert states == {"T"}, "every process of the tree is stopped"
        before = server.cpu_seconds()
        time.sleep(0.5)
        assert server.cpu_seconds() == before
        server.resume()
        assert "T" not in {_state(pid) for pid in server.pids()}
        server.pause()  # and stopped while paused: SIGCONT comes before SIGTERM
        pids = server.pids()
    assert all(not Path(f"/proc/{pid}").exists() or _state(pid) == "Z" for pid in pids)


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]
