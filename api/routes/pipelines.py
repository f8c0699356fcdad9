"""``/v1/pipelines``: the built-in pipelines with their stages, search spaces and metrics.

A name is resolved by ``pipelines.get_pipeline`` under the operator's allow-list: a
``module:attribute`` outside it is 403, anything that does not name a pipeline 404.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path

from api.deps import ServiceDep
from api.errors import Forbidden, NotFound, ServiceError, Unavailable
from api.routes.studies import errors
from api.schemas_pipelines import PipelineList, PipelineListItem, PipelineOut

router = APIRouter(prefix="/pipelines", tags=["pipelines"])


def _load_error(exc: BaseException) -> bool:
    """Whether the service's error stands for a pipeline that exists but cannot be built."""
    from pipelines import PipelineLoadError

    seen: BaseException | None = exc
    for _ in range(5):  # the service re-raises the resolver's error as its own
        if seen is None:
            return False
        if isinstance(seen, PipelineLoadError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _resolve(svc: Any, name: str) -> Any:
    """The pipeline, or the domain error a client should see for this name."""
    try:
        return svc.pipeline(name)
    except Forbidden:
        raise
    except ServiceError as e:
        if _load_error(e):
            raise Unavailable(e.message, "pipeline_unavailable") from None
        raise NotFound(e.message, "unknown_pipeline") from None


@router.get("", response_model=PipelineList)
def list_pipelines(svc: ServiceDep) -> PipelineList:
    from pipelines import builtin_names

    items = []
    for name in builtin_names():
        try:
            out = PipelineOut.of(_resolve(svc, name))
            items.append(PipelineListItem.model_validate(out.model_dump()))
        except ServiceError as e:  # a pipeline whose data is missing is listed with the reason
            items.append(PipelineListItem(name=name, error=e.message))
    return PipelineList(items=items, allowed_modules=list(svc.settings.allowed_pipeline_modules))


@router.get(
    "/{name}",
    responses=errors(400, 403, 404, 422, 503),
    response_model=PipelineOut,
)
def get_pipeline(name: str = Path(max_length=300), *, svc: ServiceDep) -> PipelineOut:
    return PipelineOut.of(_resolve(svc, name))
