"""POST /predict is served ahead of FastAPI's middleware stack (``app.HotRoutes``): whatever a
request is, the hot path answers exactly what the whole stack answers, and records the same."""

from __future__ import annotations

import orjson
from prometheus_client import REGISTRY
from support.app import serving, settings_for

from service.api.app import ServiceApp

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


def _predict_requests(status: str) -> float:
    value = REGISTRY.get_sample_value(
        "lab2prod_http_requests_total",
        {"route": "/predict", "method": "POST", "status": status, "model_version": ""})
    return value or 0.0


async def test_the_hot_path_answers_every_request_as_the_whole_stack_does(registry_dir):
    answers: dict[str, list[tuple[int, bytes, dict[str, str]]]] = {}
    async with serving(settings_for(registry_dir)) as (app, client):
        assert isinstance(app, ServiceApp) and app.hot is not None
        assert app.hot.paths == {"/predict"}
        hot = app.hot
        for path_name, served_by in (("hot", hot), ("stack", None)):
            app.hot = served_by
            app.state.cache.memory.clear()  # each pass meets the cache empty
            answers[path_name] = []
            for request, _ in REQUESTS:
                headers = {"Content-Type": "application/json", **request.get("headers", {})}
                reply = await client.post("/predict", content=request["content"],
                                          headers=headers)
                kept = {name: value for name, value in reply.headers.items()
                        if name != "x-request-id"}
                assert reply.headers["x-request-id"]
                body = reply.content
                if reply.status_code >= 400:  # refusals carry their request id in the body
                    document = orjson.loads(body)
                    assert document.pop("request_id") == reply.headers["x-request-id"]
                    body = orjson.dumps(document)
                answers[path_name].append((reply.status_code, body, kept))
        app.hot = hot
    for (_, why), hot_answer, stack_answer in zip(REQUESTS, answers["hot"],
                                                        answers["stack"], strict=True):
        assert hot_answer == stack_answer, why
    assert [status for status, _, _ in answers["hot"]] == [200, 200, 422, 422, 200, 400, 400,
                                                           415, 404, 422]


async def test_the_hot_path_keeps_the_clients_request_id_and_labels_its_metrics(registry_dir):
    async with serving(settings_for(registry_dir)) as (_, client):
        refused_before = _predict_requests("400")
        reply = await client.post("/predict", content=b"{not json",
                                  headers={"Content-Type": "application/json",
                                           "X-Request-ID": "client-chosen-1"})
        assert reply.status_code == 400
        assert reply.headers["x-request-id"] == "client-chosen-1"
        assert orjson.loads(reply.content)["request_id"] == "client-chosen-1"
        assert _predict_requests("400") == refused_before + 1
        assert (await client.get("/predict")).status_code == 405  # other methods: the stack
