"""GET /ready of a real `lab2prod serve` answers fast while its Redis is frozen (SIGSTOP): a
readiness probe with a 1 s timeout must not take every replica out while /predict answers."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest
from support.models import fresh_checkpoint
from support.registry import publish
from support.servers import RedisServer, ServeProcess

pytestmark = pytest.mark.slow


def test_ready_answers_fast_and_degraded_while_redis_is_frozen(tmp_path: Path):
    registry = tmp_path / "models"
    publish(registry, fresh_checkpoint(tmp_path / "v1.safetensors", seed=1))
    redis = RedisServer(tmp_path).start()  # the cache's Redis tier and the result store
    try:
        with ServeProcess(registry, tmp_path, REDIS_URL=redis.url) as server, \
                httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/ready").json()["status"] == "ready"
            assert redis.process is not None
            redis.process.send_signal(signal.SIGSTOP)
            try:
                took, frozen = [], []
                for _ in range(6):
                    start = time.monotonic()
                    frozen.append(client.get("/ready"))
                    took.append(time.monotonic() - start)
                predict = client.post("/predict", json={"pixels": [3] * 784})
            finally:
                redis.process.send_signal(signal.SIGCONT)
            deadline = time.monotonic() + 20
            while (thawed := client.get("/ready")).json()["status"] != "ready":
                assert time.monotonic() < deadline, thawed.json()
                time.sleep(0.2)
    finally:
        redis.stop()
    assert max(took) < 0.8, took  # READY_CHECK_TIMEOUT_S is 0.2 s; the Redis timeout is 2 s
    assert [answer.status_code for answer in frozen] == [200] * 6, "the model still serves"
    assert {answer.json()["status"] for answer in frozen} == {"degraded"}
    reasons = [answer.json()["checks"]["result_store"] for answer in frozen]
    assert reasons[0] == "no answer within 0.2 s"
    assert "not checked again" in reasons[-1], "the breaker spares the frozen store"
    assert frozen[-1].json()["cache"]["redis"] == "degraded"
    assert predict.status_code == 200
    assert thawed.status_code == 200 and thawed.json()["checks"]["result_store"] == "ok"
