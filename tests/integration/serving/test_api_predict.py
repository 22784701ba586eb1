"""POST /predict and /predict/batch on the real app (in-process HTTP): the contract, caching,
every bad input, and the batcher staying healthy afterwards."""

from __future__ import annotations

import gzip
import io

import numpy as np
import orjson
import pytest
from PIL import Image
from support.app import serving, settings_for
from support.registry import publish
from support.uploads import encode, render_upload

from service.api.routes import predict as predict_routes
from service.ml.data import load_dataset
from service.ml.preprocess import image_to_mnist

FIELDS = {"digit", "confidence", "probabilities", "model_version"}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_dataset("mnist-5k", test_limit=50)
    return data.test_images, data.test_labels


async def test_json_pixels_get_exactly_the_contract_fields_and_a_request_id(registry_dir, digits):
    images, _ = digits
    async with serving(settings_for(registry_dir)) as (_, client):
        flat = await client.post("/predict", json={"pixels": images[0].ravel().tolist()})
        rows = await client.post("/predict", json={"pixels": images[0].tolist()})
    assert flat.status_code == 200, flat.text
    body = flat.json()
    assert set(body) == FIELDS
    assert isinstance(body["digit"], int) and 0 <= body["digit"] <= 9
    assert len(body["probabilities"]) == 10
    assert abs(sum(body["probabilities"]) - 1) < 1e-4
    assert body["confidence"] == max(body["probabilities"])
    assert body["probabilities"].index(body["confidence"]) == body["digit"]
    assert body["model_version"] == "v1"
    assert flat.headers["content-type"] == "application/json"
    assert len(flat.headers["x-request-id"]) >= 8
    assert flat.headers["x-cache"] == "miss"
    assert rows.headers["x-cache"] == "hit", "28 rows of 28 are the same digit as 784 numbers"
    assert rows.json() == body


async def test_a_client_request_id_is_echoed_and_a_bad_one_replaced(registry_dir):
    async with serving(settings_for(registry_dir)) as (_, client):
        mine = await client.get("/health", headers={"X-Request-ID": "trace-42"})
        odd = await client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert mine.headers["x-request-id"] == "trace-42"
    assert odd.headers["x-request-id"] != "bad id\twith spaces"


async def test_the_same_digit_as_json_and_as_png_shares_one_cache_entry(registry_dir, digits):
    images, _ = digits
    rng = np.random.default_rng(7)
    upload_first = render_upload(images[1], rng)
    json_first = render_upload(images[2], rng)
    as_pixels = [image_to_mnist(Image.open(io.BytesIO(d))) for d in (upload_first, json_first)]
    async with serving(settings_for(registry_dir)) as (_, client):
        png = await client.post("/predict", files={"file": ("d.jpg", upload_first, "image/jpeg")})
        same = await client.post("/predict", json={"pixels": as_pixels[0].tolist()})
        pixels = await client.post("/predict", json={"pixels": as_pixels[1].tolist()})
        image = await client.post("/predict", files={"file": ("d.jpg", json_first, "image/jpeg")})
        raw = await client.post(
            "/predict", content=json_first, headers={"content-type": "image/jpeg"}
        )
    assert [r.status_code for r in (png, same, pixels, image, raw)] == [200] * 5
    assert (png.headers["x-cache"], same.headers["x-cache"]) == ("miss", "hit")
    assert (pixels.headers["x-cache"], image.headers["x-cache"]) == ("miss", "hit")
    assert raw.headers["x-cache"] == "hit", "a raw image body is the same digit too"
    assert same.json() == png.json()


async def test_a_repeated_request_is_answered_from_its_bytes_before_any_parsing(
    registry_dir, digits, monkeypatch
):
    images, _ = digits
    parsed: list[str] = []
    real_parse = predict_routes.digit_from_payload

    async def counting_parse(payload, **limits):
        parsed.append(payload.kind)
        return await real_parse(payload, **limits)

    monkeypatch.setattr(predict_routes, "digit_from_payload", counting_parse)
    png = encode(Image.fromarray(images[5]).resize((90, 90)))
    async with serving(settings_for(registry_dir)) as (_, client):
        first = await client.post("/predict", json={"pixels": images[4].ravel().tolist()})
        again = await client.post("/predict", json={"pixels": images[4].ravel().tolist()})
        upload = await client.post("/predict", files={"file": ("a.png", png, "image/png")})
        # Another multipart boundary and file name around the same image bytes.
        reupload = await client.post("/predict", files={"file": ("b.png", png, "image/png")})
    answers = [first, again, upload, reupload]
    assert [answer.headers["x-cache"] for answer in answers] == ["miss", "hit", "miss", "hit"]
    assert again.json() == first.json() and reupload.json() == upload.json()
    assert parsed == ["json", "image"], "a repeat is answered without parsing or decoding"


