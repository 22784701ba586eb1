"""The MLflow registry backend against MLflow's own SQLite store (no server): our versions are
MLflow's version numbers, our aliases its model aliases, and its failures say what to check."""

from __future__ import annotations

import stat
import time
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient
from support.servers import free_port

from service.registry import ModelRegistry, RegistryError, mlflow_client, open_registry
from service.registry import mlflow as backend
from service.registry.mlflow import MlflowRegistry


@pytest.fixture
def client(mlflow_store: str) -> MlflowClient:
    return MlflowClient(tracking_uri=mlflow_store, registry_uri=mlflow_store)


@pytest.fixture
def registry(mlflow_store: str) -> ModelRegistry:
    """A model of this test's own in the shared store."""
    return open_registry(f"mlflow+{mlflow_store}", f"model-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "candidate.safetensors"
    path.write_bytes(b"weights-1")
    return path


def test_each_url_form_names_the_uri_mlflows_client_takes():
    assert mlflow_client.tracking_uri("mlflow+http://mlflow:5000") == "http://mlflow:5000"
    assert mlflow_client.tracking_uri("mlflow+https://mlflow.example") == "https://mlflow.example"
    assert mlflow_client.tracking_uri("mlflow+sqlite:///reg.db") == "sqlite:///reg.db"
    assert mlflow_client.tracking_uri("mlflow+file:///srv/mlruns") == "file:///srv/mlruns"
    for url in ("mlflow+http://127.0.0.1:1", "mlflow+https://h", "mlflow+sqlite:///x.db",
                "mlflow+file:///x"):
        assert isinstance(open_registry(url), MlflowRegistry)  # nothing is contacted yet


def test_our_version_names_are_mlflows_version_numbers():
    assert backend.as_version("7") == "v7" and backend.as_number("v7") == "7"


def mlflow_aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """MLflow's aliases of ``name`` -> its version numbers (a SQLite store gives ints)."""
    aliases = client.get_registered_model(name).aliases
    return {alias: str(number) for alias, number in aliases.items()}


def test_versions_are_mlflow_versions_and_aliases_are_mlflow_aliases(registry, client,
                                                                      checkpoint):
    assert registry.publish(checkpoint, {"run_id": "r1"}) == "v1"
    assert registry.publish(checkpoint, {"run_id": "r2"}) == "v2"
    assert registry.versions() == ["v1", "v2"]
    assert registry.aliases() == {"production": "v2", "previous": "v1"}
    assert mlflow_aliases(client, registry.model_name) == {"production": "2", "previous": "1"}
    found = client.get_model_version_by_alias(registry.model_name, "production")
    assert str(found.version) == "2" and found.tags["lab2prod.version"] == "v2"
    assert found.tags["lab2prod.run_id"] == "r2"
    assert registry.card("production")["version"] == "v2"


def test_the_card_is_an_artefact_of_the_version_and_its_key_fields_are_tags(registry, client,
                                                                             checkpoint):
    card = {"run_id": "r1", "metrics": {"candidate": {"accuracy": 0.93}},
            "data": {"evaluation": {"name": "mnist-5k"}}, "runtimes": {"chosen": "onnx"},
            "gate": {"passed": True}, "git": {"commit": "abc123"}}
    registry.publish(checkpoint, card)
    tags = client.get_model_version(registry.model_name, "1").tags
    assert {key: tags[key] for key in ("lab2prod.accuracy", "lab2prod.dataset",
                                       "lab2prod.runtime", "lab2prod.gate",
                                       "lab2prod.git_commit")} == {
        "lab2prod.accuracy": "0.93", "lab2prod.dataset": "mnist-5k", "lab2prod.runtime": "onnx",
        "lab2prod.gate": "passed", "lab2prod.git_commit": "abc123"}
    assert tags["lab2prod.checkpoint_sha256"].startswith("sha256:")
    stored = registry.card("v1")
    assert stored["run_id"] == "r1" and stored["version"] == "v1"
    assert stored["model"] == registry.model_name


def test_fetch_downloads_the_whole_version_to_a_read_only_cache(registry, checkpoint, tmp_path):
    artefact = tmp_path / "model.0123456789ab.int8.onnx"
    artefact.write_bytes(b"graph")
    registry.publish(checkpoint, {}, artefacts=[artefact])
    folder = registry.fetch("production")
    assert sorted(path.name for path in folder.iterdir()) == [
        "model-card.json", "model.0123456789ab.int8.onnx", "model.safetensors"]
    assert registry.checkpoint_path("v1").read_bytes() == b"weights-1"
    assert not (folder / "model.safetensors").stat().st_mode & stat.S_IWUSR
    assert registry.fetch("v1") == folder  # fetched once


def test_a_version_deleted_in_mlflow_leaves_a_gap_and_the_numbers_still_agree(registry, client,
                                                                             checkpoint):
    registry.publish(checkpoint, {})
    registry.publish(checkpoint, {})
    client.delete_model_version(registry.model_name, "2")
    assert registry.versions() == ["v1"]
    assert registry.publish(checkpoint, {}) == "v3"  # MLflow never reuses 2
    assert registry.versions() == ["v1", "v3"]
    assert registry.card("v3")["version"] == "v3"
    assert mlflow_aliases(client, registry.model_name)["production"] == "3"


def test_an_mlflow_version_lab2prod_did_not_finish_is_not_listed(registry, client, checkpoint):
    registry.publish(checkpoint, {})
    client.create_model_version(registry.model_name, source="file:///nowhere")  # MLflow's 2
    assert registry.versions() == ["v1"]
    assert registry.publish(checkpoint, {}) == "v3"


def test_rollback_and_promotion_move_mlflows_aliases(registry, client, checkpoint):
    for _ in range(3):
        registry.publish(checkpoint, {})
    registry.promote("v1")
    assert mlflow_aliases(client, registry.model_name) == {"production": "1", "previous": "3"}
    registry.rollback()
    registry.promote("v2", "candidate")
    assert mlflow_aliases(client, registry.model_name) == {
        "production": "3", "previous": "1", "candidate": "2"}


def test_an_alias_mlflow_cannot_hold_is_refused_before_anything_is_written(registry,
                                                                          checkpoint):
    for alias in ("stable.1", "latest"):
        with pytest.raises(RegistryError, match="not allowed in MLflow"):
            registry.publish(checkpoint, {}, aliases=(alias,))
    assert registry.versions() == []


def test_a_held_lock_makes_changes_wait_then_says_how_to_free_it(registry, client, checkpoint,
                                                                 monkeypatch):
    monkeypatch.setattr(backend, "LOCK_TIMEOUT_S", 1)
    client.create_registered_model(f"{registry.model_name}.lab2prod-lock")
    with pytest.raises(RegistryError, match=r"lock of .* if no release or promotion is running"):
        registry.publish(checkpoint, {})
    assert registry.versions() == []


def test_a_stale_lock_is_broken(registry, client, checkpoint, monkeypatch):
    monkeypatch.setattr(backend, "LOCK_STALE_S", 0)
    lock = f"{registry.model_name}.lab2prod-lock"
    client.create_registered_model(lock)
    time.sleep(0.01)
    assert registry.publish(checkpoint, {}) == "v1"
    assert not client.search_registered_models(f"name = '{lock}'")  # released after


def test_an_unknown_model_says_how_to_get_one(mlflow_store):
    registry = open_registry(f"mlflow+{mlflow_store}", "no-such-model")
    assert registry.versions() == [] and registry.aliases() == {}
    with pytest.raises(RegistryError, match=r"no model 'production' for no-such-model.*release"):
        registry.resolve("production")


def test_an_unreachable_server_is_an_error_that_says_what_to_check():
    registry = open_registry(f"mlflow+http://127.0.0.1:{free_port()}", "mnist-cnn")
    started = time.monotonic()
    with pytest.raises(RegistryError, match=r"no MLflow server answers at http://127\.0\.0\.1:"
                                            r"\d+: check REGISTRY_URL .*`mlflow server` runs"):
        registry.aliases()
    assert time.monotonic() - started < 10


def test_a_file_store_works_as_mlflow_runs_it_and_says_what_it_needs_otherwise(
        tmp_path, checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = (tmp_path / "mlruns").as_uri()
    url = f"mlflow+{store}"
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    with pytest.raises(RegistryError, match=f"set MLFLOW_TRACKING_URI={store} as well"):
        open_registry(url).versions()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    with pytest.raises(RegistryError, match=r"MLflow cannot open file://.*MLFLOW_ALLOW_FILE_STORE"):
        open_registry(url).versions()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    registry = open_registry(url)
    assert registry.publish(checkpoint, {}) == "v1"
    assert registry.checkpoint_path("production").read_bytes() == b"weights-1"
    assert not (tmp_path / "mlflow.db").exists()  # nothing opened in the working folder
