"""The Redis and RabbitMQ clients are loaded only by a server told to use them: on the embedded
default (no REDIS_URL, no AMQP_URL) the API answers /predict and runs async jobs without
importing redis-py or aio-pika, about 10 MiB of its memory (docs/benchmarks/overhead.md).

Each case runs in a fresh interpreter, so that what other tests imported does not count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLIENT_PACKAGES = ("redis", "aio_pika", "aiormq", "pamqp")

# Serve the app in-process, predict, queue a job and read its result, then report which client
# packages the interpreter has imported.
SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from support.app import serving, settings_for

async def main():
    settings = settings_for(Path(sys.argv[1]), **json.loads(sys.argv[2]))
    async with serving(settings) as (app, client):
        predicted = await client.post("/predict", json={"pixels": [0] * 784})
        queued = await client.post("/classify", json={"pixels": [0] * 784})
        inference_id = queued.json()["inference_id"]
        for _ in range(200):
            result = (await client.get(f"/result/{inference_id}")).json()
            if result["status"] == "done":
                break
            await asyncio.sleep(0.05)
    loaded = sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[3].split(",")))
    print(json.dumps({"predict": predicted.status_code, "job": result.get("status"),
                      "loaded": loaded}))

asyncio.run(main())
"""


def served_imports(registry_dir: Path, **overrides: str | None) -> dict[str, object]:
    tests_dir = Path(__file__).resolve().parents[2]
    environment = {**os.environ, "PYTHONPATH": str(tests_dir)}
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(registry_dir), json.dumps(overrides),
         ",".join(CLIENT_PACKAGES)],
        capture_output=True, text=True, timeout=120, env=environment, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_the_embedded_default_serves_and_runs_jobs_without_the_redis_or_rabbitmq_client(
    registry_dir: Path,
) -> None:
    report = served_imports(registry_dir)
    assert report["predict"] == 200 and report["job"] == "done", report
    assert report["loaded"] == [], f"the embedded default imported {report['loaded']}"


@pytest.mark.redis
def test_a_server_given_redis_loads_its_client(registry_dir: Path, redis_url: str) -> None:
    report = served_imports(registry_dir, redis_url=redis_url)
    assert report["predict"] == 200 and report["job"] == "done", report
    assert report["loaded"] == ["redis"], report
