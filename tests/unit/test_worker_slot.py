"""`lab2prod serve --workers N` on a machine with several GPUs: each process on its own.

uvicorn gives its worker processes no index, so each claims the lowest free slot (a lock file)
in a folder of the supervising process; slot i serves on GPU i mod the GPUs. The locks are real
``flock`` locks held by real processes here: only the GPU count is given, as no GPU is needed
to check which one a process would take.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from service.api import worker_slot
from service.api.worker_slot import claim_slot, worker_settings
from service.settings import Settings, get_settings

CLAIM_AND_HOLD = """
import sys
from pathlib import Path
from service.api.worker_slot import claim_slot
slot, lock = claim_slot(Path(sys.argv[1]))
print(slot, flush=True)
sys.stdin.read()  # held until the test closes our stdin, or kills us
"""


def holder(directory: Path) -> tuple[subprocess.Popen, int]:
    """Another process that claims a slot and holds it; and the slot it got."""
    process = subprocess.Popen([sys.executable, "-c", CLAIM_AND_HOLD, str(directory)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return process, int(process.stdout.readline())


@pytest.fixture
def holders():
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def test_processes_claim_distinct_slots_lowest_first(tmp_path, holders):
    slots = []
    for _ in range(3):
        process, slot = holder(tmp_path)
        holders.append(process)
        slots.append(slot)
    assert slots == [0, 1, 2]
    slot, lock = claim_slot(tmp_path)
    lock.close()
    assert slot == 3


def test_the_slot_of_a_process_that_died_is_claimed_by_the_next_one(tmp_path, holders):
    first, first_slot = holder(tmp_path)
    second, second_slot = holder(tmp_path)
    holders += [first, second]
    assert (first_slot, second_slot) == (0, 1)
    first.send_signal(signal.SIGKILL)  # no clean-up: the kernel releases the lock
    first.wait()
    slot, lock = claim_slot(tmp_path)
    lock.close()
    assert slot == 0


@pytest.mark.parametrize("device", ["auto", "cuda", "CUDA"])
def test_with_several_gpus_the_processes_go_round_them(tmp_path, device):
    settings = Settings(device=device)
    claimed = [worker_settings(settings, gpus=2, directory=tmp_path) for _ in range(3)]
    try:
        assert [each.device for each, _ in claimed] == ["cuda:0", "cuda:1", "cuda:0"]
    finally:
        for _, lock in claimed:
            lock.close()


@pytest.mark.parametrize(("device", "gpus"), [("cpu", 4), ("cuda:1", 4), ("auto", 1),
                                              ("auto", 0)])
def test_a_named_device_the_cpu_or_one_gpu_leaves_the_settings_and_claims_nothing(
    tmp_path, device, gpus
):
    settings = Settings(device=device)
    folder = tmp_path / "slots"
    assert worker_settings(settings, gpus=gpus, directory=folder) == (settings, None)
    assert not folder.exists()



def test_uvicorn_s_factory_builds_each_worker_process_app_on_its_slot_s_gpu(
    tmp_path, monkeypatch
):
    # what `lab2prod serve --workers 2` runs in each process, on a machine with two GPUs
    monkeypatch.setenv("DEVICE", "auto")
    monkeypatch.setenv("LOAD_MODEL", "false")
    monkeypatch.setattr(worker_slot, "cuda_device_count", lambda: 2)
    monkeypatch.setattr(worker_slot, "slot_directory", lambda pid: tmp_path / str(pid))
    get_settings.cache_clear()
    try:
        apps = [worker_slot.create_worker_app() for _ in range(2)]
        assert [app.state.settings.device for app in apps] == ["cuda:0", "cuda:1"]
    finally:
        get_settings.cache_clear()
        while worker_slot._held:
            worker_slot._held.pop().close()
