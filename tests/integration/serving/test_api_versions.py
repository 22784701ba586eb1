"""Several versions in one service: pinning, canary and shadow traffic, alias moves under load,
eviction, and the admin API. Two versions trained with different seeds disagree on some digits;
on those, every answer must be the answer of the version it names."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY
from support.app import serving, settings_for, wait_until
from support.models import direct_predictions, held_out_digits, trained_checkpoint
from support.registry import publish

from service.inference import pool as pool_module
from service.registry import open_registry

TOKEN = "a-test-admin-token-0123"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def models(request: pytest.FixtureRequest) -> dict[str, Path]:
    folder = Path(request.config.cache.mkdir("lab2prod-test-models"))
    return {"a": trained_checkpoint(folder, seed=0), "b": trained_checkpoint(folder, seed=1)}


@pytest.fixture(scope="module")
def disputed(models: dict[str, Path]) -> dict[str, np.ndarray]:
    """Held-out digits on which the two models answer differently, with each one's answer."""
    images, _ = held_out_digits(1000)
    a, b = direct_predictions(models["a"], images), direct_predictions(models["b"], images)
    differ = np.flatnonzero(a != b)[:24]
    assert len(differ) >= 8, "the two seeds should disagree on some digits"
    return {"images": images[differ], "a": a[differ], "b": b[differ]}


@pytest.fixture
def registry_dir(tmp_path: Path, models: dict[str, Path]) -> Path:
    """v1 (model a) in production, v2 (model b) as candidate."""
    registry = tmp_path / "models"
    publish(registry, models["a"])
    publish(registry, models["b"], aliases=("candidate",))
    return registry


def pixels(image: np.ndarray) -> dict:
    return {"pixels": image.reshape(-1).tolist()}


async def answers_for(client, images: np.ndarray, **request) -> list:
    return [await client.post("/predict", json=pixels(image), **request) for image in images]


# --- pinning -----------------------------------------------------------------------------------


async def test_a_pinned_version_answers_with_its_own_model(registry_dir, disputed):
    async with serving(settings_for(registry_dir)) as (_, client):
        default = await answers_for(client, disputed["images"])
        by_header = await answers_for(client, disputed["images"], headers={"X-Model-Version": "v2"})
        by_query = await answers_for(client, disputed["images"], params={"version": "v1"})
        by_alias = await answers_for(client, disputed["images"],
                                     headers={"X-Model-Version": "candidate"})
        batch = await client.post("/predict/batch", params={"version": "v2"},
                                  json={"items": [pixels(i) for i in disputed["images"]]})
    for answers, model, version in ((default, "a", "v1"), (by_header, "b", "v2"),
                                    (by_query, "a", "v1"), (by_alias, "b", "v2")):
        assert [a.status_code for a in answers] == [200] * len(answers)
        assert [a.json()["digit"] for a in answers] == disputed[model].tolist(), version
        assert {a.json()["model_version"] for a in answers} == {version}
        assert {a.headers["x-model-version"] for a in answers} == {version}
    assert [p["digit"] for p in batch.json()["predictions"]] == disputed["b"].tolist()
    assert batch.headers["x-model-version"] == "v2"


async def test_an_unknown_version_is_404_and_lists_the_known_ones(registry_dir):
    async with serving(settings_for(registry_dir)) as (_, client):
        unknown = await client.post("/predict", json={"pixels": [0] * 784},
                                    headers={"X-Model-Version": "v9"})
        malformed = await client.post("/predict", json={"pixels": [0] * 784},
                                      params={"version": "../v1"})
    assert unknown.status_code == 404
    detail = unknown.json()["detail"]
    assert "'v9'" in detail and "known versions v1, v2" in detail and "candidate -> v2" in detail
    assert malformed.status_code == 422 and "neither a version (v3) nor an alias" in \
        malformed.json()["detail"]


