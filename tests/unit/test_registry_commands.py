"""`lab2prod models list | show | promote | rollback` on the registry of the current folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.cli import main
from service.registry import ModelRegistry, open_registry
from service.settings import get_settings


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelRegistry:
    """A project folder with two published versions; settings read from it."""
    monkeypatch.chdir(tmp_path)
    for name in ("REGISTRY_URL", "MODEL_NAME"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    checkpoint = tmp_path / "candidate.safetensors"
    checkpoint.write_bytes(b"weights")
    registry = open_registry("models", "mnist-cnn")
    for run_id, accuracy, runtime in (("run-a", 0.9712, "onnx"), ("run-b", 0.9801, "onnx-int8")):
        card = {"run_id": run_id, "metrics": {"candidate": {"accuracy": accuracy}},
                "data": {"evaluation": {"name": "mnist-5k"}}, "runtimes": {"chosen": runtime}}
        registry.publish(checkpoint, card)
    yield registry
    get_settings.cache_clear()


def test_list_shows_versions_with_aliases_accuracy_and_the_runtime_the_release_chose(
    project, capsys
):
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["VERSION", "ALIASES", "ACCURACY", "DATASET", "RUNTIME"]
    assert lines[1].split()[:6] == ["v1", "previous", "0.9712", "mnist-5k", "onnx", "run-a"]
    assert lines[2].split()[:6] == ["v2", "production", "0.9801", "mnist-5k", "onnx-int8",
                                    "run-b"]


def test_show_prints_the_model_card_of_a_version_or_alias(project, capsys):
    assert main(["models", "show", "production"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["version"] == "v2" and card["run_id"] == "run-b"


def test_promote_moves_production_and_keeps_previous(project, capsys):
    assert main(["models", "promote", "v1"]) == 0
    assert "production: v2 -> v1" in capsys.readouterr().out
    assert project.aliases() == {"production": "v1", "previous": "v2"}


def test_promote_to_a_named_alias_leaves_production_alone(project):
    assert main(["models", "promote", "v1", "--alias", "candidate"]) == 0
    assert project.aliases() == {"production": "v2", "previous": "v1", "candidate": "v1"}


def test_rollback_restores_the_previous_version(project, capsys):
    assert main(["models", "rollback"]) == 0
    assert "production: v2 -> v1" in capsys.readouterr().out
    assert project.resolve("production") == "v1"


def test_unknown_version_exits_non_zero_with_the_known_ones(project, capsys):
    assert main(["models", "show", "v7"]) == 1
    assert "known versions: v1, v2" in capsys.readouterr().err
    assert main(["models", "promote", "v7"]) == 1
    assert project.aliases()["production"] == "v2"


def test_rollback_with_nothing_to_roll_back_to_exits_non_zero(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REGISTRY_URL", raising=False)
    get_settings.cache_clear()
    try:
        assert main(["models", "rollback"]) == 1
        assert "nothing to roll back to" in capsys.readouterr().err
        assert not (tmp_path / "models").exists()
        assert main(["models", "list"]) == 0
        assert "run `lab2prod release`" in capsys.readouterr().out
    finally:
        get_settings.cache_clear()
