"""The drawing page in a real browser (Debian's Chromium driven by Playwright) against a real
`lab2prod serve`: strokes drawn with the mouse get a prediction with its ten bars, the version
and the time; an uploaded PNG of a real digit too. A screenshot of each is kept (the path is
printed; LAB2PROD_ARTIFACTS=<folder> keeps them there)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.models import direct_predictions, held_out_digits
from support.registry import publish
from support.servers import ServeProcess
from support.uploads import scanned_png

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def server(trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServeProcess]:
    folder = tmp_path_factory.mktemp("page")
    publish(folder / "models", trained_checkpoint)
    running = ServeProcess(folder / "models", folder)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (make system-deps)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox"])
        yield launched
        launched.close()


def keep(screenshot: Path) -> None:
    print(f"screenshot: {screenshot}")
    if os.environ.get("LAB2PROD_ARTIFACTS"):
        folder = Path(os.environ["LAB2PROD_ARTIFACTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, folder / screenshot.name)


def draw(page, strokes: list[list[tuple[int, int]]]) -> None:
    """Each stroke a polyline in canvas pixels (280x280), drawn with the mouse."""
    box = page.locator("#pad").bounding_box()
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x, box["y"] + y)
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x, box["y"] + y, steps=8)
        page.mouse.up()


def answer(page) -> dict:
    page.wait_for_function("document.querySelector('#digit').textContent !== ''")
    bars = page.locator(".bar")
    return {
        "digit": int(page.locator("#digit").text_content()),
        "meta": page.locator("#meta").text_content(),
        "version": page.locator("#meta").get_attribute("data-version"),
        "bars": bars.count(),
        "top": page.locator(".bar.top").get_attribute("data-class"),
        "shares": [bars.nth(k).locator(".p").text_content() for k in range(bars.count())],
    }


def test_a_digit_drawn_with_the_mouse_is_classified_with_its_bars_version_and_time(
    server, browser, tmp_path
):
    page = browser.new_page(viewport={"width": 900, "height": 600})
    page.goto(server.url + "/")
    draw(page, [[(90, 70), (200, 70), (120, 230)]])  # a seven: the bar, then the stem
    shown = answer(page)
    page.screenshot(path=tmp_path / "page-drawn.png")
    keep(tmp_path / "page-drawn.png")
    assert shown["digit"] == 7
    assert shown["bars"] == 10 and shown["top"] == "7"
    assert shown["version"] == "v1" and "version v1" in shown["meta"]
    assert shown["meta"].endswith(" ms")
    assert all(share.endswith("%") for share in shown["shares"])
    page.click("#clear")
    assert page.locator("#digit").text_content() == ""
    page.close()


def test_an_uploaded_photo_of_a_real_digit_is_classified_as_the_model_does(
    server, browser, trained_checkpoint, tmp_path
):
    images, _ = held_out_digits(1)
    (expected,) = direct_predictions(trained_checkpoint, images).tolist()
    upload = tmp_path / "digit.png"
    upload.write_bytes(scanned_png(images[0], side=200))
    page = browser.new_page(viewport={"width": 900, "height": 600})
    page.goto(server.url + "/")
    page.set_input_files("#file", str(upload))
    shown = answer(page)
    page.screenshot(path=tmp_path / "page-upload.png")
    keep(tmp_path / "page-upload.png")
    assert shown["digit"] == expected and shown["version"] == "v1"
    page.close()


def test_a_refused_upload_shows_the_services_reason(server, browser, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_bytes(b"these are not pixels")
    page = browser.new_page()
    page.goto(server.url + "/")
    page.set_input_files("#file", str(not_an_image))
    page.wait_for_function("document.querySelector('#error').textContent !== ''")
    assert "image" in page.locator("#error").text_content()
    assert page.locator("#digit").text_content() == ""
    page.close()
