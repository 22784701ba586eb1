"""Request ids, JSON logs and the last-resort 500: what an operator sees when something breaks."""

from __future__ import annotations

import logging

import orjson
from support.app import serving, settings_for

from service.observability import JsonFormatter


async def test_an_unexpected_error_is_a_json_500_with_the_request_id_logged(registry_dir, caplog):
    async with serving(settings_for(registry_dir)) as (app, client):

        @app.get("/explode")
        async def explode() -> None:
            raise ZeroDivisionError("a bug")

        answer = await client.get("/explode", headers={"X-Request-ID": "boom-1"})
        metrics = (await client.get("/metrics")).text
        after = await client.get("/health")
    assert answer.status_code == 500
    assert answer.json() == {"detail": "internal server error", "request_id": "boom-1"}
    assert answer.headers["x-request-id"] == "boom-1"
    assert 'route="/explode",status="500"' in metrics
    assert after.status_code == 200
    (record,) = [r for r in caplog.records if r.getMessage() == "unhandled error"]
    line = orjson.loads(JsonFormatter().format(record))
    assert line["level"] == "error" and line["path"] == "/explode"
    assert "ZeroDivisionError: a bug" in line["error"]


def test_json_log_lines_carry_the_request_id_and_extras():
    from service.observability import request_id_var

    token = request_id_var.set("abc123")
    try:
        record = logging.LogRecord("service.x", logging.INFO, "", 1, "hello %s", ("you",), None)
        record.version = "v2"
        line = orjson.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert line["message"] == "hello you" and line["request_id"] == "abc123"
    assert line["version"] == "v2" and line["logger"] == "service.x" and line["ts"].endswith("Z")


async def test_unknown_paths_are_404_json_counted_under_one_label(registry_dir):
    async with serving(settings_for(registry_dir)) as (_, client):
        for path in ("/nope", "/wp-admin", "/predict/../../etc"):
            answer = await client.get(path)
            assert answer.status_code == 404 and "request_id" in answer.json()
        metrics = (await client.get("/metrics")).text
    assert 'route="unmatched",status="404"' in metrics
    assert "wp-admin" not in metrics, "raw paths never become label values"
