"""``/v1/workers``: the executor and its workers (local processes or the Dask cluster)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import ExecutorDep
from api.routes.studies import READ_ERRORS
from api.schemas import WorkersOut

router = APIRouter(prefix="/workers", tags=["workers"])


@router.get("", responses=READ_ERRORS, response_model=WorkersOut)
def workers(executor: ExecutorDep) -> Any:
    return executor.describe()
