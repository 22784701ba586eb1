"""/openapi.json is whole and honest: valid OpenAPI 3.1, every reference resolves, and its request
schemas accept exactly what the service accepts (tests/e2e/test_openapi_contract.py fuzzes it)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from service.api.app import create_app
from service.api.inputs import InputError, digit_from_json
from service.settings import Settings

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def document(**settings: Any) -> dict[str, Any]:
    return create_app(Settings(_env_file=None, **settings)).openapi()  # type: ignore[call-arg]


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("$ref", "operationRef") and isinstance(value, str):
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for item in node:
            yield from references(item)


def resolves(whole: dict[str, Any], reference: str) -> bool:
    if not reference.startswith("#/"):
        return False  # the document is self-contained
    target: Any = whole
    for part in reference[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(target, dict) or part not in target:
            return False
        target = target[part]
    return True


def responses(whole: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in whole["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                for status, response in operation["responses"].items():
                    yield f"{method.upper()} {path}", status, response


def test_the_document_is_valid_openapi_3_1():
    whole = document()
    assert whole["openapi"].startswith("3.1.")
    validate(whole)  # raises, saying where, when it is not


def test_every_reference_in_the_document_resolves():
    whole = document()
    found = list(references(whole))
    assert any("PixelsIn" in reference for reference in found)
    assert [reference for reference in found if not resolves(whole, reference)] == []


def test_request_bodies_refer_to_models_in_components():
    whole = document()
    schemas = whole["components"]["schemas"]
    predict = whole["paths"]["/predict"]["post"]["requestBody"]["content"]
    batch = whole["paths"]["/predict/batch"]["post"]["requestBody"]["content"]
    assert predict["application/json"]["schema"] == {"$ref": "#/components/schemas/PixelsIn"}
    assert predict["multipart/form-data"]["schema"] == {"$ref": "#/components/schemas/UploadIn"}
    assert batch["application/json"]["schema"] == {"$ref": "#/components/schemas/BatchIn"}
    assert {"PixelsIn", "BatchIn", "UploadIn"} <= set(schemas)
    assert not any("$defs" in schema for schema in schemas.values())


def test_the_batch_limit_in_the_schema_is_this_instances_setting():
    items = document(batch_max_items=7)["components"]["schemas"]["BatchIn"]["properties"]["items"]
    assert (items["minItems"], items["maxItems"]) == (1, 7)


PIXELS = {
    "784 zeros": [0] * 784,
    "28 rows of 28": [[255] * 28] * 28,
    "fractions in range": [127.5] * 784,
    "783 numbers": [0] * 783,
    "785 numbers": [0] * 785,
    "a pixel over 255": [0] * 783 + [255.5],
    "a negative pixel": [-1] + [0] * 783,
    "booleans": [True] * 784,
    "strings": ["0"] * 784,
    "nulls": [None] * 784,
    "27 rows": [[0] * 28] * 27,
    "a short row": [[0] * 28] * 27 + [[0] * 27],
    "28 rows of 28 rows": [[[0] * 28] * 28] * 28,
    "an object": {"0": 0},
}


@pytest.mark.parametrize("case", PIXELS)
def test_the_pixels_schema_accepts_exactly_what_the_service_accepts(case: str):
    whole = document()
    schema = {"$ref": "#/components/schemas/PixelsIn", "components": whole["components"]}
    body = {"pixels": PIXELS[case], "note": "other fields are ignored"}
    schema_accepts = Draft202012Validator(schema).is_valid(body)
    try:
        digit_from_json(orjson.dumps(body))
        service_accepts = True
    except InputError as refusal:
        service_accepts = False
        assert refusal.status_code == 422
    assert schema_accepts == service_accepts


def test_every_error_answer_declares_its_json_body_and_every_answer_its_request_id():
    """Our error body, or under /v2 the Open Inference Protocol's ``{"error": ...}``."""
    whole = document()
    for operation, status, response in responses(whole):
        assert "X-Request-ID" in response["headers"], (operation, status)
        if int(status) >= 400:
            (schema,) = [media["schema"] for media in response["content"].values()]
            expected = {"GET /ready": "ReadyOut"}.get(operation) or (
                "V2ErrorOut" if operation.split()[1].startswith("/v2") else "ErrorOut")
            assert schema == {"$ref": f"#/components/schemas/{expected}"}, (operation, status)
        if status == "503" and operation != "GET /ready":
            assert "Retry-After" in response["headers"], operation
    assert "HTTPValidationError" not in whole["components"]["schemas"]