async def test_a_version_that_cannot_be_loaded_is_503_with_the_reason_and_is_retried_later(
    registry_dir, models, monkeypatch
):
    monkeypatch.setattr(pool_module, "LOAD_RETRY_S", 0.2)
    broken = publish(registry_dir, models["b"], aliases=("broken",))
    stored = registry_dir / "mnist-cnn" / broken / "model.safetensors"
    good = stored.read_bytes()
    stored.write_bytes(good[:5000])
    pin = {"X-Model-Version": broken}
    async with serving(settings_for(registry_dir)) as (_, client):
        refused = await client.post("/predict", json={"pixels": [0] * 784}, headers=pin)
        stored.write_bytes(good)  # repaired in place, as an operator would
        await asyncio.sleep(0.3)
        served = await client.post("/predict", json={"pixels": [0] * 784}, headers=pin)
        other = await client.post("/predict", json={"pixels": [0] * 784})
    assert refused.status_code == 503 and "retry-after" in refused.headers
    assert f"{broken} cannot be served" in refused.json()["detail"]
    assert "corrupt or truncated" in refused.json()["detail"]
    assert served.status_code == 200 and served.json()["model_version"] == broken
    assert other.json()["model_version"] == "v1"


# --- canary and shadow ------------------------------------------------------------------------


async def test_the_canary_takes_its_share_of_requests_without_a_client_id(registry_dir):
    settings = settings_for(registry_dir, canary_alias="candidate", canary_percent=20)
    async with serving(settings) as (_, client):
        versions = Counter()
        for index in range(2000):
            answer = await client.post("/predict", json={"pixels": [index % 256] * 784})
            versions[answer.headers["x-model-version"]] += 1
    assert set(versions) == {"v1", "v2"}
    assert abs(versions["v2"] / 2000 - 0.20) <= 0.03, versions


async def test_a_client_id_always_gets_the_same_version(registry_dir):
    settings = settings_for(registry_dir, canary_alias="candidate", canary_percent=20)
    async with serving(settings) as (_, client):
        seen: dict[str, set[str]] = {}
        for client_id in (f"client-{n}" for n in range(500)):
            for attempt in range(3):
                answer = await client.post("/predict", json={"pixels": [attempt] * 784},
                                           headers={"X-Client-Id": client_id})
                seen.setdefault(client_id, set()).add(answer.headers["x-model-version"])
    assert all(len(versions) == 1 for versions in seen.values()), "sticky per client id"
    canaried = sum(versions == {"v2"} for versions in seen.values())
    assert abs(canaried / 500 - 0.20) <= 0.06


async def test_shadow_answers_off_the_path_and_its_agreement_is_counted(registry_dir, disputed):
    settings = settings_for(registry_dir, shadow_alias="candidate", shadow_percent=100)
    before = {outcome: shadow_count(outcome) for outcome in ("agree", "disagree")}
    async with serving(settings) as (_, client):
        answers = await answers_for(client, disputed["images"])
        await wait_until(lambda: shadow_count("disagree") - before["disagree"] >= len(answers))
        metrics = (await client.get("/metrics")).text
    assert {a.json()["model_version"] for a in answers} == {"v1"}
    assert [a.json()["digit"] for a in answers] == disputed["a"].tolist()
    # every one of these digits is one the two versions disagree on
    assert shadow_count("disagree") - before["disagree"] == len(answers)
    assert shadow_count("agree") == before["agree"]
    assert 'lab2prod_shadow_predictions_total{model_version="v1",outcome="disagree"' in metrics


async def test_a_failing_shadow_never_fails_or_delays_the_clients_answer(registry_dir, disputed):
    settings = settings_for(registry_dir, shadow_alias="candidate", shadow_percent=100)
    failed_before = shadow_count("failed")
    async with serving(settings) as (app, client):
        shadow = app.state.pool.lookup("candidate")

        def broken(batch):
            raise RuntimeError("the shadow fell over")

        shadow.model.runtime.predict_proba = broken
        answers = await answers_for(client, disputed["images"][:5])
        await wait_until(lambda: shadow_count("failed") - failed_before >= 5)
    assert [a.status_code for a in answers] == [200] * 5
    assert {a.json()["model_version"] for a in answers} == {"v1"}


def shadow_count(outcome: str) -> float:
    """Shadow copies of v1's answers to v2 so far (the process's registry: read deltas)."""
    return REGISTRY.get_sample_value("lab2prod_shadow_predictions_total", {
        "model_version": "v1", "shadow_version": "v2", "outcome": outcome}) or 0.0


