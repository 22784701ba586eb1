"""Request parsing: JSON pixels and uploaded images -> validated uint8 [28,28], or a 4xx."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib

import httpx
import numpy as np
import orjson
import pytest
from PIL import Image
from starlette.requests import Request

from service.api.inputs import (
    InputError,
    decode_image,
    digit_from_image,
    digit_from_json,
    digit_from_pixels,
    digits_from_batch_json,
    open_image,
    read_upload,
    single_file_part,
)
from service.ml.preprocess import pixels_to_array

LIMIT = 25_000_000


def body(pixels: object) -> bytes:
    return orjson.dumps({"pixels": pixels})


def png_bytes(image: Image.Image, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=save.pop("format", "PNG"), **save)
    return buffer.getvalue()


def test_flat_and_row_pixels_give_the_same_digit_as_the_reference_checker():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 255, 784)
    flat = digit_from_json(body(values.tolist()))
    rows = digit_from_json(body(values.reshape(28, 28).tolist()))
    floats = digit_from_json(body((values + 0.2).tolist()))
    assert flat.dtype == np.uint8 and flat.shape == (28, 28)
    assert np.array_equal(flat, rows) and np.array_equal(flat, floats)
    assert np.array_equal(flat, pixels_to_array(values.tolist()))


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        (b"", 400, "body is empty"),
        (b"{not json", 400, "not valid JSON"),
        (b'{"pixels": [NaN]}', 400, "NaN"),
        (b'{"pics": []}', 422, '"pixels" field'),
        (b"[1, 2, 3]", 422, '"pixels" field'),
        (body([0] * 783), 422, "expected 784 numbers"),
        (body([[0] * 28] * 27 + [[0] * 27]), 422, "row 27 has 27 values"),
        (body([0] * 783 + ["7"]), 422, "pixel 783 is '7'"),
        (body([0] * 783 + [True]), 422, "pixel 783 is True"),
        (body([0] * 783 + [None]), 422, "pixel 783 is None"),
        (body([0] * 783 + [256]), 422, "pixel 783 is 256"),
        (body([-1] + [0] * 783), 422, "pixel 0 is -1"),
        (b'{"pixels": [' + b"0," * 783 + b"1e400]}", 400, "infinity"),
        (body("0" * 784), 422, "pixels must be a list"),
    ],
)
def test_bad_json_pixels_are_refused_with_a_status_and_a_message(payload, status, message):
    with pytest.raises(InputError) as refused:
        digit_from_json(payload)
    assert refused.value.status_code == status
    assert message in refused.value.message


def test_python_nan_from_other_parsers_is_refused_too():
    with pytest.raises(InputError, match="not a finite number"):
        digit_from_pixels([float("nan")] + [0.0] * 783)


def test_batches_keep_order_and_name_the_bad_item():
    digits = digits_from_batch_json(
        orjson.dumps({"items": [{"pixels": [i] * 784} for i in range(3)]}), max_items=4
    )
    assert [int(d[0, 0]) for d in digits] == [0, 1, 2]
    with pytest.raises(InputError, match="item 1: expected 784"):
        digits_from_batch_json(orjson.dumps({"items": [{"pixels": [0] * 784}, {"pixels": [1]}]}), 4)
    with pytest.raises(InputError) as too_many:
        digits_from_batch_json(orjson.dumps({"items": [{"pixels": [0] * 784}] * 5}), max_items=4)
    assert too_many.value.status_code == 413
    with pytest.raises(InputError, match="empty"):
        digits_from_batch_json(b'{"items": []}', 4)


def digit_image(mode: str = "L") -> Image.Image:
    canvas = Image.new("L", (120, 160), 255)
    canvas.paste(0, (50, 30, 70, 130))  # a dark vertical bar: a "1"
    return canvas.convert(mode)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF"])
def test_every_supported_format_decodes_to_a_centred_light_on_dark_digit(fmt):
    mode = "RGB" if fmt in ("JPEG", "WEBP", "BMP") else "L"
    digit = digit_from_image(png_bytes(digit_image(mode), format=fmt), max_pixels=LIMIT)
    assert digit.shape == (28, 28) and digit.dtype == np.uint8
    assert digit[14, 14] > 200 and digit[0, 0] == 0


def test_a_non_image_file_is_422_and_an_unsupported_type_is_415():
    with pytest.raises(InputError) as not_image:
        digit_from_image(b"hello, I am text", max_pixels=LIMIT)
    assert not_image.value.status_code == 422
    with pytest.raises(InputError) as declared:
        digit_from_image(png_bytes(digit_image()), max_pixels=LIMIT, content_type="text/plain")
    assert declared.value.status_code == 415
    with pytest.raises(InputError) as tiff:
        digit_from_image(png_bytes(digit_image(), format="TIFF"), max_pixels=LIMIT)
    assert tiff.value.status_code == 415 and "TIFF" in tiff.value.message


def test_a_truncated_image_is_refused_with_422():
    data = png_bytes(digit_image("RGB"), format="JPEG")
    with pytest.raises(InputError) as truncated:
        digit_from_image(data[: len(data) // 2], max_pixels=LIMIT)
    assert truncated.value.status_code == 422
    assert "truncated" in truncated.value.message


def test_an_animated_image_is_refused_with_422():
    frames = [digit_image("P"), Image.new("P", (120, 160), 3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(InputError, match="multi-frame") as animated:
        digit_from_image(buffer.getvalue(), max_pixels=LIMIT)
    assert animated.value.status_code == 422


def png_bomb(side: int) -> bytes:
    """A PNG whose header promises side x side RGBA pixels, with a few bytes of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


