"""GET /: a page to draw a digit (or upload a photo of one) and see the service's answer.

One static file with its script inline (no build step, nothing fetched from elsewhere): a canvas
for mouse or touch, Clear, a file input, and the answer of ``POST /predict`` with its ten
probabilities as bars, the version that answered and the time the round trip took.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from starlette.responses import Response

router = APIRouter(tags=["page"])
PAGE = resources.files("service.api").joinpath("static/index.html").read_bytes()


@router.get(
    "/",
    response_class=Response,
    responses={200: {"description": "The drawing page.",
                     "content": {"text/html": {"schema": {"type": "string"}}}}},
    summary="A page to draw a digit and see the prediction",
)
async def page() -> Response:
    return Response(PAGE, media_type="text/html; charset=utf-8",
                    headers={"Cache-Control": "no-cache"})
