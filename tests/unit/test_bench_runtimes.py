"""The runtime benchmark's choice of ``runtime="auto"`` and its report."""

from __future__ import annotations

from service.bench.runtimes import RuntimeResult, choose_default, markdown, report


def result(name: str, us: float, *, eligible: bool = True, built: str | None = None,
           error: str = "") -> RuntimeResult:
    return RuntimeResult(
        name=name, built=built if built is not None else name, build_s=0.1, b1_us=us * 2,
        b32_us_per_image=us, b32_images_per_s=1e6 / us if us else 0.0, accuracy=0.97,
        agreement=1.0 if eligible else 0.98, disagreements=0 if eligible else 20,
        accuracy_drop_points=0.0, eligible=eligible, error=error,
    )


def test_default_is_the_fastest_eligible_variant():
    results = [result("eager", 500), result("onnx", 250), result("onnx-int8", 90)]
    assert choose_default(results) == "onnx-int8"


def test_a_faster_variant_that_disagrees_with_eager_is_not_chosen():
    results = [result("eager", 500), result("onnx", 250), result("onnx-int8", 90, eligible=False)]
    assert choose_default(results) == "onnx"


def test_a_variant_that_fell_back_to_eager_is_not_chosen_under_its_own_name():
    results = [result("eager", 500), result("compile", 100, built="eager")]
    assert choose_default(results) == "eager"


def test_nothing_eligible_means_eager():
    assert choose_default([result("onnx", 100, eligible=False)]) == "eager"


def test_report_lists_every_variant_with_its_speedup_and_unavailable_ones():
    results = [result("eager", 500), result("onnx-int8", 100),
               result("onnx", 0, eligible=False, built="", error="ImportError: onnxruntime")]
    data = report(results, {"dataset": "mnist-5k", "test_size": 1000, "cpu": 0, "seconds": 1})
    text = markdown(data)
    assert data["chosen"] == "onnx-int8" and data["code_agrees"] is True
    assert "| onnx-int8 | 200 | 100 | 10000 | 5.00x |" in text
    assert "unavailable: ImportError: onnxruntime" in text
    assert "`onnx-int8`" in text
