"""``GET /v1/studies/{id}/trials.csv``: every trial of a study as CSV, streamed.

The columns are those of ``api.report.rows`` (parameters per stage, state, value, metrics,
reuse depth, costs per stage, ISO 8601 timestamps; text cells made safe for spreadsheets).
The body streams from ``api.report.export.csv_chunks``: the header, then one chunk per page
of trials, so memory stays that of a page whatever the study's size.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from api.deps import ServiceDep, StudyId
from api.report.export import csv_chunks
from api.routes.studies import READ_ERRORS
from api.service import StudyService

router = APIRouter(tags=["exports"])


def declared_stages(svc: StudyService, pipeline: str) -> list[str]:
    """The stage names the pipeline declares, or none if it cannot be resolved any more."""
    try:
        return list(svc.pipeline(pipeline).stage_names)
    except Exception:  # a pipeline gone from the registry: stages come from the trials
        return []


@router.get(
    "/studies/{study_id}/trials.csv",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "every trial, one CSV record each, with a header line",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        },
        **READ_ERRORS,
    },
)
def trials_csv(study_id: StudyId, svc: ServiceDep) -> StreamingResponse:
    """Every trial of the study as CSV: parameters per stage, state, value, metrics, reuse
    depth, costs and ISO 8601 timestamps (columns: ``api.report.rows``)."""
    spec = svc.spec(study_id)  # 404 before anything streams
    return StreamingResponse(
        csv_chunks(svc.store, study_id, declared_stages(svc, spec.pipeline)),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="study-{study_id}-trials.csv"'},
    )
