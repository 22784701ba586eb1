"""The registry: immutable versions, aliases moved atomically, rollback, conditional publish.

One specification for every backend: a folder, and MLflow (its own SQLite store, no server;
what is MLflow's alone is in test_registry_mlflow.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from service.registry import ModelRegistry, RegistryError, open_registry


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "candidate.safetensors"
    path.write_bytes(b"weights-1")
    return path


@pytest.fixture
def folder_registry(tmp_path: Path) -> ModelRegistry:
    return open_registry(tmp_path / "models", "mnist-cnn")


@pytest.fixture(params=["folder", "mlflow"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> ModelRegistry:
    if request.param == "folder":
        return open_registry(tmp_path / "models", "mnist-cnn")
    store = request.getfixturevalue("mlflow_store")
    return open_registry(f"mlflow+{store}", f"model-{uuid.uuid4().hex[:8]}")


def test_first_publish_is_v1_and_moves_production(registry, checkpoint):
    assert registry.publish(checkpoint, {"run_id": "r1"}) == "v1"
    assert registry.versions() == ["v1"]
    assert registry.aliases() == {"production": "v1"}
    assert registry.checkpoint_path("production").read_bytes() == b"weights-1"
    card = registry.card("v1")
    assert card["run_id"] == "r1" and card["version"] == "v1"
    assert card["model"] == registry.model_name
    assert card["checkpoint_sha256"].startswith("sha256:")


def test_second_publish_moves_production_and_keeps_the_old_one_as_previous(registry, checkpoint):
    registry.publish(checkpoint, {})
    assert registry.publish(checkpoint, {}) == "v2"
    assert registry.aliases() == {"production": "v2", "previous": "v1"}


def test_publishing_under_another_alias_leaves_production_alone(registry, checkpoint):
    registry.publish(checkpoint, {})
    registry.publish(checkpoint, {}, aliases=("candidate",))
    assert registry.aliases() == {"production": "v1", "candidate": "v2"}


def test_rollback_restores_the_previous_version_and_can_be_undone(registry, checkpoint):
    registry.publish(checkpoint, {})
    registry.publish(checkpoint, {})
    assert registry.rollback() == "v1"
    assert registry.aliases() == {"production": "v1", "previous": "v2"}
    assert registry.rollback() == "v2"


def test_rollback_with_nothing_to_roll_back_to_is_an_error(registry, checkpoint):
    registry.publish(checkpoint, {})
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()


def test_promote_moves_an_alias_and_refuses_unknown_versions(registry, checkpoint):
    registry.publish(checkpoint, {})
    registry.publish(checkpoint, {})
    assert registry.promote("v1") == "v1"
    assert registry.aliases() == {"production": "v1", "previous": "v2"}
    assert registry.promote("production", "stable") == "v1"
    with pytest.raises(RegistryError, match="known versions: v1, v2"):
        registry.promote("v9")
    with pytest.raises(RegistryError, match="not allowed"):
        registry.promote("v1", "v3")


def test_conditional_publish_refuses_when_production_moved(registry, checkpoint):
    registry.publish(checkpoint, {})
    registry.publish(checkpoint, {})
    with pytest.raises(RegistryError, match="moved to v2 while this release was compared"):
        registry.publish(checkpoint, {}, expect={"production": "v1"})
    assert registry.versions() == ["v1", "v2"]
    assert registry.publish(checkpoint, {}, expect={"production": "v2"}) == "v3"


def test_an_empty_registry_says_how_to_get_a_model(registry):
    assert registry.versions() == [] and registry.aliases() == {}
    with pytest.raises(RegistryError, match="lab2prod release"):
        registry.resolve("production")


def test_a_corrupt_aliases_file_is_reported_not_guessed(folder_registry, checkpoint):
    folder_registry.publish(checkpoint, {})
    Path(folder_registry.root, "aliases.json").write_text("{not json")
    with pytest.raises(RegistryError, match="corrupt"):
        folder_registry.aliases()


def test_published_versions_are_not_changed_by_later_publishes(registry, checkpoint, tmp_path):
    registry.publish(checkpoint, {"run_id": "first"})
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"weights-2")
    registry.publish(other, {"run_id": "second"})
    assert registry.checkpoint_path("v1").read_bytes() == b"weights-1"
    assert registry.card("v1")["run_id"] == "first"
    assert registry.aliases()["production"] == "v2"


def test_exported_artefacts_are_published_beside_the_checkpoint(registry, checkpoint, tmp_path):
    artefact = tmp_path / "model.0123456789ab.int8.onnx"
    artefact.write_bytes(b"graph")
    registry.publish(checkpoint, {}, artefacts=[artefact])
    folder = registry.checkpoint_path("production").parent
    assert (folder / artefact.name).read_bytes() == b"graph"


def test_an_artefact_may_not_replace_the_checkpoint(registry, checkpoint, tmp_path):
    impostor = tmp_path / "model.safetensors"
    impostor.write_bytes(b"not the weights")
    with pytest.raises(RegistryError, match="overwrite"):
        registry.publish(checkpoint, {}, artefacts=[impostor])
    assert registry.versions() == []


def test_a_remote_registry_fetches_the_whole_version(tmp_path, checkpoint):
    remote = open_registry(f"memory://{tmp_path.name}/models", "mnist-cnn")
    artefact = tmp_path / "model.0123456789ab.onnx"
    artefact.write_bytes(b"graph")
    remote.publish(checkpoint, {}, artefacts=[artefact])
    local = remote.checkpoint_path("production")
    assert local.read_bytes() == b"weights-1"
    assert (local.parent / artefact.name).read_bytes() == b"graph"


def test_the_backend_is_chosen_by_the_urls_scheme(tmp_path):
    from service.registry import FolderRegistry

    assert isinstance(open_registry(tmp_path / "models"), FolderRegistry)
    assert isinstance(open_registry(f"file://{tmp_path}/models"), FolderRegistry)
    assert isinstance(open_registry("memory://bucket/models"), FolderRegistry)


def test_an_unknown_scheme_is_refused_with_the_ones_that_work():
    with pytest.raises(RegistryError, match=r"no registry backend serves nope:// URLs.*s3://"):
        open_registry("nope://somewhere/models")
