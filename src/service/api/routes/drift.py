"""GET /drift: a served version's latest inputs against its release reference."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from service.api.deps import PoolDep, pinned_ref
from service.api.schemas import ROUTING_PARAMETERS, DriftOut, error_responses

router = APIRouter(tags=["operations"])
REFUSALS = {
    422: "The pin is neither a version (v3) nor an alias name.",
    503: "No model on this instance (LOAD_MODEL=false), or the pinned version cannot be "
    "loaded now: retry after Retry-After seconds.",
}


@router.get(
    "/drift",
    response_model=DriftOut,
    responses=error_responses(404, 422, 503, descriptions=REFUSALS),
    openapi_extra={"parameters": ROUTING_PARAMETERS["parameters"][:2]},
    summary="Drift of a version's live inputs from its release reference",
)
async def drift(request: Request, pool: PoolDep) -> Response:
    """Per signal (predicted class, confidence, mean ink, ink box, lit fraction), PSI and a test
    against the evaluation split recorded at release (chi-square for the classes,
    Kolmogorov-Smirnov for the others) over the latest DRIFT_WINDOW inputs the version computed,
    and the verdict: of the default alias's version, or of the one pinned with X-Model-Version
    or ?version=. A version published without a reference has no figures ('no reference')."""
    ref = pinned_ref(request) or pool.default_alias
    served = pool.lookup(ref) or await pool.get(ref)
    return Response(orjson.dumps(await pool.drift.report(served.version)),
                    media_type="application/json")
