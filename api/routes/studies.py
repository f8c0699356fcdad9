"""``/v1/studies``: create, list, show, best, stop, resume, delete."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from api.deps import Authorized, Limit, Offset, ServiceDep, StudyId
from api.schemas import BestOut, ErrorOut, StudyCreate, StudyOut, StudyPage, page_out, study_out
from api.service import StudyRequest, not_found
from api.store import StudyState

router = APIRouter(prefix="/studies", tags=["studies"])


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses an operation can answer."""
    return {c: {"model": ErrorOut} for c in codes}


# What any operation can answer: a foreign Host or undecodable body (400), a path or query
# out of range (422); what a mutating one can answer besides.
READ_ERRORS = errors(400, 404, 422)
ERRORS = errors(400, 401, 403, 404, 409, 413, 415, 422)
_REQUEST_FIELDS = {f.name for f in dataclasses.fields(StudyRequest)}


@router.post(
    "",
    status_code=201,
    dependencies=[Authorized],
    responses=ERRORS,
    response_model=StudyOut,
)
def create_study(body: StudyCreate, svc: ServiceDep, response: Response) -> Any:
    # Options the service does not take yet stay out of its constructor (they default there).
    fields = {k: v for k, v in body.model_dump().items() if k in _REQUEST_FIELDS}
    st = svc.create_study(StudyRequest(**fields))
    response.headers["Location"] = f"/v1/studies/{st.id}"
    return study_out(st)


@router.get("", responses=READ_ERRORS, response_model=StudyPage)
def list_studies(
    svc: ServiceDep,
    state: Annotated[StudyState | None, Query()] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Any:
    items = [study_out(s) for s in svc.store.list_studies(state, limit, offset)]
    return page_out(items, svc.store.count_studies(state), limit, offset)


@router.get("/{study_id}", responses=READ_ERRORS, response_model=StudyOut)
async def get_study(study_id: StudyId, svc: ServiceDep) -> Any:
    # What polling clients call most: concurrent reads share one query and one rendered
    # answer (``api.service.StudyReads``), validated against ``StudyOut`` like any other.
    read = await svc.reads.get(study_id)
    if read.study is None:
        raise not_found(f"study {study_id}")
    if read.body is None:
        read.body = StudyOut.model_validate(study_out(read.study)).model_dump_json().encode()
    return Response(read.body, media_type="application/json")


@router.get("/{study_id}/best", responses=READ_ERRORS, response_model=BestOut)
def best(study_id: StudyId, svc: ServiceDep) -> Any:
    t = svc.best(study_id)
    return {
        "value": t.value,
        "trial_id": t.id,
        "number": t.number,
        "params": t.params,
        "metrics": t.metrics,
        "cost_seconds": t.cost_seconds,
    }


@router.post(
    "/{study_id}/stop", dependencies=[Authorized], responses=ERRORS, response_model=StudyOut
)
def stop(study_id: StudyId, svc: ServiceDep) -> Any:
    return study_out(svc.stop_study(study_id))


@router.post(
    "/{study_id}/resume", dependencies=[Authorized], responses=ERRORS, response_model=StudyOut
)
def resume(study_id: StudyId, svc: ServiceDep) -> Any:
    return study_out(svc.resume_study(study_id))


@router.delete(
    "/{study_id}",
    status_code=204,
    dependencies=[Authorized],
    responses=ERRORS,
    response_class=Response,
)
def delete_study(study_id: StudyId, svc: ServiceDep) -> None:
    svc.delete_study(study_id)
