"""Liveness (``/healthz``) and readiness (``/readyz``: database reachable, cache writable)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.routes.studies import errors
from api.schemas import HealthOut, ReadyOut

router = APIRouter(tags=["health"])


@router.get("/healthz", responses=errors(400), response_model=HealthOut)
def healthz() -> Any:
    return {"status": "ok"}


def _cache_check(cache: Any) -> str:
    """``ok``, or why the cache cannot take new outputs (a full or read-only disk makes
    every trial recompute everything: the server is not ready)."""
    if cache is None:
        return "unavailable"
    probe = getattr(cache, "check_writable", None)
    if probe is None:
        return "ok"
    try:
        reason = probe()
    except Exception as e:
        return f"not writable: {type(e).__name__}: {e}"[:500]
    return "ok" if reason is None else f"not writable: {reason}"[:500]


@router.get(
    "/readyz",
    responses={**errors(400), 503: {"model": ReadyOut, "description": "not ready"}},
    response_model=ReadyOut,
)
def readyz(request: Request) -> Any:
    checks: dict[str, str] = {}
    try:
        request.app.state.service.store.ping()
        checks["database"] = "ok"
    except Exception as e:
        checks["database"] = f"unreachable: {type(e).__name__}"
    checks["cache"] = _cache_check(request.app.state.service.cache)
    sched = request.app.state.scheduler
    checks["scheduler"] = "ok" if sched is None or sched.last_tick is not None else "starting"
    # A cache that could not be opened leaves the API usable (trials just recompute); one
    # that is there but refuses writes is a fault to report.
    ok = (
        checks["database"] == "ok"
        and checks["scheduler"] == "ok"
        and not checks["cache"].startswith("not writable")
    )
    body = ReadyOut(status="ready" if ok else "not ready", checks=checks)
    return JSONResponse(body.model_dump(), 200 if ok else 503)
