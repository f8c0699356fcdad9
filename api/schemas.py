"""Request and response schemas of the REST API (kept apart from the ORM models).

Responses on hot paths are built as plain dicts by the ``*_out`` functions (no per-request
model validation); the models below document them in the OpenAPI schema.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.store import StageRun, Study, Trial, TrialState

Direction = Literal["maximize", "minimize"]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class StudyCreate(BaseModel):
    """``POST /v1/studies``."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str = Field(min_length=1, max_length=300, description="built-in name or module:attr")
    optimizer: str = Field(
        min_length=1, max_length=64, description="eeipu, ei, eipu, carbo, random"
    )
    budget_seconds: float = Field(gt=0, allow_inf_nan=False, description="total cost budget (s)")
    max_trials: int | None = Field(default=None, ge=1)
    objective: str | None = Field(default=None, min_length=1, max_length=200)
    direction: Direction | None = None
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    parallelism: int | None = Field(default=None, ge=1)
    fixed_params: dict[str, dict[str, Any]] | None = Field(
        default=None, description="{stage: {parameter: value}} held fixed in every trial"
    )
    mode: Literal["managed", "external"] = Field(
        default="managed",
        description="managed: the service's workers run trials; external: ask/tell clients do",
    )
    name: str | None = Field(default=None, max_length=200)


class BestOut(BaseModel):
    value: float
    trial_id: int
    number: int
    params: dict[str, dict[str, Any]]
    metrics: dict[str, float] | None = None
    cost_seconds: float | None = None


class StudyOut(BaseModel):
    id: int
    name: str | None
    state: Literal["running", "completed", "stopped", "failed"]
    pipeline: str
    optimizer: str
    objective: str
    direction: Direction
    budget_seconds: float
    max_trials: int | None
    seed: int
    parallelism: int
    fixed_params: dict[str, dict[str, Any]]
    mode: str
    created_at: float
    updated_at: float
    trials_done: int
    n_trials: int
    n_complete: int
    n_failed: int
    cost_spent: float
    best_value: float | None
    best_trial_id: int | None
    best: dict[str, Any] | None = Field(description="best so far: value and trial_id")
    error: str | None


class StageRunOut(BaseModel):
    stage: str
    position: int
    key: str | None
    hit: bool
    cost_seconds: float
    load_seconds: float
    bytes: int
    original_cost_seconds: float


class TrialOut(BaseModel):
    id: int
    study_id: int
    number: int
    state: TrialState
    params: dict[str, dict[str, Any]]
    reuse_depth: int
    predicted_cost: float | None
    reused_depth: int | None
    metrics: dict[str, float] | None
    value: float | None
    cost_seconds: float | None
    worker: str | None
    attempts: int
    heartbeat_at: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    failures: list[dict[str, Any]]
    stages: list[StageRunOut] | None = None


class TrialPage(BaseModel):
    items: list[TrialOut]
    total: int
    limit: int
    offset: int
    next_offset: int | None


class StudyPage(BaseModel):
    items: list[StudyOut]
    total: int
    limit: int
    offset: int
    next_offset: int | None


class AskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    worker: str | None = Field(default=None, max_length=200, description="client id (fences tell)")


class ReusePrefix(BaseModel):
    depth: int
    key: str | None
    params: dict[str, dict[str, Any]]


class AskOut(TrialOut):
    reuse: ReusePrefix
    stage_keys: list[str]


class StageReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: str = Field(min_length=1, max_length=200)
    cost_seconds: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    hit: bool = False
    load_seconds: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    bytes: int = Field(default=0, ge=0)
    key: str | None = Field(default=None, max_length=128)
    original_cost_seconds: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class TellIn(BaseModel):
    """``POST .../trials/{id}/tell``: the outcome of a trial the client ran."""

    model_config = ConfigDict(extra="forbid")

    state: Literal["COMPLETE", "FAILED"] = "COMPLETE"
    metrics: dict[str, FiniteFloat] = Field(default_factory=dict, max_length=1000)
    value: float | None = Field(default=None, allow_inf_nan=False)
    stages: list[StageReport] = Field(default_factory=list, max_length=1000)
    cost_seconds: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    worker: str | None = Field(default=None, max_length=200)
    error: str | None = Field(default=None, max_length=4000)


class HeartbeatIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    worker: str | None = Field(default=None, max_length=200)


class EvictIn(BaseModel):
    """``POST /v1/cache/evict``: by keys, or every entry a study computed."""

    model_config = ConfigDict(extra="forbid")

    keys: list[str] = Field(default_factory=list, max_length=10_000)
    study_id: int | None = None


class ErrorOut(BaseModel):
    error: str
    message: str


# ---------------------------------------------------------------------------- dict builders
def study_out(st: Study) -> dict[str, Any]:
    sp = st.spec
    return {
        "id": st.id,
        "name": sp.name,
        "state": st.state.value,
        "pipeline": sp.pipeline,
        "optimizer": sp.optimizer,
        "objective": sp.objective,
        "direction": sp.direction,
        "budget_seconds": sp.budget_seconds,
        "max_trials": sp.max_trials,
        "seed": sp.seed,
        "parallelism": sp.parallelism,
        "fixed_params": sp.fixed_params,
        "mode": sp.mode,
        "created_at": st.created_at,
        "updated_at": st.updated_at,
        "trials_done": st.trials_done,
        "n_trials": st.n_trials,
        "n_complete": st.n_complete,
        "n_failed": st.n_failed,
        "cost_spent": st.cost_spent,
        "best_value": st.best_value,
        "best_trial_id": st.best_trial_id,
        "best": (
            None
            if st.best_trial_id is None
            else {"value": st.best_value, "trial_id": st.best_trial_id}
        ),
        "error": st.error,
    }


def stage_out(s: StageRun) -> dict[str, Any]:
    return s.to_dict()


def trial_out(t: Trial) -> dict[str, Any]:
    return t.to_dict()


def page_out(items: list[dict[str, Any]], total: int, limit: int, offset: int) -> dict[str, Any]:
    nxt = offset + len(items)
    return {
        "items": items,
        "total": total,
        "limit": limit,
        "offset": offset,
        "next_offset": nxt if nxt < total else None,
    }
