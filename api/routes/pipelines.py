"""``/v1/pipelines``: the built-in pipelines with their stages and search spaces."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse

from api.deps import ServiceDep
from api.routes.studies import ERRORS
from api.service import ServiceError

router = APIRouter(prefix="/pipelines", tags=["pipelines"])


def _describe(pipe: Any) -> dict[str, Any]:
    d: dict[str, Any] = dict(pipe.describe())
    d["space"] = pipe.space.to_dict()
    return d


@router.get("", response_model=None)
def list_pipelines(svc: ServiceDep) -> Any:
    from pipelines import builtin_names

    items = []
    for name in builtin_names():
        try:
            items.append(_describe(svc.pipeline(name)))
        except Exception as e:  # a pipeline whose data is missing is listed with the reason
            items.append({"name": name, "error": str(e)})
    return JSONResponse(
        {"items": items, "allowed_modules": list(svc.settings.allowed_pipeline_modules)}
    )


@router.get("/{name}", responses=ERRORS, response_model=None)
def get_pipeline(name: str = Path(max_length=300), *, svc: ServiceDep) -> Any:
    try:
        pipe = svc.pipeline(name)
    except ServiceError as e:
        raise ServiceError(404 if e.status == 422 else e.status, e.message, e.code) from None
    return JSONResponse(_describe(pipe))
