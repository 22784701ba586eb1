"""The admin API: reload aliases, read and change the traffic policy, list loaded versions.

Mounted only when ``ADMIN_TOKEN`` is set (otherwise these paths are 404, and absent from /docs);
every call needs ``Authorization: Bearer <ADMIN_TOKEN>``: 401 without it, 403 with another token
(compared in constant time). A traffic change is validated, its versions loaded and verified
first, then applied in one assignment; it lasts until the process restarts (set CANARY_* and
SHADOW_* to keep it).
"""

from __future__ import annotations

import hmac

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.responses import Response

from service.api.deps import PoolDep, RouterDep, SettingsDep
from service.api.inputs import InputError
from service.api.schemas import error_responses
from service.inference.pool import VersionNotFound
from service.inference.router import TrafficPolicy

JSON = "application/json"


async def require_admin(request: Request, settings: SettingsDep) -> None:
    """The bearer token must be ADMIN_TOKEN's."""
    token = settings.admin_token
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if token is None or scheme.lower() != "bearer" or not given:
        raise HTTPException(401, "send 'Authorization: Bearer <ADMIN_TOKEN>'",
                            headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise HTTPException(403, "that token is not this service's ADMIN_TOKEN")


router = APIRouter(
    prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)],
    responses=error_responses(401, 403, descriptions={
        401: "No 'Authorization: Bearer' header.", 403: "Not this service's admin token."}),
)


# PUT /admin/traffic and its answer (also GET): which aliases take which share of requests.
class TrafficIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    canary_alias: str | None = Field(None, description="Alias whose version takes the canary.")
    canary_percent: float = Field(0.0, ge=0, le=100, description="Share of unpinned requests.")
    shadow_alias: str | None = Field(None, description="Alias that also answers, off the path.")
    shadow_percent: float = Field(0.0, ge=0, le=100, description="Share copied to the shadow.")


NO_MODEL_REFUSAL = {503: "No model on this instance (LOAD_MODEL=false): ask an instance that "
                    "serves one."}


@router.post(
    "/reload", responses=error_responses(503, descriptions=NO_MODEL_REFUSAL),
    summary="Check the registry's aliases now (instead of at the next poll)",
)
async def reload(pool: PoolDep) -> Response:
    """Loads what followed aliases point at now; says which could not move, and why."""
    failures = await pool.refresh()
    body = {"aliases": dict(pool.following), "alias_failures": failures}
    return Response(orjson.dumps(body), media_type=JSON)


@router.get("/traffic", response_model=TrafficIn, summary="The traffic policy in effect")
async def get_traffic(router_: RouterDep) -> Response:
    return Response(orjson.dumps(router_.policy.as_dict()), media_type=JSON)


@router.put(
    "/traffic",
    response_model=TrafficIn,
    responses=error_responses(422, 503, descriptions={
        422: "An invalid policy (the message says which field and why), or an alias the "
        "registry does not have.",
        503: "A version the policy names cannot be loaded now, the registry is unreachable, or "
        "this instance has no model (LOAD_MODEL=false); the policy in effect is unchanged.",
    }),
    summary="Change canary and shadow traffic (validated, loaded, then applied at once)",
)
async def put_traffic(body: TrafficIn, pool: PoolDep, router_: RouterDep) -> Response:
    """422 for an invalid policy or an alias the registry does not have; 503 when a version it
    names cannot be loaded (the policy in effect is then unchanged)."""
    try:
        policy = TrafficPolicy(**body.model_dump())
    except ValueError as exc:
        raise InputError(str(exc), 422) from None
    try:
        await pool.adopt(policy.aliases())
    except VersionNotFound as exc:
        raise InputError(str(exc), 422) from None
    router_.policy = policy
    return Response(orjson.dumps(policy.as_dict()), media_type=JSON)


@router.get(
    "/models", responses=error_responses(503, descriptions=NO_MODEL_REFUSAL),
    summary="Loaded versions: runtime, memory, inputs served, aliases",
)
async def models(pool: PoolDep) -> Response:
    return Response(orjson.dumps(pool.describe()), media_type=JSON)

