"""POST /predict and the v2 protocol's infer are served ahead of FastAPI's middleware stack
(``app.HotRoutes``): whatever a request is, the hot path answers exactly what the whole stack
answers, and records the same."""

from __future__ import annotations

import orjson
from prometheus_client import REGISTRY
from support.app import serving, settings_for
from support.hot_requests import REQUESTS, V2_REQUESTS, comparable

from service.api.app import ServiceApp


def _predict_requests(status: str) -> float:
    value = REGISTRY.get_sample_value(
        "lab2prod_http_requests_total",
        {"route": "/predict", "method": "POST", "status": status, "model_version": ""})
    return value or 0.0


async def test_the_hot_path_answers_every_request_as_the_whole_stack_does(registry_dir):
    answers: dict[str, list[tuple[int, bytes, dict[str, str]]]] = {}
    async with serving(settings_for(registry_dir)) as (app, client):
        assert isinstance(app, ServiceApp) and app.hot is not None
        assert set(app.hot.routes) == {"/predict"}
        hot = app.hot
        for path_name, served_by in (("hot", hot), ("stack", None)):
            app.hot = served_by
            app.state.cache.memory.clear()  # each pass meets the cache empty
            answers[path_name] = []
            for request, _ in REQUESTS:
                headers = {"Content-Type": "application/json", **request.get("headers", {})}
                reply = await client.post("/predict", content=request["content"],
                                          headers=headers)
                answers[path_name].append(comparable(reply))
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


async def test_v2_infer_is_hot_and_answers_every_request_as_the_whole_stack_does(
    registry_dir,
):
    answers: dict[str, list[tuple[int, bytes, dict[str, str]]]] = {}
    async with serving(settings_for(registry_dir)) as (app, client):
        hot = app.hot
        assert hot is not None
        served_hot: list[str] = []
        handler_for = hot.handler_for

        def noting(scope):
            handler = handler_for(scope)
            if handler is not None:
                served_hot.append(scope["path"])
            return handler

        hot.handler_for = noting  # type: ignore[method-assign]
        for path_name, served_by in (("hot", hot), ("stack", None)):
            app.hot = served_by
            app.state.cache.memory.clear()
            answers[path_name] = []
            for path, request, _ in V2_REQUESTS:
                for accept in ("identity", "gzip"):
                    headers = {"Content-Type": "application/json", "Accept-Encoding": accept,
                               **request.get("headers", {})}
                    reply = await client.post(path, content=request["content"], headers=headers)
                    answers[path_name].append(comparable(reply, id_in_body=False))
        app.hot = hot
    assert served_hot == [path for path, _, _ in V2_REQUESTS for _ in range(2)]
    whys = [f"{why}, accepting {accept}" for _, _, why in V2_REQUESTS
            for accept in ("identity", "gzip")]
    for why, hot_answer, stack_answer in zip(whys, answers["hot"], answers["stack"], strict=True):
        assert hot_answer == stack_answer, why
    assert [status for status, _, _ in answers["hot"][::2]] == [200, 200, 200, 200, 200, 404,
                                                                404, 404, 200, 400, 415]
    hot_answers = dict(zip(whys, answers["hot"], strict=True))
    large = "64 digits: an answer GZip compresses, accepting"
    assert hot_answers[f"{large} gzip"][2]["content-encoding"] == "gzip"
    assert "content-encoding" not in hot_answers[f"{large} identity"][2]
