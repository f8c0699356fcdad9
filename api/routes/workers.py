"""``/v1/workers``: the executor and its workers (local processes or the Dask cluster)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import ExecutorDep

router = APIRouter(prefix="/workers", tags=["workers"])


@router.get("", response_model=None)
def workers(executor: ExecutorDep) -> Any:
    return JSONResponse(executor.describe())