# --- alias moves under load -------------------------------------------------------------------


async def test_alias_moves_under_load_fail_no_request_and_answers_never_cross_versions(
    registry_dir, models, disputed
):
    """Release (a new production), promote, rollback, while clients keep asking about digits
    the two models disagree on, through the cache: every answer is 200 and is the answer of
    the version it names."""
    expected = {"v1": disputed["a"], "v2": disputed["b"], "v3": disputed["b"]}
    registry = open_registry(registry_dir, "mnist-cnn")
    settings = settings_for(registry_dir, model_poll_interval_s=0.05)
    async with serving(settings) as (app, client):
        stop = asyncio.Event()
        answers: list = []

        async def keep_asking(offset: int) -> None:
            index = offset
            while not stop.is_set():
                position = index % len(disputed["images"])
                reply = await client.post("/predict", json=pixels(disputed["images"][position]))
                answers.append((position, reply))
                index += 1
                await asyncio.sleep(0)  # a cache hit never suspends: let the other tasks run

        clients = [asyncio.create_task(keep_asking(n)) for n in range(8)]
        moves = []
        for move in (lambda: publish(registry_dir, models["b"]),  # a release: v3 in production
                     lambda: registry.promote("v1"),  # production back to v1 by hand
                     registry.rollback):  # and undone: v3 again
            move()
            target = registry.aliases()["production"]
            await wait_until(lambda t=target: app.state.pool.following["production"] == t)
            await asyncio.sleep(0.2)
            moves.append(target)
        stop.set()
        await asyncio.gather(*clients)
    assert moves == ["v3", "v1", "v3"]
    assert len(answers) > 100
    assert [reply.status_code for _, reply in answers] == [200] * len(answers)
    served = Counter(reply.json()["model_version"] for _, reply in answers)
    assert set(served) == {"v1", "v3"}
    for position, reply in answers:
        body = reply.json()
        assert body["digit"] == expected[body["model_version"]][position]
        assert reply.headers["x-model-version"] == body["model_version"]


async def test_the_least_recently_used_version_is_unloaded_but_never_an_alias_target(
    registry_dir, models
):
    publish(registry_dir, models["a"], aliases=("spare",))  # v3
    settings = settings_for(registry_dir, max_loaded_versions=2, admin_token=TOKEN)
    async with serving(settings) as (_, client):
        for version in ("v2", "v3"):
            pinned = await client.post("/predict", json={"pixels": [1] * 784},
                                       headers={"X-Model-Version": version})
            assert pinned.status_code == 200
        loaded = (await client.get("/admin/models", headers=ADMIN)).json()["loaded"]
        again = await client.post("/predict", json={"pixels": [2] * 784},
                                  headers={"X-Model-Version": "v2"})
    assert [(m["version"], m["aliases"]) for m in loaded] == [("v1", ["production"]),
                                                              ("v3", [])]
    assert again.status_code == 200 and again.json()["model_version"] == "v2"


# --- the admin API and per-version metrics ------------------------------------------------------


async def test_the_admin_api_is_absent_without_a_token(registry_dir):
    async with serving(settings_for(registry_dir)) as (_, client):
        for method, path in (("GET", "/admin/models"), ("POST", "/admin/reload"),
                             ("GET", "/admin/traffic"), ("PUT", "/admin/traffic")):
            answer = await client.request(method, path, headers=ADMIN)
            assert answer.status_code == 404, path


async def test_the_admin_api_refuses_a_missing_or_wrong_token(registry_dir):
    async with serving(settings_for(registry_dir, admin_token=TOKEN)) as (_, client):
        missing = await client.get("/admin/models")
        wrong = await client.get("/admin/models", headers={"Authorization": "Bearer nope"})
        basic = await client.get("/admin/models", headers={"Authorization": f"Basic {TOKEN}"})
        right = await client.get("/admin/models", headers=ADMIN)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert basic.status_code == 401
    assert wrong.status_code == 403 and "not this service's ADMIN_TOKEN" in wrong.json()["detail"]
    assert right.status_code == 200