def test_each_route_declares_the_statuses_it_answers():
    whole = document()
    declared = {
        f"{method.upper()} {path}": set(operation["responses"])
        for path, item in whole["paths"].items()
        for method, operation in item.items()
    }
    # 404: a pinned version (X-Model-Version, ?version=) the registry does not know
    assert declared["POST /predict"] == {"200", "400", "404", "413", "415", "422", "500", "503"}
    assert declared["POST /predict/batch"] == {"200", "400", "404", "413", "422", "500", "503"}
    assert {"202", "400", "404", "413", "415", "422", "503"} <= declared["POST /classify"]
    # an id that is no id is unknown (404): nothing in that route can fail validation
    assert declared["GET /result/{inference_id}"] == {"200", "202", "404", "503"}
    assert declared["GET /model-info"] == {"200", "304", "404", "422", "503"}
    assert declared["GET /ready"] == {"200", "503"}
    assert declared["GET /drift"] == {"200", "404", "422", "503"}
    # the v2 paths' names are plain strings too: an unknown model or version is 404; a bad
    # inference request is 400, as the protocol says
    assert declared["GET /v2/models/{model}/versions/{version}/ready"] == {"200", "404", "503"}
    assert "422" not in declared["POST /v2/models/{model}/infer"]


def test_the_admin_operations_declare_their_refusals():
    whole = document(admin_token="a-token-of-sixteen-chars")
    declared = {
        f"{method.upper()} {path}": set(operation["responses"])
        for path, item in whole["paths"].items() if path.startswith("/admin")
        for method, operation in item.items()
    }
    assert declared["POST /admin/reload"] == {"200", "401", "403", "503"}  # 503: LOAD_MODEL=false
    assert declared["GET /admin/models"] == {"200", "401", "403", "503"}
    assert declared["PUT /admin/traffic"] == {"200", "401", "403", "422", "503"}
    assert declared["GET /admin/traffic"] == {"200", "401", "403"}


def test_the_routes_that_answer_with_a_model_take_a_pin_and_name_the_version_that_answered():
    whole = document()
    for path in ("/predict", "/predict/batch", "/classify"):
        names = {p["name"] for p in whole["paths"][path]["post"]["parameters"]}
        assert names == {"X-Model-Version", "version", "X-Client-Id"}, path
    for path in ("/predict", "/predict/batch"):
        headers = whole["paths"][path]["post"]["responses"]["200"]["headers"]
        assert headers["X-Model-Version"]["required"]
    for path in ("/model-info", "/drift"):  # they describe a version: pinned, or the default
        assert {"X-Model-Version", "version"} <= {
            p["name"] for p in whole["paths"][path]["get"]["parameters"]}, path


def test_the_v2_protocol_operations_name_this_instances_model_and_batch_limit():
    whole = document(model_name="digits", batch_max_items=7)
    infer = whole["paths"]["/v2/models/{model}/versions/{version}/infer"]["post"]
    parameters = {p["name"]: p for p in infer["parameters"]}
    assert parameters["model"]["schema"] == {"type": "string", "enum": ["digits"]}
    assert parameters["version"]["schema"]["pattern"]
    assert parameters["Inference-Header-Content-Length"]["in"] == "header"
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    assert set(infer["responses"]["200"]["content"]) == {"application/json",
                                                          "application/octet-stream"}
    for shape in whole["components"]["schemas"]["V2ShapeIn"]["anyOf"]:
        assert (shape["prefixItems"][0]["minimum"], shape["prefixItems"][0]["maximum"]) == (1, 7)


def test_the_v2_protocol_routes_declare_the_statuses_they_answer():
    whole = document()
    declared = {
        f"{method.upper()} {path}": set(operation["responses"])
        for path, item in whole["paths"].items() if path.startswith("/v2")
        for method, operation in item.items()
    }
    for infer in ("/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer"):
        assert declared[f"POST {infer}"] == {"200", "400", "404", "413", "415", "500", "503"}
    assert declared["GET /v2/health/live"] == {"200"}
    assert declared["GET /v2/health/ready"] == {"200", "503"}
    assert declared["GET /v2/models/{model}/versions/{version}"] == {"200", "404", "503"}
    assert declared["GET /v2/models/{model}/ready"] == {"200", "404", "503"}


def test_the_websocket_is_not_an_http_operation_and_its_protocol_is_in_the_description():
    whole = document()
    assert "/ws/predict" not in whole["paths"]
    description = whole["info"]["description"]
    assert "## WebSocket `/ws/predict`" in description
    assert "Close codes" in description and "WS_MAX_IN_FLIGHT" in description
