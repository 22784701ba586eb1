"""`lab2prod worker` refuses to start without what it needs, and says what to set."""

from __future__ import annotations

import pytest

from service.cli import main
from service.commands.worker import devices_per_process
from service.settings import get_settings


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch):
    for name in ("AMQP_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_the_worker_needs_a_broker_url(environment, capsys):
    assert main(["worker"]) == 1
    assert "set AMQP_URL" in capsys.readouterr().err


def test_the_worker_needs_a_shared_result_store(environment, capsys):
    environment.setenv("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    assert main(["worker"]) == 1
    assert "set REDIS_URL" in capsys.readouterr().err


def test_the_worker_refuses_zero_processes(environment, capsys):
    assert main(["worker", "--processes", "0"]) == 2
    assert "--processes must be 1 or more" in capsys.readouterr().err


def test_with_several_gpus_worker_processes_go_round_them():
    assert devices_per_process("auto", 3, gpus=2) == ["cuda:0", "cuda:1", "cuda:0"]
    assert devices_per_process("cuda", 2, gpus=4) == ["cuda:0", "cuda:1"]
    # a named device, the CPU, one GPU or none: every process keeps DEVICE as it is
    assert devices_per_process("cuda:1", 2, gpus=4) == [None, None]
    assert devices_per_process("cpu", 2, gpus=4) == [None, None]
    assert devices_per_process("auto", 2, gpus=1) == [None, None]
    assert devices_per_process("auto", 2, gpus=0) == [None, None]


def test_the_supervisor_starts_each_worker_process_on_its_gpu(environment, monkeypatch):
    """No machine here has two GPUs: the count is given, and the processes started are recorded
    (each exits at once, as a worker without a broker would)."""
    import subprocess

    from service.ml import device

    started: list[dict[str, str] | None] = []

    class Recorded:
        returncode = 1

        def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
            started.append(env)

        def poll(self) -> int:
            return self.returncode

    monkeypatch.setattr(device, "cuda_device_count", lambda: 2)
    monkeypatch.setattr(subprocess, "Popen", Recorded)
    environment.setenv("DEVICE", "auto")
    assert main(["worker", "--processes", "2"]) == 1
    assert [env and env["DEVICE"] for env in started] == ["cuda:0", "cuda:1"]
