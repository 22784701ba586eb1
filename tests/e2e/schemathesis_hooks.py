"""Schemathesis hooks: real images of a digit for the image media types the API accepts.

The OpenAPI document can say that an upload is binary of type image/png (or JPEG, WebP, BMP,
GIF), not that its bytes must decode to such an image with a digit that stands out from the
paper. Left alone, Schemathesis fills those bodies with arbitrary bytes or a 1x1 sample image,
which the service rightly refuses (422), and its positive-data-acceptance check would call each
refusal a failure. Registering a strategy per media type (Schemathesis' extension point for
media types) makes every schema-valid upload a real one, so that check stays strict for uploads
too: a real image of a digit refused would be a failure.

Loaded with ``SCHEMATHESIS_HOOKS=tests/e2e/schemathesis_hooks.py`` (see test_openapi_contract).
"""

from __future__ import annotations

import io

import schemathesis
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from service.api.inputs import UPLOAD_CONTENT_TYPES

MIN_SIDE, MAX_SIDE = 12, 96
MIN_CONTRAST = 96  # grey levels between ink and paper: well clear of the service's floor (24)


@st.composite
def digit_images(draw: st.DrawFn, image_format: str) -> bytes:
    """A canvas of paper (any grey) with one stroke of ink, away from the border."""
    width, height = (draw(st.integers(MIN_SIDE, MAX_SIDE)) for _ in range(2))
    paper = draw(st.integers(0, 255))
    # The service reads the polarity from the paper: on light paper ink is darker, on dark lighter.
    if paper > 127:
        ink = draw(st.integers(0, paper - MIN_CONTRAST))
    else:
        ink = draw(st.integers(paper + MIN_CONTRAST, 255))
    margin = max(2, min(width, height) // 6)  # the border the service reads the paper from
    left = draw(st.integers(margin, width - margin - 2))
    top = draw(st.integers(margin, height - margin - 2))
    right = draw(st.integers(left + 1, width - margin - 1))
    bottom = draw(st.integers(top + 1, height - margin - 1))
    mode = draw(st.sampled_from(["L", "RGB"]))
    image = Image.new("L", (width, height), paper)
    ImageDraw.Draw(image).rectangle((left, top, right, bottom), fill=ink)
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, format=image_format)
    return buffer.getvalue()


for media_type in UPLOAD_CONTENT_TYPES:  # image/png -> Pillow's PNG, ... image/gif -> GIF
    schemathesis.openapi.media_type(media_type, digit_images(media_type.split("/")[1].upper()))