async def test_a_trained_model_reads_uploaded_digits(trained_checkpoint, tmp_path, digits):
    publish(tmp_path / "models", trained_checkpoint)
    images, labels = digits
    rng = np.random.default_rng(3)
    right = 0
    async with serving(settings_for(tmp_path / "models")) as (_, client):
        for index in range(20):
            data = render_upload(images[index], rng, dark_on_light=index % 2 == 0)
            answer = await client.post("/predict", files={"file": ("d.jpg", data, "image/jpeg")})
            assert answer.status_code == 200, answer.text
            right += answer.json()["digit"] == int(labels[index])
    assert right >= 15, f"only {right}/20 uploads read correctly"


async def test_batch_answers_in_order_with_cached_and_new_items(registry_dir, digits):
    images, _ = digits
    items = [{"pixels": image.ravel().tolist()} for image in images[:5]]
    async with serving(settings_for(registry_dir, batch_max_items=8)) as (_, client):
        single = await client.post("/predict", json=items[2])
        batch = await client.post("/predict/batch", json={"items": items})
        again = await client.post("/predict/batch", json={"items": items})
        too_many = await client.post("/predict/batch", json={"items": items * 2})
        ones = [(await client.post("/predict", json=item)).json() for item in items]
    assert batch.status_code == 200, batch.text
    predictions = batch.json()["predictions"]
    assert predictions == ones, "batch answers match single answers, in order"
    assert predictions[2] == single.json()
    assert again.headers["x-cache"] == "hit" and batch.headers["x-cache"] == "miss"
    assert too_many.status_code == 413 and "at most 8" in too_many.json()["detail"]


async def test_large_bodies_are_gzipped_for_clients_that_accept_it(registry_dir, digits):
    images, _ = digits
    items = [{"pixels": image.ravel().tolist()} for image in images[:20]]
    async with serving(settings_for(registry_dir)) as (_, client):
        answer = await client.post(
            "/predict/batch", json={"items": items}, headers={"Accept-Encoding": "gzip"}
        )
        small = await client.get("/health", headers={"Accept-Encoding": "gzip"})
    assert answer.headers["content-encoding"] == "gzip"
    assert len(answer.json()["predictions"]) == 20  # httpx decompresses transparently
    assert int(answer.headers["content-length"]) < len(orjson.dumps(answer.json()))
    assert "content-encoding" not in small.headers


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (64, 64), "white"), Image.new("RGB", (64, 64), "white")]
    frames[0].paste((0, 0, 0), (20, 10, 30, 54))  # a "1", then a "-"
    frames[1].paste((0, 0, 0), (10, 28, 54, 36))
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    return buffer.getvalue()


