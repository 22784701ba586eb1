"""The training loop: the recipe's parameters, determinism, and the run record it writes."""

import json
from dataclasses import asdict

import pytest

from service.ml.checkpoint import load_checkpoint
from service.ml.train import TrainConfig, train, write_run

EPOCH_KEYS = {"epoch", "train_loss", "test_loss", "test_accuracy", "images_per_second", "seconds"}


def _tiny(idx_data_dir, tmp_path, **overrides):
    params = {
        "dataset": "mnist",
        "data_dir": str(idx_data_dir),
        "epochs": 2,
        "limit": 64,
        "device": "cpu",
        "run_dir": str(tmp_path / "run"),
    }
    return TrainConfig(**{**params, **overrides})


def _learning_metrics(result):
    return [(e["train_loss"], e["test_loss"], e["test_accuracy"]) for e in result.epochs]


def test_config_defaults_are_the_notebook_parameters():
    assert asdict(TrainConfig()) == {
        "dataset": "mnist-5k",
        "data_dir": "",
        "download": False,
        "epochs": 10,
        "batch_size": 64,
        "lr": 1.0,
        "gamma": 0.7,
        "seed": 1,
        "device": "auto",
        "limit": 0,
        "augment": False,
        "run_dir": "runs/notebook",
    }


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", 0, "epochs"),
        ("lr", -0.5, "lr"),
        ("gamma", 1.5, "gamma"),
        ("limit", -1, "limit"),
        ("dataset", "cifar", "mnist-5k"),
    ],
)
def test_bad_parameters_are_refused_with_what_to_use(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_same_seed_gives_identical_metrics_twice(idx_data_dir, tmp_path):
    first = train(_tiny(idx_data_dir, tmp_path), progress=False)
    second = train(_tiny(idx_data_dir, tmp_path), progress=False)
    assert _learning_metrics(first) == _learning_metrics(second)
    different = train(_tiny(idx_data_dir, tmp_path, seed=2, epochs=1), progress=False)
    assert _learning_metrics(different)[0] != _learning_metrics(first)[0]


def test_same_seed_with_augmentation_gives_identical_metrics_twice(idx_data_dir, tmp_path):
    config = _tiny(idx_data_dir, tmp_path, augment=True, epochs=1)
    assert _learning_metrics(train(config, progress=False)) == _learning_metrics(
        train(config, progress=False)
    )


def test_run_writes_a_loadable_checkpoint_and_the_contract_record(idx_data_dir, tmp_path):
    config = _tiny(idx_data_dir, tmp_path, epochs=1)
    result = train(config, progress=False)
    run_dir = write_run(result)

    record = json.loads((run_dir / "train.json").read_text())
    assert set(record) >= {
        "params",
        "seed",
        "device",
        "dataset",
        "git",
        "metrics",
        "checkpoint",
        "library_versions",
    }
    assert record["params"] == asdict(config)
    assert record["seed"] == 1 and record["device"] == "cpu"
    assert record["dataset"]["name"] == "mnist" and record["dataset"]["train_size"] == 64
    assert record["dataset"]["fingerprint"].startswith("sha256:")
    assert set(record["git"]) == {"commit", "dirty"}
    assert record["checkpoint"] == "model.safetensors"
    metrics = record["metrics"]
    assert [set(epoch) >= EPOCH_KEYS for epoch in metrics["epochs"]] == [True]
    assert metrics["test_accuracy"] == metrics["epochs"][-1]["test_accuracy"]
    assert metrics["images_per_second"] > 0

    loaded = load_checkpoint(run_dir / record["checkpoint"])
    assert loaded.metadata["params"] == record["params"]
    assert loaded.metadata["dataset"] == record["dataset"]
    assert loaded.metadata["metrics"]["epochs"] == metrics["epochs"]
    assert loaded.metadata["seed"] == 1
    assert loaded.metadata["git"] == record["git"]
    assert loaded.class_names == [str(i) for i in range(10)]


def test_a_few_epochs_on_real_digits_learn_something(idx_data_dir, tmp_path):
    result = train(_tiny(idx_data_dir, tmp_path, limit=0, epochs=2), progress=False)
    losses = [e["train_loss"] for e in result.epochs]
    assert losses[-1] < losses[0]
    assert result.test_accuracy > 0.25  # 200 digits, 2 epochs: well above chance (0.1)
