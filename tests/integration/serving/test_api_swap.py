"""Zero-downtime model swaps: the alias moves while requests run; nobody sees an error."""

from __future__ import annotations

import asyncio

import numpy as np
from support.app import serving, settings_for
from support.registry import publish

from service.registry import open_registry


async def hammer(client, stop: asyncio.Event, seed: int) -> list[tuple[int, str | None]]:
    rng = np.random.default_rng(seed)
    seen = []
    while not stop.is_set():
        pixels = rng.integers(0, 256, 784).tolist()  # always new: every request hits the model
        answer = await client.post("/predict", json={"pixels": pixels})
        version = answer.json().get("model_version") if answer.status_code == 200 else None
        seen.append((answer.status_code, version))
    return seen


async def wait_for_version(client, version: str, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (await client.get("/ready")).json()["model"]["version"] != version:
        assert asyncio.get_running_loop().time() < deadline, f"{version} never came into service"
        await asyncio.sleep(0.05)


async def test_publishing_v2_swaps_models_under_load_without_a_single_failure(
    registry_dir, checkpoints
):
    settings = settings_for(registry_dir, model_poll_interval_s=0.1)
    async with serving(settings) as (_, client):
        stop = asyncio.Event()
        workers = [asyncio.ensure_future(hammer(client, stop, seed)) for seed in range(4)]
        await asyncio.sleep(0.3)
        publish(registry_dir, checkpoints["v2"])  # moves production to v2
        await wait_for_version(client, "v2")
        await asyncio.sleep(0.3)
        stop.set()
        runs = await asyncio.gather(*workers)
        metrics = (await client.get("/metrics")).text
        info = (await client.get("/model-info")).json()
    for seen in runs:
        assert {status for status, _ in seen} == {200}, "no request may fail during a swap"
        versions = [version for _, version in seen]
        assert versions[0] == "v1" and versions[-1] == "v2"
        switch = versions.index("v2")
        assert set(versions[switch:]) == {"v2"}, "once v2 answers, v1 never answers again"
    assert sum(len(seen) for seen in runs) > 20
    assert info["version"] == "v2"
    assert 'lab2prod_model_reloads_total{result="ok"}' in metrics


async def test_after_a_swap_a_repeated_request_is_answered_by_the_new_version(
    registry_dir, checkpoints
):
    pixels = np.random.default_rng(11).integers(0, 256, 784).tolist()
    settings = settings_for(registry_dir, model_poll_interval_s=0.1)
    async with serving(settings) as (_, client):
        before = await client.post("/predict", json={"pixels": pixels})
        cached = await client.post("/predict", json={"pixels": pixels})
        publish(registry_dir, checkpoints["v2"])
        await wait_for_version(client, "v2")
        after = await client.post("/predict", json={"pixels": pixels})
    assert (before.json()["model_version"], cached.headers["x-cache"]) == ("v1", "hit")
    assert (after.json()["model_version"], after.headers["x-cache"]) == ("v2", "miss")


async def test_a_broken_new_version_is_refused_and_the_old_one_keeps_serving(
    registry_dir, tmp_path, checkpoints, caplog
):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(checkpoints["v2"].read_bytes()[:5000])  # truncated
    settings = settings_for(registry_dir, model_poll_interval_s=0.05)
    async with serving(settings) as (_, client):
        publish(registry_dir, broken)
        await asyncio.sleep(0.5)
        answer = await client.post("/predict", json={"pixels": [1] * 784})
        ready = await client.get("/ready")
        open_registry(registry_dir, "mnist-cnn").rollback()  # production back to v1: nothing to do
        await asyncio.sleep(0.3)
        back = await client.get("/ready")  # ... but the failure is history: ready again
        publish(registry_dir, checkpoints["v2"])  # v3, a good one
        await wait_for_version(client, "v3")
    assert answer.status_code == 200 and answer.json()["model_version"] == "v1"
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"
    assert "production -> v2" in ready.json()["model"]["alias_failures"]["production"]
    assert back.json()["status"] == "ready" and back.json()["model"]["alias_failures"] == {}
    refusals = [r for r in caplog.records if "cannot be served" in r.getMessage()]
    assert len(refusals) == 1, "a broken version is tried once, not on every poll"


async def test_a_repaired_version_is_served_when_the_alias_moves_away_and_back(
    registry_dir, tmp_path, checkpoints
):
    """A version that failed to load is not refused for good: moved onto again, it is tried
    again (a fresh server would serve it; replicas must not diverge)."""
    settings = settings_for(registry_dir, model_poll_interval_s=0.05)
    good = checkpoints["v2"].read_bytes()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(good[:5000])
    stored = registry_dir / "mnist-cnn" / "v2" / "model.safetensors"
    async with serving(settings) as (_, client):
        publish(registry_dir, broken)  # v2 in production, broken
        await asyncio.sleep(0.5)
        refused = (await client.get("/ready")).json()
        stored.write_bytes(good)  # repaired
        registry = open_registry(registry_dir, "mnist-cnn")
        registry.rollback()  # production v1 ...
        await asyncio.sleep(0.3)
        registry.rollback()  # ... and v2 again
        await wait_for_version(client, "v2")
        ready = (await client.get("/ready")).json()
    assert refused["model"]["version"] == "v1"
    assert "production" in refused["model"]["alias_failures"]
    assert ready["status"] == "ready" and ready["model"]["alias_failures"] == {}