async def test_traffic_changes_are_validated_then_applied_at_once(registry_dir):
    async with serving(settings_for(registry_dir, admin_token=TOKEN)) as (_, client):
        before = (await client.get("/admin/traffic", headers=ADMIN)).json()
        too_much = await client.put("/admin/traffic", headers=ADMIN,
                                    json={"canary_alias": "candidate", "canary_percent": 150})
        no_alias = await client.put("/admin/traffic", headers=ADMIN, json={"canary_percent": 10})
        unknown = await client.put("/admin/traffic", headers=ADMIN,
                                   json={"canary_alias": "nightly", "canary_percent": 10})
        unchanged = (await client.get("/admin/traffic", headers=ADMIN)).json()
        applied = await client.put("/admin/traffic", headers=ADMIN,
                                   json={"canary_alias": "candidate", "canary_percent": 100})
        routed = await client.post("/predict", json={"pixels": [3] * 784})
        models = (await client.get("/admin/models", headers=ADMIN)).json()
    assert before == unchanged == {"canary_alias": None, "canary_percent": 0.0,
                                   "shadow_alias": None, "shadow_percent": 0.0}
    assert too_much.status_code == 422 and "less than or equal to 100" in too_much.text
    assert no_alias.status_code == 422 and "no canary_alias is set" in no_alias.json()["detail"]
    assert unknown.status_code == 422 and "'nightly'" in unknown.json()["detail"]
    assert applied.status_code == 200 and applied.json()["canary_percent"] == 100
    assert routed.headers["x-model-version"] == "v2"
    assert {m["version"]: m["aliases"] for m in models["loaded"]} == {
        "v1": ["production"], "v2": ["candidate"]}


async def test_reload_follows_an_alias_move_now_and_models_describes_what_is_loaded(
    registry_dir, models
):
    settings = settings_for(registry_dir, admin_token=TOKEN)  # no polling
    async with serving(settings) as (_, client):
        open_registry(registry_dir, "mnist-cnn").promote("v2")
        before = await client.post("/predict", json={"pixels": [4] * 784})
        reloaded = (await client.post("/admin/reload", headers=ADMIN)).json()
        after = await client.post("/predict", json={"pixels": [4] * 784})
        loaded = (await client.get("/admin/models", headers=ADMIN)).json()["loaded"]
    assert before.json()["model_version"] == "v1" and after.json()["model_version"] == "v2"
    assert reloaded == {"aliases": {"production": "v2"}, "alias_failures": {}}
    described = {m["version"]: m for m in loaded}
    assert described["v2"]["runtime"] == "eager" and described["v2"]["inputs_served"] >= 1
    assert described["v2"]["memory"]["weights_bytes"] > 1_000_000


async def test_metrics_are_labelled_by_the_version_that_answered(registry_dir, disputed):
    async with serving(settings_for(registry_dir)) as (_, client):
        await answers_for(client, disputed["images"][:3], headers={"X-Model-Version": "v2"})
        await answers_for(client, disputed["images"][:2])
        metrics = (await client.get("/metrics")).text
    assert ('lab2prod_http_requests_total{method="POST",model_version="v2",route="/predict",'
            'status="200"}') in metrics
    computed = {line.split("} ")[0]: float(line.split("} ")[1]) for line in metrics.splitlines()
                if line.startswith("lab2prod_predictions_total{")}
    assert sum(v for k, v in computed.items() if 'model_version="v2"' in k) >= 3
    assert 'lab2prod_batch_size_count{model_version="v2"}' in metrics


async def test_a_pinned_job_is_answered_by_the_version_it_names(registry_dir, disputed):
    async with serving(settings_for(registry_dir)) as (_, client):  # jobs run in-process
        accepted = await client.post("/classify", json=pixels(disputed["images"][0]),
                                     headers={"X-Model-Version": "v2"})
        unknown = await client.post("/classify", json=pixels(disputed["images"][0]),
                                    headers={"X-Model-Version": "v7"})
        result = {}
        for _ in range(200):
            answer = await client.get(f"/result/{accepted.json()['inference_id']}")
            result = answer.json()
            if result["status"] != "pending":
                break
            await asyncio.sleep(0.02)
    assert accepted.status_code == 202 and unknown.status_code == 404
    assert result["model_version"] == "v2"
    assert result["predicted_class"] == int(disputed["b"][0])
