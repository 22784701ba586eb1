"""The OpenAPI document (/openapi.json, /docs): FastAPI's, completed where FastAPI cannot see.

FastAPI documents what routes declare through their parameters and models. Added here, in one
place, so that every ``$ref`` resolves and the document describes this instance:

- the request bodies' definitions: the hot routes parse bodies themselves (routes/predict.py),
  so they name their models with ``$ref``s into ``components/schemas`` (``schemas.ref``);
- what is a setting: BATCH_MAX_ITEMS, and MODEL_NAME in the v2 protocol's paths;
- the error body of validation errors: errors.py answers them as ``ErrorOut``, not as FastAPI's
  ``HTTPValidationError``; and no 422 where nothing can fail validation;
- the ``X-Request-ID`` header, on every answer (observability.RequestContextMiddleware);
- WebSocket routes, which OpenAPI has no way to describe: each one's protocol (its endpoint's
  docstring) goes into the description at the top of /docs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import WebSocketRoute

from service.api.schemas import COMPONENTS, REQUEST_MODELS, VERSION_REF, BatchIn, ErrorOut
from service.api.v2_schemas import V2_MODELS, V2ShapeIn
from service.settings import Settings

REQUEST_ID = {
    "description": "This request's id: the client's own X-Request-ID when it is 1-128 of "
    "A-Za-z0-9._:- (else a new one); the logs carry it too.",
    "required": True,
    "schema": {"type": "string"},
}
FASTAPI_VALIDATION_ERRORS = ("HTTPValidationError", "ValidationError")
FASTAPI_422 = "Validation Error"  # the description of the 422 FastAPI adds by itself
METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def operation_id(route: APIRoute) -> str:
    """An operation's id is its endpoint's name (predict, predict_batch, model_info ...): what
    generated clients name their calls, so FastAPI's path-and-method suffix is left off."""
    return route.name


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Make ``app.openapi()`` (and so /openapi.json and /docs) serve the completed document."""
    generate = app.openapi  # FastAPI's: builds the document once, again only if routes change
    completed: dict[str, Any] | None = None

    def openapi() -> dict[str, Any]:
        nonlocal completed
        document = generate()
        if document is not completed:
            completed = complete(document, app, settings)
        return completed

    app.openapi = openapi  # type: ignore[method-assign]


def complete(document: dict[str, Any], app: FastAPI, settings: Settings) -> dict[str, Any]:
    """FastAPI's ``document``, completed in place (see the module docstring), and returned."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for model in (*REQUEST_MODELS, *V2_MODELS):
        definition = model.model_json_schema(ref_template=COMPONENTS + "{model}")
        schemas.update(definition.pop("$defs", {}))
        schemas[model.__name__] = definition
    schemas[BatchIn.__name__]["properties"]["items"]["maxItems"] = settings.batch_max_items
    # Before the v2 paths' parameters get their instance's schemas: until then they are the plain
    # strings FastAPI sees (and never refuses).
    _drop_validation_errors_nothing_can_cause(document)
    _state_v2_settings(document, settings)
    _answer_validation_errors_with_error_out(document)
    for operation in _operations(document):
        for response in operation["responses"].values():
            response["headers"] = {**response.get("headers", {}), "X-Request-ID": REQUEST_ID}
    websockets = websocket_docs(app)
    if websockets:
        info = document["info"]
        info["description"] = "\n\n".join(filter(None, [info.get("description"), websockets]))
    return document


def websocket_routes(app: FastAPI) -> dict[str, Callable[..., Any]]:
    """Path -> endpoint of every WebSocket route the app serves."""
    return {
        context.path: context.endpoint
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, WebSocketRoute)
    }


def websocket_docs(app: FastAPI) -> str:
    """A Markdown section per WebSocket route: its path, then its endpoint's docstring."""
    sections = [
        f"## WebSocket `{path}`\n\n{inspect.getdoc(endpoint) or ''}".rstrip()
        for path, endpoint in websocket_routes(app).items()
    ]
    if not sections:
        return ""
    intro = "The HTTP operations are listed below. The WebSocket ones, which OpenAPI cannot list:"
    return "\n\n".join([intro, *sections])


def _state_v2_settings(document: dict[str, Any], settings: Settings) -> None:
    """The v2 paths name this instance's model, and its shapes its largest batch."""
    for shape in document["components"]["schemas"][V2ShapeIn.__name__]["anyOf"]:
        shape["prefixItems"][0]["maximum"] = settings.batch_max_items
    path_schemas = {"model": {"type": "string", "enum": [settings.model_name]},
                    "version": VERSION_REF}
    for path, path_item in document.get("paths", {}).items():
        if not path.startswith("/v2"):
            continue
        for method, operation in path_item.items():
            if method not in METHODS:
                continue
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] in path_schemas:
                    parameter["schema"] = path_schemas[parameter["name"]]


def _drop_validation_errors_nothing_can_cause(document: dict[str, Any]) -> None:
    """FastAPI lists a 422 for every operation with a parameter; one whose parameters are all
    plain strings, with no body, never answers it (GET /result/{inference_id} and the v2 paths:
    an id or a name that is not one is unknown, 404)."""
    for operation in _operations(document):
        responses = operation["responses"]
        if (
            responses.get("422", {}).get("description") == FASTAPI_422
            and "requestBody" not in operation
            and all(set(parameter.get("schema", {})) <= {"type", "title"}
                    and parameter["schema"].get("type") == "string"
                    for parameter in operation.get("parameters", []))
        ):
            del responses["422"]


def _answer_validation_errors_with_error_out(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for name in FASTAPI_VALIDATION_ERRORS:
        schemas.pop(name, None)
    error_out = {"$ref": f"{COMPONENTS}{ErrorOut.__name__}"}
    schemas.setdefault(ErrorOut.__name__, ErrorOut.model_json_schema())
    for operation in _operations(document):
        for response in operation["responses"].values():
            for media in response.get("content", {}).values():
                if media.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                    media["schema"] = error_out


def _operations(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for path_item in document.get("paths", {}).values():
        for method, operation in path_item.items():
            if method in METHODS:
                yield operation