def bad_requests() -> list[tuple[str, dict, int, str]]:
    """(name, httpx request kwargs, status, words the message must contain)."""
    zeros = [0] * 784
    digit_png = encode(Image.fromarray(np.pad(np.full((20, 6), 255, np.uint8), 4)))
    jpeg = encode(Image.new("RGB", (200, 200), "white"), "JPEG")
    bomb = encode(Image.new("1", (6000, 6000), 1), optimize=True)  # 36 MP in a few KB
    return [
        ("wrong length", {"json": {"pixels": zeros[:700]}}, 422, "expected 784 numbers"),
        ("ragged rows", {"json": {"pixels": [zeros[:28]] * 27 + [zeros[:5]]}}, 422, "row 27"),
        ("non-number", {"json": {"pixels": [*zeros[:-1], "x"]}}, 422, "must be numbers"),
        ("null", {"json": {"pixels": [*zeros[:-1], None]}}, 422, "must be numbers"),
        ("NaN", {"content": b'{"pixels": [NaN' + b",0" * 783 + b"]}",
                 "headers": {"content-type": "application/json"}}, 400, "NaN"),
        ("too big", {"json": {"pixels": [*zeros[:-1], 300]}}, 422, "0..255"),
        ("negative", {"json": {"pixels": [-3, *zeros[1:]]}}, 422, "0..255"),
        ("no pixels field", {"json": {"image": zeros}}, 422, '"pixels"'),
        ("empty body", {"content": b"", "headers": {"content-type": "application/json"}},
         400, "empty"),
        ("not JSON", {"content": b"pixels=1", "headers": {"content-type": "application/json"}},
         400, "not valid JSON"),
        ("non-image file", {"files": {"file": ("d.png", b"%PDF-1.4 not an image", "image/png")}},
         422, "not a readable"),
        ("truncated image", {"files": {"file": ("d.jpg", jpeg[: len(jpeg) // 3], "image/jpeg")}},
         422, "truncated"),
        ("empty file", {"files": {"file": ("d.png", b"", "image/png")}}, 400, "empty"),
        ("blank image", {"files": {"file": ("d.jpg", jpeg, "image/jpeg")}}, 422, "no digit"),
        ("animated image", {"files": {"file": ("d.gif", animated_gif(), "image/gif")}},
         422, "multi-frame"),
        ("image over the byte limit", {"files": {"file": ("d.png", digit_png + b"\0" * 70_000,
                                                          "image/png")}}, 413, "limit"),
        ("decompression bomb", {"files": {"file": ("d.png", bomb, "image/png")}},
         413, "refused before decoding"),
        ("unsupported file type", {"files": {"file": ("d.txt", b"seven", "text/plain")}},
         415, "unsupported file type"),
        ("unsupported content type", {"content": b"<pixels/>",
                                      "headers": {"content-type": "application/xml"}},
         415, "Content-Type"),
        ("multipart without file", {"files": {"upload": ("d.png", digit_png, "image/png")}},
         422, "named 'file'"),
        ("batch of nothing", {"url": "/predict/batch", "json": {"items": []}}, 422, "empty"),
        ("batch with a bad item", {"url": "/predict/batch",
                                   "json": {"items": [{"pixels": zeros}, {"pixels": [1]}]}},
         422, "item 1"),
    ]


async def test_every_bad_input_gets_a_4xx_with_a_message_and_the_service_carries_on(registry_dir):
    settings = settings_for(registry_dir, max_upload_bytes=64_000, max_image_pixels=25_000_000)
    async with serving(settings) as (_, client):
        for name, request, status, words in bad_requests():
            url = request.pop("url", "/predict")
            answer = await client.post(url, **request)
            assert answer.status_code == status, f"{name}: {answer.status_code} {answer.text}"
            body = answer.json()
            assert words in body["detail"], f"{name}: {body['detail']!r} lacks {words!r}"
            assert body["request_id"] == answer.headers["x-request-id"], name
        still = await client.post("/predict", json={"pixels": [0] * 784})
        assert still.status_code == 200, "no bad input may leave the batcher stuck"
        metrics = (await client.get("/metrics")).text
    # refused before any model answered: no model_version
    assert ('lab2prod_http_requests_total{method="POST",model_version="",route="/predict",'
            'status="422"}') in metrics


async def test_a_declared_oversized_body_is_refused_before_it_is_read(registry_dir):
    async with serving(settings_for(registry_dir, max_upload_bytes=1000)) as (_, client):
        answer = await client.post(
            "/predict", content=b"{" + b" " * 5000 + b"}",
            headers={"content-type": "application/json"},
        )
    assert answer.status_code == 413
    assert "5002 bytes" in answer.json()["detail"]


async def test_an_oversized_upload_is_refused_naming_the_setting_and_its_value(registry_dir):
    async with serving(settings_for(registry_dir, max_upload_bytes=64_000)) as (_, client):
        answer = await client.post(
            "/predict", files={"file": ("d.png", b"\x89PNG" + b"\0" * 200_000, "image/png")}
        )
    assert answer.status_code == 413
    assert "64000 bytes (MAX_UPLOAD_BYTES) plus 65536 of multipart framing" in (
        answer.json()["detail"]), answer.json()


async def test_responses_are_plain_json_bytes_without_a_gzip_wrapper_when_small(registry_dir):
    async with serving(settings_for(registry_dir)) as (_, client):
        answer = await client.post(
            "/predict", json={"pixels": [0] * 784}, headers={"Accept-Encoding": "gzip"}
        )
    assert "content-encoding" not in answer.headers
    with pytest.raises(gzip.BadGzipFile):
        gzip.decompress(answer.content)
