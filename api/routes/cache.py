"""``/v1/cache``: what the stage cache holds and saves; eviction by key or by study.

Keys arrive from clients, and a key names a file: each one is checked with
``cache.keys.check_key`` (in the schema, and for the path parameter here) before the cache
sees it, so ``../x`` or a NUL byte is a 422, never a file operation.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.deps import Authorized, CacheKeyPath, ServiceDep
from api.errors import InvalidRequest, NotFound, Unavailable
from api.routes.studies import ERRORS, READ_ERRORS, errors
from api.schemas import CacheSummary, Deleted, Evicted, EvictIn
from api.service import StudyService
from cache.keys import InvalidKey, check_key

router = APIRouter(prefix="/cache", tags=["cache"])
UNAVAILABLE = errors(503)


def _cache(svc: StudyService) -> Any:
    if svc.cache is None:
        raise Unavailable("the stage cache is unavailable", "cache_unavailable")
    return svc.cache


@router.get("", responses={**READ_ERRORS, **UNAVAILABLE}, response_model=CacheSummary)
def cache_summary(
    svc: ServiceDep,
    pipeline: Annotated[str | None, Query(max_length=300)] = None,
    limit: Annotated[int, Query(ge=0, le=100_000)] = 1000,
) -> Any:
    ents = [e for e in _cache(svc).entries() if pipeline is None or e.pipeline == pipeline]
    ents.sort(key=lambda e: e.created)
    return {
        "entries": [e.to_dict() for e in ents[:limit]],
        "count": len(ents),
        "bytes": sum(e.bytes for e in ents),
        "hits": sum(e.hits for e in ents),
        "compute_seconds_saved": sum(e.hits * e.compute_cost for e in ents),
    }


@router.delete(
    "/entries/{key}",
    status_code=200,
    dependencies=[Authorized],
    responses={**ERRORS, **UNAVAILABLE},
    response_model=Deleted,
)
def delete_entry(svc: ServiceDep, key: CacheKeyPath) -> Any:
    try:
        key = check_key(key)
    except InvalidKey as e:
        raise InvalidRequest(str(e), "invalid_key") from None
    if not _cache(svc).delete(key):
        raise NotFound(f"no cache entry {key!r}", "not_found")
    return {"deleted": [key]}


@router.post(
    "/evict",
    dependencies=[Authorized],
    responses={**ERRORS, **UNAVAILABLE},
    response_model=Evicted,
)
def evict(body: EvictIn, svc: ServiceDep) -> Any:
    """Delete entries by key, and/or every entry a study computed (its stage runs' keys)."""
    keys = list(body.keys)
    if body.study_id is not None:
        svc.get_study(body.study_id)
        for k in svc.store.stage_keys(body.study_id):
            try:
                keys.append(check_key(k))
            except InvalidKey:  # a row of an older version: nothing the cache could hold
                continue
    c = _cache(svc)
    deleted = [k for k in dict.fromkeys(keys) if c.delete(k)]
    return {"deleted": deleted, "missing": [k for k in keys if k not in deleted]}
