"""``/v1/dashboard``: the data the dashboard page polls (read-only, like every ``GET``).

* ``GET /v1/dashboard/studies``: every study with its state, best value, trials, budget
  spent and the compute the cache saved it;
* ``GET /v1/dashboard/studies/{id}?after=N&limit=L``: the study, its per-stage costs and
  cache share, and its trials numbered above ``N`` as compact rows (the incremental fetch of
  a polling page: pass the ``next_after`` of the previous answer);
* ``GET /v1/dashboard/studies/{id}/importance``: parameter importance (random forest over
  the completed trials; see ``api.report.analysis``).

Answers come from an in-memory digest per study (``api.report.digest``) that reads only
what changed since the last poll; a cold digest fills for at most ``FILL_SECONDS`` per
request and says ``complete: false`` until it has every trial.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from api.deps import MAX_ID, ServiceDep, StudyId
from api.report.digest import MAX_DIGESTS, Digests, StudyDigest
from api.routes.studies import READ_ERRORS
from api.schemas import OutFloat, StudyOut, json_safe, study_out
from api.service import StudyService

router = APIRouter(prefix="/dashboard", tags=["dashboard"])
FILL_SECONDS = 0.1
LIST_FILL_SECONDS = 0.06


class StageCostOut(BaseModel):
    stage: str
    position: int
    runs: int
    hits: int
    compute_seconds: OutFloat
    load_seconds: OutFloat
    saved_seconds: OutFloat = Field(description="compute the cache hits saved (s)")


class DashboardTrial(BaseModel):
    number: int
    id: int
    state: str
    value: OutFloat
    cost: OutFloat = Field(description="what the trial paid (s)")
    reused: int | None = Field(description="stages loaded from the cache")
    planned: int | None = Field(description="stages the optimizer planned to reuse")
    params: dict[str, Any] = Field(description="parameters as stage.name")
    metrics: dict[str, OutFloat]
    error: str | None
    started_at: OutFloat
    finished_at: OutFloat


class DashboardStudy(BaseModel):
    study: StudyOut
    saved_seconds: OutFloat = Field(description="compute the cache saved (s); null: loading")
    cache_share: OutFloat = Field(description="share of stage compute served by the cache")
    complete: bool = Field(description="whether the figures cover every trial yet")


class DashboardStudyList(BaseModel):
    items: list[DashboardStudy]


class DashboardStudyView(BaseModel):
    study: StudyOut
    stages: list[StageCostOut]
    cache_share: OutFloat
    saved_seconds: OutFloat
    compute_seconds: OutFloat
    load_seconds: OutFloat
    loaded: int = Field(description="trials in the digest so far")
    settled: int = Field(description="every trial numbered <= this is finished")
    complete: bool = Field(description="the digest has every trial")
    trials: list[DashboardTrial]
    more: bool = Field(description="more rows above the last one: ask again at next_after")
    next_after: int = Field(description="the after= of the next poll")


class ImportanceScore(BaseModel):
    param: str
    importance: float


class DashboardImportance(BaseModel):
    method: str
    n_trials: int = Field(description="completed trials fitted")
    complete: bool
    items: list[ImportanceScore]


def _digests(request: Request) -> Digests:
    state = request.app.state
    d: Digests | None = getattr(state, "dashboard_digests", None)
    if d is None:
        d = state.dashboard_digests = Digests()
    return d


def _digest(request: Request, svc: StudyService, study_id: int, seconds: float) -> StudyDigest:
    svc.get_study(study_id)  # 404 for an unknown (or deleted) study
    d = _digests(request).get(study_id)
    d.refresh_for(svc.store, seconds)
    return d


@router.get("/studies", responses=READ_ERRORS, response_model=DashboardStudyList)
def list_studies(request: Request, svc: ServiceDep) -> Any:
    """Every study (newest first) with the cache's saving; digests fill within a shared
    time box, so a study not yet read says ``complete: false`` (and studies older than the
    newest ``MAX_DIGESTS`` have no saving figure)."""
    import time

    end = time.perf_counter() + LIST_FILL_SECONDS
    digests = _digests(request)
    items = []
    studies = svc.store.list_studies(limit=1000)
    for i, st in enumerate(sorted(studies, key=lambda s: -s.id)):
        if i >= MAX_DIGESTS:  # older studies: no digest is kept for them (saving unknown)
            items.append(
                {
                    "study": study_out(st),
                    "saved_seconds": None,
                    "cache_share": None,
                    "complete": False,
                }
            )
            continue
        d = digests.get(st.id)
        left = end - time.perf_counter()
        if left > 0 or d.warm:
            d.refresh_for(svc.store, max(0.0, left))
        tot = d.totals()
        items.append(
            {
                "study": study_out(st),
                "saved_seconds": tot["saved_seconds"] if tot["loaded"] else None,
                "cache_share": tot["cache_share"],
                "complete": tot["complete"],
            }
        )
    return {"items": items}


@router.get(
    "/studies/{study_id}",
    responses={200: {"model": DashboardStudyView}, **READ_ERRORS},
    response_model=None,
)
def study_view(
    request: Request,
    study_id: StudyId,
    svc: ServiceDep,
    after: Annotated[int, Query(ge=-1, le=MAX_ID, description="rows numbered above this")] = -1,
    limit: Annotated[int, Query(ge=1, le=10000, description="most rows")] = 5000,
) -> Response:
    """A ``DashboardStudyView``. The rows are compact dicts made finite by ``api.report.analysis``;
    they are encoded as they are (validating 5,000 rows against the model would cost more
    than the whole rest of the request), and the model documents them."""
    d = _digest(request, svc, study_id, FILL_SECONDS)
    st = svc.get_study(study_id)
    rows, more = d.rows_after(after, limit)
    tot = d.totals()
    nxt = rows[-1]["number"] if more else tot["settled"]
    head = DashboardStudyView.model_construct(study=StudyOut.model_validate(study_out(st)))
    body = {
        "study": head.study.model_dump(mode="json"),
        **json_safe(tot),
        "trials": rows,
        "more": more,
        "next_after": nxt,
    }
    try:
        text = json.dumps(body, separators=(",", ":"), allow_nan=False)
    except ValueError:  # a non-finite parameter value stored by an older version
        text = json.dumps(json_safe(body), separators=(",", ":"))
    return Response(text, media_type="application/json")


@router.get(
    "/studies/{study_id}/importance", responses=READ_ERRORS, response_model=DashboardImportance
)
def study_importance(request: Request, study_id: StudyId, svc: ServiceDep) -> Any:
    d = _digest(request, svc, study_id, FILL_SECONDS)
    items, fitted = d.importance()
    return {
        "method": "extra_trees_impurity",
        "n_trials": fitted,
        "complete": d.caught_up,
        "items": items,
    }
