"""Request bodies -> validated uint8 [28,28] digits. The one place that reads client input.

Used by /predict, /predict/batch and the async routes (/classify, WebSocket). Every refusal is an
``InputError`` carrying the HTTP status (400, 413, 415 or 422) and a message that says what was
wrong and how to send it instead. Parsing never goes through pydantic: 784 numbers are decoded
with orjson and checked with numpy, which is what keeps the hot path cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import orjson
from PIL import Image, UnidentifiedImageError
from python_multipart.multipart import parse_options_header
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from service.inference.batcher import MicroBatcher
from service.ml.preprocess import (
    IMAGE_PIXELS,
    IMAGE_SIDE,
    InvalidImage,
    InvalidPixels,
    image_to_mnist,
    pixels_to_array,
)

SUPPORTED_FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP", "BMP", "GIF"})  # MPO: phone JPEGs
SUPPORTED_NAMES = "PNG, JPEG, WebP, BMP or GIF"
UPLOAD_CONTENT_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/gif")
IMAGE_CONTENT_TYPES = frozenset(
    {*UPLOAD_CONTENT_TYPES, "image/jpg", "image/pjpeg", "image/x-bmp", "image/x-ms-bmp"}
)
# Part types that carry no claim about the bytes: sniff them instead of refusing.
GENERIC_CONTENT_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the uploaded file
MAX_FORM_FIELDS, MAX_FORM_FILES = 16, 4  # most plain fields, and files, in one multipart body
DECODE_THREADS = 2  # images are decoded off the event loop, at most this many at once
DECODE_BATCH_SIZE = 4  # uploads a decoding thread takes at a time (one huge one delays 3 at most)
DECODE_QUEUE_SIZE = 1024  # uploads waiting to be decoded past which /predict answers 503
# Our own check (MAX_IMAGE_PIXELS, from the header, before decoding: open_image) replaces
# Pillow's, which warns above its own limit and refuses above twice that (179 MP) whatever
# MAX_IMAGE_PIXELS says.
Image.MAX_IMAGE_PIXELS = None


class InputError(ValueError):
    """A request the service refuses; ``status_code`` is the HTTP status to answer with."""

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


# --- JSON pixels --------------------------------------------------------------------------------


def digit_from_pixels(pixels: object, *, may_hold_bools: bool = True) -> np.ndarray:
    """784 numbers, or 28 rows of 28, in 0..255 -> uint8 [28,28]; InputError (422) otherwise.

    The fast path is one numpy conversion; anything unusual falls back to
    ``preprocess.pixels_to_array`` for its precise message (same rules, one definition).
    ``may_hold_bools=False`` skips the scan for true/false: callers pass it when the JSON text
    they parsed has no ``true`` or ``false`` anywhere (the scan is a quarter of the parse).
    """
    if isinstance(pixels, list):
        if not may_hold_bools and len(pixels) == IMAGE_PIXELS:
            # The usual body, 784 ints in 0..255, in one C loop that also checks type and range
            # (bytearray's: a third of array("B")'s time, which was half of the numpy path
            # below, which handles everything else; docs/benchmarks/overhead.md).
            with contextlib.suppress(TypeError, ValueError):
                flat = np.frombuffer(bytearray(pixels), dtype=np.uint8)
                return flat.reshape(IMAGE_SIDE, IMAGE_SIDE)
        try:
            array = np.array(pixels)
        except (ValueError, TypeError, OverflowError):
            array = None
        if (
            array is not None
            and array.dtype.kind in "iuf"
            and array.shape in ((IMAGE_PIXELS,), (IMAGE_SIDE, IMAGE_SIDE))
            and not (may_hold_bools and _has_bool(pixels, array.ndim))
        ):
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                pass  # let the precise checker say which pixel
            elif array.min() >= 0 and array.max() <= 255:
                if array.dtype.kind == "f":
                    array = np.rint(array)
                return array.astype(np.uint8).reshape(IMAGE_SIDE, IMAGE_SIDE)
    try:
        return pixels_to_array(pixels)  # type: ignore[arg-type]
    except InvalidPixels as exc:
        raise InputError(str(exc), 422) from None


def _has_bool(pixels: list[Any], ndim: int) -> bool:
    """JSON true/false would pass numpy as 1/0; refuse them like the reference checker does."""
    values = pixels if ndim == 1 else chain.from_iterable(pixels)
    return bool in set(map(type, values))


def _may_hold_bools(body: bytes) -> bool:
    """JSON has booleans only as the literals true and false: without a "u" or an "a" (true
    has one, false the other; {"pixels": [...]} neither), none was parsed. Two single-byte
    searches (memchr) cost a quarter of searching for the two words."""
    return b"u" in body or b"a" in body


def load_json(body: bytes) -> Any:
    if not body.strip():
        raise InputError(
            'the request body is empty; send JSON {"pixels": [784 numbers]} or a multipart '
            "upload with the image in a field named 'file'",
            400,
        )
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError(
            f"the body is not valid JSON ({exc}); NaN and Infinity are not JSON numbers", 400
        ) from None


def digit_from_json(body: bytes) -> np.ndarray:
    """A JSON body ``{"pixels": ...}`` -> uint8 [28,28]."""
    document = load_json(body)
    if not isinstance(document, dict) or "pixels" not in document:
        raise InputError(
            'expected a JSON object with a "pixels" field: {"pixels": [784 numbers in 0..255]}'
        )
    return digit_from_pixels(document["pixels"], may_hold_bools=_may_hold_bools(body))


def digits_from_batch_json(body: bytes, max_items: int) -> list[np.ndarray]:
    """A JSON body ``{"items": [{"pixels": ...}, ...]}`` -> digits in order."""
    document = load_json(body)
    items = document.get("items") if isinstance(document, dict) else None
    if not isinstance(items, list):
        raise InputError('expected a JSON object {"items": [{"pixels": [...]}, ...]}')
    if not items:
        raise InputError(f'"items" is empty; send between 1 and {max_items} items')
    if len(items) > max_items:
        raise InputError(
            f'"items" has {len(items)} entries; at most {max_items} per request '
            "(split the batch, or raise BATCH_MAX_ITEMS)",
            413,
        )
    digits = []
    may_hold_bools = _may_hold_bools(body)
    for index, item in enumerate(items):
        if not isinstance(item, dict) or "pixels" not in item:
            raise InputError(f'item {index} is not an object with a "pixels" field')
        try:
            digits.append(digit_from_pixels(item["pixels"], may_hold_bools=may_hold_bools))
        except InputError as exc:
            raise InputError(f"item {index}: {exc.message}", exc.status_code) from None
    return digits


# --- images -------------------------------------------------------------------------------------


def digit_from_image(
    data: bytes, *, max_pixels: int, max_bytes: int | None = None, content_type: str | None = None
) -> np.ndarray:
    """An uploaded image's bytes -> uint8 [28,28] through ``preprocess.image_to_mnist``.

    Checks, in order: declared type (415), size in bytes (413), a readable header of a supported
    format (422 / 415), width x height against ``max_pixels`` before any pixel is decoded (413),
    a single frame (422), then decodes (422 when truncated) and preprocesses.
    """
    return digit_from_opened(
        open_image(data, max_pixels=max_pixels, max_bytes=max_bytes, content_type=content_type)
    )


def open_image(
    data: bytes, *, max_pixels: int, max_bytes: int | None = None, content_type: str | None = None
) -> Image.Image:
    """Every check ``digit_from_image`` makes before decoding; reads the header only."""
    declared = (content_type or "").partition(";")[0].strip().lower()
    if declared not in IMAGE_CONTENT_TYPES and declared not in GENERIC_CONTENT_TYPES:
        raise InputError(
            f"unsupported file type {declared!r}; upload a {SUPPORTED_NAMES} image", 415
        )
    if max_bytes is not None and len(data) > max_bytes:
        raise InputError(
            f"the image is {len(data)} bytes; the limit is {max_bytes} (MAX_UPLOAD_BYTES)", 413
        )
    if not data:
        raise InputError("the uploaded file is empty", 400)
    try:
        image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        if "truncated" in str(exc).lower():
            raise InputError(
                f"the image could not be decoded: it is truncated or corrupt ({_reason(exc)})", 422
            ) from None
        raise InputError(
            f"the file is not a readable {SUPPORTED_NAMES} image ({_reason(exc)})", 422
        ) from None
    try:
        if image.format not in SUPPORTED_FORMATS:
            raise InputError(
                f"{image.format} images are not supported; upload a {SUPPORTED_NAMES} image", 415
            )
        width, height = image.size
        if width * height > max_pixels:
            raise InputError(
                f"the image is {width}x{height} = {width * height} pixels; the limit is "
                f"{max_pixels} (MAX_IMAGE_PIXELS): refused before decoding",
                413,
            )
        if getattr(image, "is_animated", False) and image.format != "MPO":
            raise InputError(
                "animated or multi-frame images are not supported; upload a single frame", 422
            )
    except BaseException:
        image.close()
        raise
    return image


def digit_from_opened(image: Image.Image) -> np.ndarray:
    """An image ``open_image`` accepted -> decoded and preprocessed (422 when it cannot be)."""
    with image:
        try:
            image.load()
        except (OSError, ValueError, SyntaxError) as exc:
            raise InputError(
                f"the image could not be decoded: it is truncated or corrupt ({_reason(exc)})", 422
            ) from None
        try:
            return image_to_mnist(image)
        except InvalidImage as exc:
            raise InputError(str(exc), 422) from None


def digits_from_opened(images: list[Image.Image]) -> list[np.ndarray | Exception]:
    """``digit_from_opened`` for each image; a failure is returned in its place, so that one bad
    upload fails its own request only."""
    digits: list[np.ndarray | Exception] = []
    for image in images:
        try:
            digits.append(digit_from_opened(image))
        except Exception as exc:  # raised again on the loop, for its own request alone
            digits.append(exc)
    return digits


_decoder: MicroBatcher[Image.Image, np.ndarray | Exception] | None = None


async def decode_image(
    data: bytes, *, max_pixels: int, max_bytes: int | None = None, content_type: str | None = None
) -> np.ndarray:
    """``digit_from_image`` without stalling the event loop: the header checks run here (a
    bad upload is refused at once), decoding and preprocessing on two decoding threads (Pillow
    releases the GIL while it decodes).

    The threads are a micro-batcher's: the uploads of one loop iteration wake a thread once, and
    a batch's digits come back in one call, where a thread pool's futures cost a wake-up and a
    callback each (about 35 µs of CPU an upload: docs/benchmarks/overhead.md). Decoding the usual
    upload inline instead was measured: no more throughput on one core, and a p99 at c=64 two to
    three times longer, because every busy loop iteration also delays reading the next requests.
    """
    global _decoder
    image = open_image(data, max_pixels=max_pixels, max_bytes=max_bytes, content_type=content_type)
    if _decoder is None:
        _decoder = MicroBatcher(
            digits_from_opened, max_batch_size=DECODE_BATCH_SIZE, name="image-decode",
            threads=DECODE_THREADS, max_queue_size=DECODE_QUEUE_SIZE,
        ).start()
    digit = await _decoder.submit(image)
    if isinstance(digit, Exception):
        raise digit
    return digit


def _reason(exc: BaseException) -> str:
    return str(exc).split(" <_io.BytesIO")[0] or type(exc).__name__


# --- whole requests -----------------------------------------------------------------------------


async def read_body(request: Request, limit: int, framing: int = 0) -> bytes:
    """The body, refusing (413) as soon as it is known to exceed ``limit`` (MAX_UPLOAD_BYTES)
    plus ``framing`` bytes (a multipart body's boundaries and part headers)."""
    allowed = limit + framing
    rule = f"{limit} bytes (MAX_UPLOAD_BYTES)" + (
        f" plus {framing} of multipart framing" if framing else "")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > allowed:
        raise InputError(f"the body is {declared} bytes; the limit is {rule}", 413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > allowed:
            raise InputError(f"the body exceeds the limit of {rule}", 413)
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


@dataclass(frozen=True, slots=True)
class Payload:
    """A /predict request's input, read but not parsed yet: JSON text or an image's bytes.

    ``fingerprint`` names exactly these bytes, so the cache can answer a repeated request
    before any parsing or decoding (parsing was a third of a cache hit's time: docs/benchmarks)."""

    kind: str  # "json" or "image"
    data: bytes
    content_type: str | None = None  # an image's declared type

    @property
    def fingerprint(self) -> str:
        return f"{self.kind}:{hashlib.blake2b(self.data, digest_size=16).hexdigest()}"


async def payload_from_request(request: Request, *, max_bytes: int) -> Payload:
    """The body of a /predict request (JSON, multipart field ``file``, or a raw image)."""
    kind = media_type(request)
    if kind in ("application/json", "") or kind.endswith("+json"):
        return Payload("json", await read_body(request, max_bytes))
    if kind == "multipart/form-data":
        data, part_type = await read_upload(request, max_bytes)
        return Payload("image", data, part_type)
    if kind in IMAGE_CONTENT_TYPES:
        return Payload("image", await read_body(request, max_bytes), kind)
    raise InputError(
        f"unsupported Content-Type {kind!r}; send application/json "
        '({"pixels": [...]}) or multipart/form-data with the image in a field named "file"',
        415,
    )


async def digit_from_payload(payload: Payload, *, max_bytes: int, max_pixels: int) -> np.ndarray:
    if payload.kind == "json":
        return digit_from_json(payload.data)
    return await decode_image(
        payload.data, max_pixels=max_pixels, max_bytes=max_bytes,
        content_type=payload.content_type,
    )


async def digit_from_request(request: Request, *, max_bytes: int, max_pixels: int) -> np.ndarray:
    """A /predict request (JSON pixels, multipart ``file``, or a raw image body) -> a digit."""
    payload = await payload_from_request(request, max_bytes=max_bytes)
    return await digit_from_payload(payload, max_bytes=max_bytes, max_pixels=max_pixels)


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, str | None]:
    """The bytes and declared type of the multipart field ``file`` (413 past the limit)."""
    body = await read_body(request, max_bytes, framing=MULTIPART_OVERHEAD)
    _, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if boundary:
        single = single_file_part(body, boundary)
        if single is not None:
            return single

    async def stream() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(
        Headers(scope=request.scope), stream(),  # type: ignore[arg-type]
        max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InputError(f"the multipart body is malformed ({exc.message})", 400) from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InputError(
                "the multipart body has no file field named 'file' "
                "(e.g. curl -F file=@digit.png http://host/predict)"
            )
        data = await upload.read()
        return data, upload.content_type
    finally:
        await form.close()


def single_file_part(body: bytes, boundary: bytes) -> tuple[bytes, str | None] | None:
    """The usual upload, one file part named ``file`` and nothing else, read by slicing.

    Returns (bytes, declared type), or None for anything else (other or more parts, a preamble,
    an epilogue, unusual framing): the caller then runs the full multipart parser, which also
    words the errors. Starlette's parser costs about 60 µs an upload, a tenth of the PNG path
    (docs/benchmarks); this costs a few."""
    delimiter = b"--" + boundary
    headers_start = len(delimiter) + 2
    if not body.startswith(delimiter + b"\r\n"):
        return None
    headers_end = body.find(b"\r\n\r\n", headers_start)
    closing = body.rfind(b"\r\n" + delimiter + b"--")
    if headers_end < 0 or closing < headers_end:
        return None
    if body[closing + len(delimiter) + 4 :] not in (b"", b"\r\n"):
        return None
    data = body[headers_end + 4 : closing]
    if delimiter in data:  # a second part
        return None
    disposition: dict[bytes, bytes] | None = None
    part_type: str | None = None
    for line in body[headers_start:headers_end].split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon:
            return None
        name = name.strip().lower()
        if name == b"content-disposition":
            kind, disposition = parse_options_header(value)
            if kind != b"form-data":
                return None
        elif name == b"content-type":
            part_type = value.strip().decode("latin-1")
    if disposition is None or disposition.get(b"name") != b"file" or b"filename" not in disposition:
        return None  # not a file named "file": the full parser says what it is
    return data, part_type
