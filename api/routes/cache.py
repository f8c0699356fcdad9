"""``/v1/cache``: what the stage cache holds and saves; eviction by key or by study."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse

from api.deps import Authorized, ServiceDep
from api.routes.studies import ERRORS
from api.schemas import EvictIn
from api.service import ServiceError, StudyService

router = APIRouter(prefix="/cache", tags=["cache"])


def _cache(svc: StudyService) -> Any:
    if svc.cache is None:
        raise ServiceError(503, "the stage cache is unavailable", "cache_unavailable")
    return svc.cache


@router.get("", response_model=None)
def cache_summary(
    svc: ServiceDep,
    pipeline: Annotated[str | None, Query(max_length=300)] = None,
    limit: Annotated[int, Query(ge=0, le=100_000)] = 1000,
) -> Any:
    ents = [e for e in _cache(svc).entries() if pipeline is None or e.pipeline == pipeline]
    ents.sort(key=lambda e: e.created)
    return JSONResponse(
        {
            "entries": [e.to_dict() for e in ents[:limit]],
            "count": len(ents),
            "bytes": sum(e.bytes for e in ents),
            "hits": sum(e.hits for e in ents),
            "compute_seconds_saved": sum(e.hits * e.compute_cost for e in ents),
        }
    )


@router.delete(
    "/entries/{key}",
    status_code=200,
    dependencies=[Authorized],
    responses=ERRORS,
    response_model=None,
)
def delete_entry(svc: ServiceDep, key: str = Path(min_length=1, max_length=128)) -> Any:
    if not _cache(svc).delete(key):
        raise ServiceError(404, f"no cache entry {key!r}", "not_found")
    return JSONResponse({"deleted": [key]})


@router.post("/evict", dependencies=[Authorized], responses=ERRORS, response_model=None)
def evict(body: EvictIn, svc: ServiceDep) -> Any:
    """Delete entries by key, and/or every entry a study computed (its stage runs' keys)."""
    if not body.keys and body.study_id is None:
        raise ServiceError(422, "give 'keys' or 'study_id'", "invalid_request")
    keys = list(body.keys)
    if body.study_id is not None:
        svc.get_study(body.study_id)
        keys += svc.store.stage_keys(body.study_id)
    c = _cache(svc)
    deleted = [k for k in dict.fromkeys(keys) if c.delete(k)]
    return JSONResponse({"deleted": deleted, "missing": [k for k in keys if k not in deleted]})
