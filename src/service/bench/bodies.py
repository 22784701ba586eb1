"""Request bodies for the load generator, built once and written to a file wrk's Lua reads.

Miss-path figures need DISTINCT inputs so that no cache can flatter them: every body holds a
different real mnist-5k digit with a small seeded perturbation (a few pixels nudged), so no
two are equal even where the dataset repeats itself. Cache-hit figures use one body on purpose.

File format (scripts/wrk/bodies.lua reads it): for each body, its length in bytes in ASCII,
a newline, then exactly that many bytes. This carries binary multipart bodies as well as JSON.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

JSON = "application/json"


@dataclass(frozen=True)
class BodySet:
    """A file of bodies and how to send them."""

    name: str
    path: Path
    content_type: str
    route: str
    count: int
    items_per_body: int = 1
    digits: str = ""  # the digit sequence it sends, when another set sends it too (else its name)

    @property
    def sequence(self) -> str:
        """What the bench's cursor walks: sets that send the same digits in the same order walk
        one sequence together, so that one set never repeats a digit the other sent lately."""
        return self.digits or self.name


def distinct_digits(count: int, seed: int = 0) -> np.ndarray:
    """``count`` different uint8 digits [count,28,28]: mnist-5k digits, each with 8 pixels
    nudged by a seeded +-1..3 (cycling through the 5,000 digits when more are asked for)."""
    from service.ml.data import load_dataset

    dataset = load_dataset("mnist-5k")
    pool = np.concatenate([dataset.test_images, dataset.train_images])
    rng = np.random.default_rng(seed)
    picked = pool[np.arange(count) % len(pool)].astype(np.int16).reshape(count, -1)
    seen: set[bytes] = set()
    for row in picked:
        while True:
            positions = rng.choice(row.size, 8, replace=False)
            candidate = row.copy()
            candidate[positions] += rng.choice([-3, -2, -1, 1, 2, 3], 8)
            candidate = candidate.clip(0, 255)
            key = candidate.astype(np.uint8).tobytes()
            if key not in seen:
                seen.add(key)
                row[:] = candidate
                break
    return picked.astype(np.uint8).reshape(count, 28, 28)


def json_body(digit: np.ndarray) -> bytes:
    return orjson.dumps({"pixels": digit.reshape(-1).tolist()})


def v2_body(digit: np.ndarray) -> bytes:
    """One digit as an Open Inference Protocol (v2) JSON inference request."""
    return orjson.dumps({"inputs": [{"name": "pixels", "shape": [1, digit.size],
                                     "datatype": "UINT8", "data": digit.reshape(-1).tolist()}]})


def rows_body(digit: np.ndarray) -> bytes:
    """One digit as a one-row batch, ``{"pixels": [[784 values]]}``: what an API that batches
    along the first dimension takes (BentoML's batchable APIs)."""
    return orjson.dumps({"pixels": [digit.reshape(-1).tolist()]})


def batch_body(digits: np.ndarray) -> bytes:
    return orjson.dumps({"items": [{"pixels": d.reshape(-1).tolist()} for d in digits]})


def png_upload(digit: np.ndarray, side: int, paper: bool) -> bytes:
    """The digit drawn ``side`` px square; ``paper``: dark ink on white, as a scan would be."""
    from PIL import Image

    image = Image.fromarray(digit, mode="L").resize((side, side), Image.Resampling.BILINEAR)
    if paper:
        image = Image.eval(image, lambda value: 255 - value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(file_bytes: bytes, boundary: str, filename: str = "digit.png") -> bytes:
    return (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
        f"filename=\"{filename}\"\r\nContent-Type: image/png\r\n\r\n"
    ).encode() + file_bytes + f"\r\n--{boundary}--\r\n".encode()


def write_bodies(path: Path, bodies: Iterator[bytes] | list[bytes]) -> int:
    count = 0
    with path.open("wb") as handle:
        for body in bodies:
            handle.write(f"{len(body)}\n".encode())
            handle.write(body)
            count += 1
    return count


def read_bodies(path: Path) -> list[bytes]:
    """The inverse of write_bodies (what the Lua script does), for tests and checks."""
    data, bodies, offset = path.read_bytes(), [], 0
    while offset < len(data):
        newline = data.index(b"\n", offset)
        size = int(data[offset:newline])
        bodies.append(data[newline + 1:newline + 1 + size])
        offset = newline + 1 + size
    return bodies


def build_body_sets(
    folder: Path, *, distinct: int = 2048, png_count: int = 1024, batch_bodies: int = 512,
    batch_items: int = 16, png_sides: tuple[int, int] = (28, 400), seed: int = 0,
    model_name: str = "mnist-cnn",
) -> dict[str, BodySet]:
    """json (distinct), json-same (one body), v2 and json-rows (json's digits as v2 protocol
    requests and as one-row batches), png (distinct, 28..400 px), batch (distinct).

    Each set gets its own digits, so no body of one set repeats a digit of another, except v2
    and json-rows: they send json's digits in json's order, walked as one sequence with json's.
    A batch request holds 16 digits: at c=64 that keeps 1,024 digits in flight, the default
    MAX_QUEUE_SIZE (more would be refused with 503 by design, not measured as throughput)."""
    folder.mkdir(parents=True, exist_ok=True)
    batch_total = batch_bodies * batch_items
    digits = distinct_digits(distinct + png_count + batch_total + 1, seed)
    json_digits, rest = digits[:distinct], digits[distinct:]
    png_digits, rest = rest[:png_count], rest[png_count:]
    batch_digits, same_digit = rest[:batch_total], rest[batch_total]
    rng = np.random.default_rng(seed + 1)
    sets: dict[str, BodySet] = {}

    def add(name: str, bodies: list[bytes], content_type: str, route: str, items: int = 1,
            digits: str = "") -> None:
        path = folder / f"{name}.bodies"
        sets[name] = BodySet(name, path, content_type, route, write_bodies(path, bodies), items,
                             digits)

    add("json", [json_body(d) for d in json_digits], JSON, "/predict")
    add("json-same", [json_body(same_digit)], JSON, "/predict")
    add("v2", [v2_body(d) for d in json_digits], JSON, f"/v2/models/{model_name}/infer",
        digits="json")
    add("json-rows", [rows_body(d) for d in json_digits], JSON, "/predict", digits="json")
    boundary = f"lab2prod-{uuid.uuid4().hex}"
    sides = rng.integers(png_sides[0], png_sides[1] + 1, png_count)
    uploads = [png_upload(d, int(side), paper=bool(i % 2))
               for i, (d, side) in enumerate(zip(png_digits, sides, strict=True))]
    if any(boundary.encode() in upload for upload in uploads):  # astronomically unlikely
        raise RuntimeError("multipart boundary occurs in an image; run again")
    add("png", [multipart(upload, boundary) for upload in uploads],
        f"multipart/form-data; boundary={boundary}", "/predict")
    add("batch", [batch_body(batch_digits[i * batch_items:(i + 1) * batch_items])
                  for i in range(batch_bodies)], JSON, "/predict/batch", batch_items)
    return sets
