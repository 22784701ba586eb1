"""Test models: trained by the package's own ``train`` and ``write_run`` (the recipe the release
uses), cached on disk by their parameters; untrained ones; and held-out digits to ask them about.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from service.inference.loader import load_runtime
from service.ml.checkpoint import save_checkpoint
from service.ml.data import load_dataset
from service.ml.model import build_model
from service.ml.preprocess import normalize
from service.ml.records import CHECKPOINT_FILE
from service.ml.train import TrainConfig, train, write_run

DATASET = "mnist-5k"  # embedded: no download, no data folder


def trained_checkpoint(folder: Path, *, seed: int = 0, digits: int = 1000, epochs: int = 2) -> Path:
    """The CNN trained on ``digits`` training digits of mnist-5k (a seeded, stratified subset)
    for ``epochs``, as the run folder ``write_run`` writes, under ``folder`` (reused when there).

    The default, measured on 2 CPU cores: 90.1% right on the 1,000 mnist-5k test digits, in
    3-5 s (1.5 s of it the training loop). Seed 1 reaches 90.4%, and the two disagree on 85 of
    those 1,000 digits: versions that answer differently, as a pinning test needs.
    """
    run_dir = Path(folder) / f"{DATASET}-{digits}digits-{epochs}epochs-seed{seed}"
    checkpoint = run_dir / CHECKPOINT_FILE
    if not checkpoint.exists():  # written atomically: there means complete
        config = TrainConfig(
            dataset=DATASET, limit=digits, epochs=epochs, seed=seed, device="cpu",
            run_dir=str(run_dir),
        )
        write_run(train(config, progress=False))
    return checkpoint


def fresh_checkpoint(path: Path, seed: int) -> Path:
    """An untrained CNN (distinct weights per seed): enough for everything but accuracy."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model("mnist-cnn")
    return save_checkpoint(path, model)


def held_out_digits(count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` mnist-5k test digits (uint8 [N,28,28]) and their labels, cycling the split of
    1,000 when ``count`` is larger. No test model has trained on them."""
    dataset = load_dataset(DATASET)
    index = np.arange(count) % len(dataset.test_images)
    return dataset.test_images[index], dataset.test_labels[index]


def unseen_training_digits(count: int, trained_on: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """``count`` mnist-5k training digits, the same number of each class, that a test model
    trained on ``trained_on`` of them (``trained_checkpoint``) never saw: real digits from the
    same source as ``held_out_digits``, and other ones."""
    everything, seen = load_dataset(DATASET), load_dataset(DATASET, limit=trained_on)
    trained = {image.tobytes() for image in seen.train_images}
    unseen = np.array([index for index, image in enumerate(everything.train_images)
                       if image.tobytes() not in trained])
    labels = everything.train_labels[unseen]
    per_class = count // 10
    chosen = np.concatenate([unseen[labels == label][:per_class] for label in range(10)])
    if len(chosen) < count:
        raise ValueError(f"mnist-5k has {len(chosen)} such digits, not {count}")
    return everything.train_images[chosen], everything.train_labels[chosen]


def direct_predictions(checkpoint: Path, images: np.ndarray) -> np.ndarray:
    """The digits the model says for ``images`` when called directly (eager, CPU): the reference
    every route's answers are compared with."""
    model = load_runtime(checkpoint, runtime="eager", device="cpu")
    return model.runtime.predict_proba(normalize(images, model.normalization)).argmax(axis=1)
