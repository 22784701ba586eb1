"""``lab2prod bench --runtimes``: the release's runtime measurement, written up as a table."""

from __future__ import annotations

from service.bench.runtimes import markdown
from service.inference.selection import select_runtime
from service.inference.verification import RuntimeCriteria
from service.ml.checkpoint import load_checkpoint
from service.ml.data import load_dataset


def test_the_report_shows_every_variant_against_eager_and_the_resulting_choice(tiny_checkpoint):
    dataset = load_dataset("mnist-5k", test_limit=100)
    selection, _ = select_runtime(
        load_checkpoint(tiny_checkpoint), dataset.test_images, dataset.test_labels,
        criteria=RuntimeCriteria(max_probability_diff=1e-3), seconds=0.02,
        names=["eager", "onnx", "onnx-int8"],
    )
    data = {"context": {"dataset": "mnist-5k", "cpu": 0, "seconds": 0.02},
            **selection.as_dict(), "auto_preference_cpu": ["onnx-int8", "onnx", "eager"]}
    text = markdown(data)
    assert "| eager | " in text and " | 1.00x | 100.0% (0 differ) | +0.0000 |" in text
    assert "| onnx-int8 | " in text and "misses: max |dp|" in text
    assert f"would serve **`{selection.chosen}`**" in text
    assert ("an inexact variant (max |dp| above 0.0001: int8) ranks ahead of an exact one only "
            "when 1.25x as fast") in text
    assert "onnx-int8 → onnx → eager" in text
