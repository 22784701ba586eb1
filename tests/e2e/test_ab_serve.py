"""scripts/ab_serve.py, the side-by-side comparison of source trees docs/benchmarks/overhead.md
uses: it serves each tree from its own source, measures them in turns, and splits the CPU a
request costs between the event loop and the other threads."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support.models import trained_checkpoint
from support.registry import publish
from support.scripts import SCRIPTS, load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = SCRIPTS / "ab_serve.py"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ab_serve():
    return load_script("ab_serve")


def test_a_tree_is_a_folder_with_the_service_sources_or_the_floor(ab_serve, tmp_path):
    assert ab_serve.parse_tree(f"after={ROOT}") == ("after", str(ROOT))
    assert ab_serve.parse_tree("bare=floor") == ("bare", "floor")
    for wrong in ("no-label", f"={ROOT}", f"empty={tmp_path}"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"LABEL=PATH|not a source tree"):
            ab_serve.parse_tree(wrong)


def test_cpu_is_split_between_the_main_thread_and_the_others(ab_serve):
    pid = os.getpid()
    before = ab_serve.thread_cpu_ticks(pid)

    spun, done = threading.Event(), threading.Event()

    def spin() -> None:
        until = time.thread_time() + 0.3
        while time.thread_time() < until:
            pass
        spun.set()
        done.wait()  # a thread's figures go with it: read them while it lives

    worker = threading.Thread(target=spin)
    worker.start()
    spun.wait()
    after = ab_serve.thread_cpu_ticks(pid)
    done.set()
    worker.join()
    main, others = ab_serve.split_cpu(pid, before, after, requests=100)
    # 0.3 s over 100 requests: 3,000 µs each, on the other thread (the clock ticks every 10 ms)
    assert others >= 2_000
    assert main < others


def test_two_trees_are_measured_in_turns_and_compared(tmp_path):
    registry = tmp_path / "models"
    publish(registry, trained_checkpoint(tmp_path / "model", digits=300, epochs=1))
    finished = subprocess.run(
        [sys.executable, str(SCRIPT), f"this={ROOT}", "floor=floor", "--registry", str(registry),
         "--rounds", "2", "--duration", "1", "--concurrency", "4", "--work-dir",
         str(tmp_path / "ab")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    rounds = re.findall(r"^round (\d) (\S+) +([\d,]+) req/s", finished.stdout, re.MULTILINE)
    assert [(number, label) for number, label, _ in rounds] == [
        ("1", "this"), ("1", "floor"), ("2", "this"), ("2", "floor")]
    assert all(int(rate.replace(",", "")) > 0 for _, _, rate in rounds)
    summary = finished.stdout.split("per-round ratio to this")[1]
    # each round's ratios (req/s; CPU), then their medians
    assert re.search(r"^floor .* [\d.]+; [\d.]+, [\d.]+; [\d.]+  \(medians [\d.]+; [\d.]+\)$",
                     summary, re.MULTILINE)
