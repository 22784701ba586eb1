"""The requests the hot routes' equivalence tests send (every answer and refusal a /predict or
v2 client meets), and a reply reduced to what must be equal however it was served."""

from __future__ import annotations

import orjson

# (what is sent, why): the answers and refusals a /predict client meets
REQUESTS = [
    ({"content": orjson.dumps({"pixels": [0] * 784})}, "a digit"),
    ({"content": orjson.dumps({"pixels": [0] * 784})}, "the same digit: a cache hit"),
    ({"content": orjson.dumps({"pixels": [True] * 784})}, "booleans are refused"),
    ({"content": orjson.dumps({"pixels": [300] * 784})}, "out of range"),
    ({"content": orjson.dumps({"pixels": [1.5] * 784})}, "floats are rounded"),
    ({"content": b"{not json"}, "not JSON"),
    ({"content": b""}, "an empty body"),
    ({"content": b"x", "headers": {"Content-Type": "text/plain"}}, "an unsupported type"),
    ({"content": orjson.dumps({"pixels": [0] * 784}),
      "headers": {"X-Model-Version": "v9"}}, "an unknown version"),
    ({"content": orjson.dumps({"pixels": [0] * 784}),
      "headers": {"X-Model-Version": "no/such"}}, "a malformed version"),
]


V2_DIGIT = {"inputs": [{"name": "pixels", "shape": [1, 784], "datatype": "UINT8",
                        "data": [0] * 784}]}
V2_BINARY_HEAD = orjson.dumps({"inputs": [{"name": "pixels", "shape": [2, 784], "datatype": "UINT8",
                                           "parameters": {"binary_data_size": 2 * 784}}],
                               "parameters": {"binary_data_output": True}})
# (path, what is sent, why): the answers and refusals a v2 client meets
V2_REQUESTS = [
    ("/v2/models/mnist-cnn/infer", {"content": orjson.dumps(V2_DIGIT)}, "a digit"),
    ("/v2/models/mnist-cnn/infer", {"content": orjson.dumps({**V2_DIGIT, "id": "a-1"})},
     "the same digit with an id: a cache hit"),
    ("/v2/models/mnist-cnn/infer",
     {"content": V2_BINARY_HEAD + bytes(range(256)) * 6 + bytes(32),
      "headers": {"Inference-Header-Content-Length": str(len(V2_BINARY_HEAD))}},
     "two digits as binary data, answered in binary"),
    ("/v2/models/mnist-cnn/versions/v1/infer", {"content": orjson.dumps(V2_DIGIT)},
     "a pinned version"),
    ("/v2/models/mnist-cnn/versions/production/infer", {"content": orjson.dumps(V2_DIGIT)},
     "a pinned alias"),
    ("/v2/models/mnist-cnn/versions/v9/infer", {"content": orjson.dumps(V2_DIGIT)},
     "an unknown version"),
    ("/v2/models/mnist-cnn/versions/no.such/infer", {"content": orjson.dumps(V2_DIGIT)},
     "a malformed version"),
    ("/v2/models/other/infer", {"content": orjson.dumps(V2_DIGIT)}, "an unknown model"),
    ("/v2/models/mnist-cnn/infer", {"content": orjson.dumps(
        {"inputs": [{"name": "pixels", "shape": [64, 784], "datatype": "UINT8",
                     "data": [7] * 64 * 784}]})}, "64 digits: an answer GZip compresses"),
    ("/v2/models/mnist-cnn/infer", {"content": b"{not json"}, "not JSON"),
    ("/v2/models/mnist-cnn/infer",
     {"content": b"\x1f\x8b", "headers": {"Content-Encoding": "gzip"}}, "a compressed body"),
]


def comparable(reply, *, id_in_body: bool = True) -> tuple[int, bytes, dict[str, str]]:
    """The reply without its request id (each request gets its own). Our refusals carry it in
    the body too; the v2 protocol's (``{"error": ...}``) do not."""
    kept = {name: value for name, value in reply.headers.items()
            if name not in ("x-request-id", "date")}  # each its own; date: only over HTTP
    assert reply.headers["x-request-id"]
    body = reply.content
    if reply.status_code >= 400:
        document = orjson.loads(body)
        if id_in_body:
            assert document.pop("request_id") == reply.headers["x-request-id"]
        else:
            assert set(document) == {"error"}
        body = orjson.dumps(document)
    return reply.status_code, body, kept
