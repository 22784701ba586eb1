"""WebSocket /ws/predict: stream digits in, get one prediction per input back, in order.

The protocol is ``ws_predict``'s docstring: api.openapi puts it at the top of /docs, since
OpenAPI has no way to describe a WebSocket. Plain HTTP on the path is answered 426, pointing
there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.responses import Response

from service.api.deps import choose_version
from service.api.errors import ServiceUnavailable
from service.api.inputs import InputError, digit_from_image, digit_from_pixels
from service.api.serving import InferenceFailed, InferenceTimeout, predict_digit
from service.inference.batcher import BatcherClosed, QueueFull
from service.inference.pool import Overloaded, ServedVersion, VersionNotFound, VersionUnavailable
from service.monitoring import metrics

router = APIRouter(tags=["async"])
PATH = "/ws/predict"
MAX_ID_LENGTH = 128
POLICY_VIOLATION, TOO_BIG, INTERNAL_ERROR, TRY_AGAIN_LATER = 1008, 1009, 1011, 1013
OVERLOAD = (QueueFull, BatcherClosed, Overloaded, InferenceTimeout, VersionUnavailable)
PREDICT_TASK = "ws-predict"  # the name of each in-flight input's task
_NO_HEADER = object()
_GONE = (WebSocketDisconnect, OSError, RuntimeError)  # the client left (send after close)
log = logging.getLogger(__name__)


class _Close(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason.encode()[:123].decode(errors="ignore")  # the protocol's limit


@router.get(PATH, include_in_schema=False)  # not an HTTP operation: /docs describes the socket
async def ws_predict_help() -> Response:
    """Plain HTTP on the WebSocket path: 426, and where the protocol is described."""
    body = orjson.dumps({"detail": f"{PATH} is a WebSocket endpoint; see /docs for its protocol"})
    return Response(body, 426, {"Upgrade": "websocket"}, media_type="application/json")


@router.websocket(PATH)
async def ws_predict(websocket: WebSocket) -> None:
    """Stream digits in, get one prediction per input back, in order.

    Client to server:

    - a text frame ``{"id": "a1", "pixels": [784 numbers, or 28 rows of 28]}`` is one input;
    - a binary frame is one image (PNG, JPEG, WebP, BMP or GIF; the same rules as /predict
      uploads). Its id is the ``id`` of a header text frame ``{"id": "a2"}`` (no ``pixels``)
      sent just before it. Without a header (or without ``id`` in a JSON input) the id is the
      input's sequence number on this connection: 0, 1, 2 ... counting every input, JSON or
      binary. An id is a string of at most 128 characters or an integer, echoed back as sent.

    The version that answers is chosen once per connection, as for /predict: pinned with the
    ``X-Model-Version`` header or ``?version=v3`` on the connection request, else the traffic
    policy (sticky per ``X-Client-Id``), else the default alias.

    Server to client, one text frame per input, in the order the inputs arrived:

    - ``{"id": ..., "digit": 7, "confidence": 0.98, "probabilities": [...],
      "model_version": "v3"}``;
    - ``{"id": ..., "error": "...", "status": 422}`` when that input is refused (bad pixels, an
      unreadable image: the status /predict would answer) or the model failed on it (500). The
      connection stays open: one bad input costs one error message, not the stream.

    Close codes (with a reason saying what happened):

    - 1008 policy violation: a text frame that is not a JSON object, an id that is not a short
      string or an integer, two header frames in a row, or a pinned version that does not exist
      (the reason lists the known ones);
    - 1009 message too big: a binary frame over MAX_UPLOAD_BYTES;
    - 1013 try again later: the server is overloaded (its inference queue is full), the model
      timed out, the pinned version cannot be loaded now, or this instance has no model
      (LOAD_MODEL=false, or still loading);
    - 1011 internal error: a bug on our side (logged with its traceback).

    Backpressure: at most WS_MAX_IN_FLIGHT inputs per connection wait for their reply; past
    that the server stops reading the socket until the oldest is answered, so a client that
    sends faster than the model answers is slowed down by TCP flow control instead of filling
    memory. A client that closes or disconnects mid-stream gets no further replies: its inputs
    still in flight are cancelled, and leave no task behind.
    """
    await websocket.accept()
    try:
        served, _ = await choose_version(websocket)
    except (VersionNotFound, InputError) as exc:
        await websocket.close(POLICY_VIOLATION, _Close(0, str(exc)).reason)
        return
    except (VersionUnavailable, ServiceUnavailable) as exc:
        reason = "no model on this instance (LOAD_MODEL=false or loading); use /classify" \
            if isinstance(exc, ServiceUnavailable) else str(exc)
        await websocket.close(TRY_AGAIN_LATER, _Close(0, reason).reason)
        return
    metrics.WS_CONNECTIONS.inc()
    try:
        await _Stream(websocket, websocket.app.state, served).run()
    finally:
        metrics.WS_CONNECTIONS.dec()


class _Stream:
    """One connection: a reader that turns frames into prediction tasks, a writer that sends
    their results in order, and a semaphore between them that bounds what is in flight."""

    def __init__(self, websocket: WebSocket, state: Any, served: ServedVersion) -> None:
        self.websocket = websocket
        self.settings = state.settings
        self.served, self.cache = served, state.cache
        self.slots = asyncio.Semaphore(self.settings.ws_max_in_flight)
        self.in_order: deque[tuple[Any, asyncio.Future[bytes]]] = deque()
        self.ready = asyncio.Event()  # something was appended to in_order
        self.sequence = 0

    async def run(self) -> None:
        reader = asyncio.create_task(self._read(), name="ws-read")
        writer = asyncio.create_task(self._write(), name="ws-write")
        close: _Close | None = None
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if isinstance(error, _Close):
                    close = error
                elif error is not None and not isinstance(error, _GONE):
                    log.error("/ws/predict stream failed", exc_info=error)
                    close = _Close(INTERNAL_ERROR, f"internal error ({type(error).__name__})")
        finally:
            pending = [future for _, future in self.in_order]
            for task in (reader, writer, *pending):
                task.cancel()
            await asyncio.gather(reader, writer, *pending, return_exceptions=True)
        if close is not None:
            with contextlib.suppress(Exception):  # the client may be gone already
                await self.websocket.close(close.code, close.reason)

    # --- reading ------------------------------------------------------------------------------

    async def _read(self) -> None:
        header: Any = _NO_HEADER  # no header frame pending
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                item_id = self.sequence if header is _NO_HEADER else header
                header = _NO_HEADER
                await self._submit(item_id, self._image(message["bytes"]))
                continue
            document = _json_object(message.get("text") or "")
            if "pixels" not in document:
                if header is not _NO_HEADER:
                    raise _Close(POLICY_VIOLATION, "two header frames in a row; send the image")
                header = _check_id(document.get("id", _NO_HEADER))
                continue
            if header is not _NO_HEADER:
                raise _Close(POLICY_VIOLATION, "a header frame must be followed by a binary image")
            item_id = _check_id(document["id"]) if "id" in document else self.sequence
            await self._submit(item_id, _pixels(document["pixels"]))

    def _image(self, data: bytes) -> Any:
        limit = self.settings.max_upload_bytes
        if len(data) > limit:
            raise _Close(TOO_BIG, f"binary frame of {len(data)} bytes; the limit is {limit}")
        try:
            pixels = self.settings.max_image_pixels
            return digit_from_image(data, max_pixels=pixels, max_bytes=limit)
        except InputError as exc:
            return exc

    async def _submit(self, item_id: Any, digit: Any) -> None:
        await self.slots.acquire()  # backpressure: wait here, not reading the socket
        self.sequence += 1
        loop = asyncio.get_running_loop()
        if isinstance(digit, InputError):
            refused: asyncio.Future[bytes] = loop.create_future()
            refused.set_exception(digit)
            self.in_order.append((item_id, refused))
        else:
            prediction = predict_digit(
                digit, served=self.served, cache=self.cache,
                timeout_s=self.settings.request_timeout_s,
            )
            task = asyncio.create_task(prediction, name=PREDICT_TASK)
            self.in_order.append((item_id, task))  # type: ignore[arg-type]
        self.ready.set()

    # --- writing ------------------------------------------------------------------------------

    async def _write(self) -> None:
        while True:
            while not self.in_order:
                self.ready.clear()
                await self.ready.wait()
            item_id, future = self.in_order[0]
            try:
                reply = _with_id(item_id, (await future)[0])  # type: ignore[index]
                metrics.WS_MESSAGES.labels("ok").inc()
            except OVERLOAD as exc:
                metrics.WS_MESSAGES.labels("overload").inc()
                raise _Close(TRY_AGAIN_LATER, f"try again later: {exc}") from None
            except InputError as exc:
                metrics.WS_MESSAGES.labels("refused").inc()
                reply = _error(item_id, exc.message, exc.status_code)
            except InferenceFailed as exc:
                metrics.WS_MESSAGES.labels("failed").inc()
                reply = _error(item_id, str(exc), 500)
            self.in_order.popleft()
            await self.websocket.send_text(reply.decode())
            self.slots.release()


def _json_object(text: str) -> dict[str, Any]:
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise _Close(POLICY_VIOLATION, f"text frames must be JSON objects ({exc})") from None
    if not isinstance(document, dict):
        raise _Close(POLICY_VIOLATION, 'text frames must be JSON objects: {"id": .., "pixels": ..}')
    return document


def _check_id(value: Any) -> Any:
    if isinstance(value, str) and len(value) <= MAX_ID_LENGTH:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _Close(POLICY_VIOLATION, f"id must be an integer or a string of <= {MAX_ID_LENGTH} chars")


def _pixels(pixels: Any) -> Any:
    try:
        return digit_from_pixels(pixels)
    except InputError as exc:
        return exc


def _with_id(item_id: Any, body: bytes) -> bytes:
    """Prefix the cached prediction JSON with the id, without re-serialising it."""
    return b'{"id":' + orjson.dumps(item_id) + b"," + body[1:]


def _error(item_id: Any, message: str, status: int) -> bytes:
    return orjson.dumps({"id": item_id, "error": message, "status": status})
