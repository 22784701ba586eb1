"""Shared fixtures: a tiny IDX data directory of real digits, and a small trained checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_TRAIN, TINY_TEST = 200, 100


@pytest.fixture(scope="session")
def idx_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the four MNIST IDX files (gzip) holding 200 train / 100 test real digits."""
    from service.ml.data import IDX_FILES, load_dataset, write_idx

    source = load_dataset("mnist-5k", limit=TINY_TRAIN, test_limit=TINY_TEST)
    root = tmp_path_factory.mktemp("idx")
    arrays = {
        "train_images": source.train_images,
        "train_labels": source.train_labels,
        "test_images": source.test_images,
        "test_labels": source.test_labels,
    }
    for key, stem in IDX_FILES.items():
        write_idx(root / f"{stem}.gz", arrays[key])
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, idx_data_dir: Path) -> Path:
    """A checkpoint trained for one epoch on the tiny IDX digits, written by write_run."""
    from service.ml.train import TrainConfig, train, write_run

    run_dir = tmp_path_factory.mktemp("tiny-run")
    config = TrainConfig(
        dataset="mnist", data_dir=str(idx_data_dir), epochs=1, run_dir=str(run_dir)
    )
    write_run(train(config, progress=False))
    return run_dir / "model.safetensors"