@pytest.mark.parametrize("side", [10_000, 20_000])  # 100 MP, 400 MP (past Pillow's own limit)
def test_a_decompression_bomb_is_refused_from_its_header_before_decoding(side):
    bomb = png_bomb(side)
    assert len(bomb) < 1000, "a few bytes that would decode to gigabytes"
    with pytest.raises(InputError) as refused:
        digit_from_image(bomb, max_pixels=LIMIT)
    assert refused.value.status_code == 413
    assert "refused before decoding" in refused.value.message


def test_max_image_pixels_above_pillows_own_limit_is_honoured():
    """Pillow refuses headers over 179 MP by itself; MAX_IMAGE_PIXELS decides instead."""
    image = open_image(png_bomb(14_000), max_pixels=200_000_000)  # 196 MP: the header only
    assert image.size == (14_000, 14_000)
    image.close()
    with pytest.raises(InputError, match=r"the limit is 150000000 \(MAX_IMAGE_PIXELS\)"):
        open_image(png_bomb(14_000), max_pixels=150_000_000)


def test_an_image_over_the_byte_limit_is_413():
    data = png_bytes(digit_image())
    with pytest.raises(InputError) as refused:
        digit_from_image(data, max_pixels=LIMIT, max_bytes=len(data) - 1)
    assert refused.value.status_code == 413


def test_a_blank_image_says_no_digit_was_found():
    with pytest.raises(InputError, match="no digit found") as blank:
        digit_from_image(png_bytes(Image.new("RGB", (64, 64), "white")), max_pixels=LIMIT)
    assert blank.value.status_code == 422


async def test_uploads_decoded_together_fail_only_the_bad_one():
    good = png_bytes(digit_image())
    blank = png_bytes(Image.new("L", (64, 64), 255))
    truncated = png_bytes(digit_image("RGB"), format="JPEG")[:300]
    # Submitted in one loop iteration: they reach the decoding threads together, in batches.
    answers = await asyncio.gather(
        *(decode_image(data, max_pixels=LIMIT) for data in (good, blank, good, truncated, good)),
        return_exceptions=True,
    )
    expected = digit_from_image(good, max_pixels=LIMIT)
    for index in (0, 2, 4):
        assert np.array_equal(answers[index], expected)
    assert isinstance(answers[1], InputError) and answers[1].status_code == 422
    assert "no digit found" in answers[1].message
    assert isinstance(answers[3], InputError) and "truncated" in answers[3].message


# --- multipart uploads: the slicing fast path and Starlette's parser agree ----------------------

BOUNDARY = b"lab2prod-test-boundary"


def part(name: str, data: bytes, filename: str | None = "digit.png",
         content_type: str | None = "image/png") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    headers = f"Content-Disposition: {disposition}\r\n"
    if content_type:
        headers += f"Content-Type: {content_type}\r\n"
    return b"--" + BOUNDARY + b"\r\n" + headers.encode() + b"\r\n" + data + b"\r\n"


def closing() -> bytes:
    return b"--" + BOUNDARY + b"--\r\n"


def request_for(body: bytes, content_type: str) -> Request:
    scope = {"type": "http", "method": "POST", "path": "/predict", "query_string": b"",
             "headers": [(b"content-type", content_type.encode()),
                         (b"content-length", str(len(body)).encode())]}
    sent = False

    async def receive() -> dict[str, object]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


async def test_a_client_library_upload_is_sliced_to_the_same_bytes_and_type():
    image = png_bytes(Image.new("L", (40, 40), 255))
    sent = httpx.Request("POST", "http://x/predict", files={"file": ("d.png", image, "image/png")})
    content_type = sent.headers["content-type"]
    body = sent.read()
    boundary = content_type.split("boundary=")[1].encode()
    assert single_file_part(body, boundary) == (image, "image/png")
    assert await read_upload(request_for(body, content_type), LIMIT) == (image, "image/png")


# What Starlette's full parser makes of each layout the fast path declines: the file's bytes,
# or the status of the refusal.
DECLINED_LAYOUTS = {
    "two parts": 200, "an epilogue": 200, "a boundary inside the data": 200,
    "a preamble": 400, "another field name": 422, "no filename": 422,
    "no closing delimiter": 422,
}


@pytest.mark.parametrize("layout", DECLINED_LAYOUTS)
async def test_anything_but_one_file_part_goes_to_the_full_parser(layout):
    image = png_bytes(Image.new("L", (30, 30), 0))
    body = {
        "two parts": part("note", b"hello", filename=None, content_type=None)
        + part("file", image) + closing(),
        "an epilogue": part("file", image) + closing() + b"trailing words",
        "a boundary inside the data": part("file", image + b"--" + BOUNDARY) + closing(),
        "a preamble": b"ignored preamble\r\n" + part("file", image) + closing(),
        "another field name": part("upload", image) + closing(),
        "no filename": part("file", image, filename=None) + closing(),
        "no closing delimiter": part("file", image),
    }[layout]
    content_type = f"multipart/form-data; boundary={BOUNDARY.decode()}"
    assert single_file_part(body, BOUNDARY) is None
    try:
        data, declared = await read_upload(request_for(body, content_type), LIMIT)
    except InputError as error:
        assert error.status_code == DECLINED_LAYOUTS[layout]
    else:
        assert DECLINED_LAYOUTS[layout] == 200
        assert data.startswith(image) and declared == "image/png"
