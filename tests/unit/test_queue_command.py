"""`lab2prod worker` refuses to start without what it needs, and says what to set."""

from __future__ import annotations

import pytest

from service.cli import main
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
