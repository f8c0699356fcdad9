"""Liveness (``/healthz``) and readiness (``/readyz``: database and cache reachable)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
def readyz(request: Request) -> Any:
    checks: dict[str, str] = {}
    ok = True
    try:
        request.app.state.service.store.ping()
        checks["database"] = "ok"
    except Exception as e:
        ok, checks["database"] = False, f"unreachable: {type(e).__name__}"
    cache = request.app.state.service.cache
    checks["cache"] = "ok" if cache is not None else "unavailable"
    sched = request.app.state.scheduler
    checks["scheduler"] = "ok" if sched is None or sched.last_tick is not None else "starting"
    ok = ok and checks["scheduler"] == "ok"
    return JSONResponse(
        {"status": "ready" if ok else "not ready", "checks": checks}, 200 if ok else 503
    )
