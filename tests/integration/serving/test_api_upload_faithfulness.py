"""Preprocessing faithfulness: dataset digits rendered as user uploads (white or black canvas,
off-centre, scaled to 200-400 px, RGB, JPEG) must be classified about as well as the raw
28x28 arrays. Both accuracies are printed (run with -s to see them)."""

from __future__ import annotations

import numpy as np
import torch
from support.models import held_out_digits
from support.uploads import render_upload

from service.api.inputs import digit_from_image
from service.inference.loader import load_runtime
from service.ml.preprocess import normalize

DIGITS = 500
MAX_GAP = 0.03  # upload accuracy may trail the raw arrays' by at most 3 points


def accuracy(model, images: np.ndarray, labels: np.ndarray) -> float:
    probabilities = model.runtime.predict_proba(normalize(images, model.normalization))
    return float((probabilities.argmax(axis=1) == labels).mean())


def test_rendered_uploads_are_classified_about_as_well_as_the_raw_arrays(trained_checkpoint):
    torch.set_num_threads(1)
    images, labels = held_out_digits(DIGITS)
    rng = np.random.default_rng(2024)
    uploads = np.stack(
        [
            digit_from_image(
                render_upload(image, rng, dark_on_light=index % 4 != 3),  # 1 in 4: light on dark
                max_pixels=25_000_000,
                content_type="image/jpeg",
            )
            for index, image in enumerate(images)
        ]
    )
    model = load_runtime(trained_checkpoint, runtime="eager", device="cpu")
    raw_accuracy = accuracy(model, images, labels)
    upload_accuracy = accuracy(model, uploads, labels)
    print(
        f"\npreprocessing faithfulness on {DIGITS} mnist-5k test digits: "
        f"raw arrays {raw_accuracy:.1%}, rendered JPEG uploads {upload_accuracy:.1%}"
    )
    assert raw_accuracy > 0.8, "the test model is too weak to measure anything"
    assert upload_accuracy >= raw_accuracy - MAX_GAP
