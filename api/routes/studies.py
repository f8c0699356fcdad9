"""``/v1/studies``: create, list, show, best, stop, resume, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from api.deps import Authorized, Limit, Offset, ServiceDep, StudyId
from api.schemas import BestOut, ErrorOut, StudyCreate, StudyOut, StudyPage, page_out, study_out
from api.service import StudyRequest
from api.store import StudyState

router = APIRouter(prefix="/studies", tags=["studies"])
ERRORS: dict[int | str, dict[str, Any]] = {
    c: {"model": ErrorOut} for c in (401, 403, 404, 409, 413, 422)
}


@router.post(
    "",
    status_code=201,
    dependencies=[Authorized],
    responses={201: {"model": StudyOut}, **ERRORS},
    response_model=None,
)
def create_study(body: StudyCreate, svc: ServiceDep) -> Any:
    st = svc.create_study(StudyRequest(**body.model_dump()))
    return JSONResponse(study_out(st), 201, headers={"Location": f"/v1/studies/{st.id}"})


@router.get("", responses={200: {"model": StudyPage}, **ERRORS}, response_model=None)
def list_studies(
    svc: ServiceDep,
    state: Annotated[StudyState | None, Query()] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Any:
    items = [study_out(s) for s in svc.store.list_studies(state, limit, offset)]
    return JSONResponse(page_out(items, svc.store.count_studies(state), limit, offset))


@router.get("/{study_id}", responses={200: {"model": StudyOut}, **ERRORS}, response_model=None)
async def get_study(study_id: StudyId, svc: ServiceDep) -> Any:
    # One primary-key read of a row that carries its own counters (~0.2 ms): done on the
    # event loop, because the hop to the thread pool would cost more than the query.
    return JSONResponse(study_out(svc.get_study(study_id)))


@router.get("/{study_id}/best", responses={200: {"model": BestOut}, **ERRORS}, response_model=None)
def best(study_id: StudyId, svc: ServiceDep) -> Any:
    t = svc.best(study_id)
    return JSONResponse(
        {
            "value": t.value,
            "trial_id": t.id,
            "number": t.number,
            "params": t.params,
            "metrics": t.metrics,
            "cost_seconds": t.cost_seconds,
        }
    )


@router.post(
    "/{study_id}/stop",
    dependencies=[Authorized],
    responses={200: {"model": StudyOut}, **ERRORS},
    response_model=None,
)
def stop(study_id: StudyId, svc: ServiceDep) -> Any:
    return JSONResponse(study_out(svc.stop_study(study_id)))


@router.post(
    "/{study_id}/resume",
    dependencies=[Authorized],
    responses={200: {"model": StudyOut}, **ERRORS},
    response_model=None,
)
def resume(study_id: StudyId, svc: ServiceDep) -> Any:
    return JSONResponse(study_out(svc.resume_study(study_id)))


@router.delete("/{study_id}", status_code=204, dependencies=[Authorized], responses=ERRORS)
def delete_study(study_id: StudyId, svc: ServiceDep) -> Response:
    svc.delete_study(study_id)
    return Response(status_code=204)
