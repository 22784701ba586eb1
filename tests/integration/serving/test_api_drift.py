"""Drift monitoring through the service, on real shifts: the test model (90% right on MNIST) is
published as a release publishes it, its drift reference recorded on 1,000 mnist-5k digits it
never saw, then sent 1,000 inputs through POST /predict/batch. MNIST test digits (other digits
from the same source) must not alert; Fashion-MNIST images and MNIST digits with inverted
contrast must. Run with -s to print every signal's figures (docs/drift.md quotes them).

The window is shared by every instance through Redis, and Redis down costs only the sharing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from support.app import serving, settings_for
from support.models import held_out_digits, unseen_training_digits
from support.registry import publish, publish_release

from service.ml.data import DataError, load_dataset

WINDOW = 1000
BATCH = 250


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory, trained_checkpoint: Path) -> Path:
    """A registry whose production v1 is the test model with its release files."""
    registry = tmp_path_factory.mktemp("drift") / "models"
    publish_release(registry, trained_checkpoint, *unseen_training_digits(WINDOW))
    return registry


def mnist_test_digits() -> np.ndarray:
    return held_out_digits(WINDOW)[0]


def fashion_mnist_images() -> np.ndarray:
    try:
        return load_dataset("fashion-mnist", test_limit=WINDOW).test_images
    except DataError as exc:
        pytest.fail(f"{exc}: install Debian's dataset-fashion-mnist (`make system-deps`)")


async def send(client, images: np.ndarray) -> None:
    for start in range(0, len(images), BATCH):
        items = [{"pixels": image.ravel().tolist()} for image in images[start:start + BATCH]]
        answer = await client.post("/predict/batch", json={"items": items})
        assert answer.status_code == 200, answer.text


async def drift_of(settings, images: np.ndarray, case: str) -> dict:
    async with serving(settings) as (_, client):
        await send(client, images)
        report = (await client.get("/drift")).json()
    print_figures(case, report)
    return report


def print_figures(case: str, report: dict) -> None:
    print(f"\n{case}: {report['verdict']} ({report['window']['filled']}/"
          f"{report['window']['size']} inputs)")
    for name, signal in report["signals"].items():
        print(f"  {name:<16} PSI {signal['psi']:7.3f}  {signal['test']:<18} "
              f"{signal['statistic']:9.3f}  p {signal['p_value']:.2e}  {signal['level']}")


def gauges(text: str, version: str = "v1") -> dict[str, float]:
    """The drift gauges of ``version`` in a /metrics body: {"alert": .., "<signal>": psi}."""
    found = {}
    for line in text.splitlines():
        if f'model_version="{version}"' not in line:
            continue
        if line.startswith("lab2prod_drift_alert{"):
            found["alert"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("lab2prod_drift_psi{"):
            signal = line.split('signal="', 1)[1].split('"', 1)[0]
            found[signal] = float(line.rsplit(" ", 1)[1])
    return found


# --- real shifts -------------------------------------------------------------------------------


async def test_mnist_test_digits_raise_no_alert(released):
    report = await drift_of(settings_for(released), mnist_test_digits(), "MNIST test digits")
    assert report["window"] == {"size": WINDOW, "filled": WINDOW, "shared": False}
    assert report["verdict"] == "ok" and report["alert"] is False
    assert {signal["level"] for signal in report["signals"].values()} == {"ok"}


async def test_fashion_mnist_images_raise_an_alert(released):
    report = await drift_of(settings_for(released), fashion_mnist_images(), "Fashion-MNIST")
    assert report["verdict"] == "alert" and report["alert"] is True
    for name in ("mean_ink", "ink_box", "lit_fraction"):
        assert report["signals"][name]["level"] == "alert", name


async def test_mnist_digits_with_inverted_contrast_raise_an_alert(released):
    inverted = 255 - mnist_test_digits()
    report = await drift_of(settings_for(released), inverted, "MNIST, inverted contrast")
    assert report["verdict"] == "alert" and report["alert"] is True
    assert report["signals"]["mean_ink"]["window_mean"] > 0.8 > 0.2 > \
        report["signals"]["mean_ink"]["reference_mean"]


# --- the window, the gauges, versions without a reference ----------------------------------------


async def test_the_verdict_and_the_gauges_wait_for_a_full_window(released):
    images = fashion_mnist_images()
    async with serving(settings_for(released)) as (_, client):
        await send(client, images[:WINDOW // 2])
        filling = (await client.get("/drift")).json()
        metrics_filling = (await client.get("/metrics")).text
        await send(client, images[WINDOW // 2:])
        full = (await client.get("/drift")).json()
        metrics_full = (await client.get("/metrics")).text
    assert filling["verdict"] == "filling" and filling["alert"] is None
    assert filling["window"]["filled"] == WINDOW // 2 and filling["signals"]  # figures so far
    assert gauges(metrics_filling) == {}
    assert full["verdict"] == "alert"
    assert gauges(metrics_full) == {
        "alert": 1.0, **{name: signal["psi"] for name, signal in full["signals"].items()}}


async def test_the_window_holds_the_latest_inputs_so_the_alert_clears(released):
    async with serving(settings_for(released)) as (_, client):
        await send(client, fashion_mnist_images())
        shifted = (await client.get("/drift")).json()
        await send(client, mnist_test_digits())
        recovered = (await client.get("/drift")).json()
        metrics = (await client.get("/metrics")).text
    assert (shifted["verdict"], recovered["verdict"]) == ("alert", "ok")
    assert gauges(metrics)["alert"] == 0.0


async def test_inputs_sent_through_the_v2_protocol_are_watched_too(released):
    digits = mnist_test_digits()[:100]
    body = {"inputs": [{"name": "pixels", "shape": [100, 784], "datatype": "UINT8",
                        "data": digits.ravel().tolist()}]}
    async with serving(settings_for(released, drift_window=100)) as (_, client):
        answer = await client.post("/v2/models/mnist-cnn/infer", json=body)
        report = (await client.get("/drift")).json()
    assert answer.status_code == 200, answer.text
    assert report["window"] == {"size": 100, "filled": 100, "shared": False}
    assert report["verdict"] == "ok"  # 100 real digits, from the reference's source


async def test_a_version_published_without_a_reference_has_no_drift_figures(tmp_path, released,
                                                                            trained_checkpoint):
    registry = tmp_path / "models"
    publish(registry, trained_checkpoint)  # v1: as versions were published before references
    async with serving(settings_for(registry)) as (_, client):
        await send(client, mnist_test_digits())
        report = (await client.get("/drift")).json()
        metrics = (await client.get("/metrics")).text
    assert report["verdict"] == "no reference" and report["reference"] is None
    assert report["signals"] == {} and report["window"]["filled"] == 0
    assert gauges(metrics) == {}


async def test_a_pinned_version_reports_its_own_window(tmp_path, trained_checkpoint):
    registry = tmp_path / "models"
    publish(registry, trained_checkpoint)
    publish_release(registry, trained_checkpoint, *unseen_training_digits(WINDOW),
                    aliases=("candidate",))
    async with serving(settings_for(registry)) as (_, client):
        items = [{"pixels": image.ravel().tolist()} for image in mnist_test_digits()[:100]]
        await client.post("/predict/batch", json={"items": items}, params={"version": "v2"})
        default = (await client.get("/drift")).json()
        pinned = (await client.get("/drift", params={"version": "candidate"})).json()
        unknown = await client.get("/drift", params={"version": "v9"})
    assert (default["model_version"], default["verdict"]) == ("v1", "no reference")
    assert (pinned["model_version"], pinned["verdict"]) == ("v2", "filling")
    assert pinned["window"]["filled"] == 100 and pinned["reference"] == {"digits": WINDOW}
    assert unknown.status_code == 404


# --- one window for every instance, through Redis ------------------------------------------------


@pytest.mark.redis
async def test_two_app_instances_fill_one_window_through_redis(released, redis_url):
    settings = settings_for(released, redis_url=redis_url)
    digits = mnist_test_digits()
    async with serving(settings) as (_, first), serving(settings) as (_, second):
        await send(first, digits[:WINDOW // 2])
        await send(second, digits[WINDOW // 2:])
        from_second = (await second.get("/drift")).json()  # pushes what second holds
        from_first = (await first.get("/drift")).json()
    print_figures("MNIST test digits, two instances through Redis", from_first)
    assert from_first["window"] == {"size": WINDOW, "filled": WINDOW, "shared": True}
    assert from_first["verdict"] == "ok"
    assert from_second["window"]["filled"] >= WINDOW // 2


@pytest.mark.redis
async def test_redis_down_costs_nothing_but_the_sharing(released, redis_server):
    redis_server.client().flushall()
    settings = settings_for(released, redis_url=redis_server.url, breaker_reset_s=30.0)
    digits = fashion_mnist_images()
    try:
        async with serving(settings) as (_, client):
            await send(client, digits[:WINDOW // 2])
            shared = (await client.get("/drift")).json()
            redis_server.stop()
            started = time.perf_counter()
            await send(client, digits[WINDOW // 2:])
            sent_s = time.perf_counter() - started
            started = time.perf_counter()
            alone = (await client.get("/drift")).json()
            report_s = time.perf_counter() - started
    finally:
        redis_server.start()
    assert shared["window"] == {"size": WINDOW, "filled": WINDOW // 2, "shared": True}
    assert alone["window"] == {"size": WINDOW, "filled": WINDOW, "shared": False}
    assert alone["verdict"] == "alert"  # this instance's own window: nothing lost
    assert report_s < 1.0 and sent_s < 10.0, (report_s, sent_s)
