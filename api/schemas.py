"""Request and response schemas of the REST API (kept apart from the ORM models).

Requests are hostile until checked, so every number here is finite and bounded, every string
and collection has a maximum size and every cache key is checked with ``cache.keys.check_key``
before it can name a file: what the schema refuses is a 422 that names the field, and what it
accepts the service can store and read back.

Responses are declared models (the OpenAPI document is what is sent). Stored numbers may be
non-finite (older versions wrote them), so every float of a response passes ``finite_or_none``
and reaches the client as a number or ``null``, never as invalid JSON.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    model_validator,
)

from api.store import StageRun, Study, Trial, TrialState
from cache.keys import check_key

MAX_SECONDS = 1e9  # any cost, load time or budget (about 31 years)
MAX_ABS_VALUE = 1e300  # metric values and objective values
MAX_INT = 2**53  # counts and sizes: exact in every JSON parser
MAX_ID = 2**31 - 1  # ids are 32-bit integers in every backend
KEY_PATTERN = "^[0-9a-f]{32}$"

Direction = Literal["maximize", "minimize"]
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]
MetricValue = Annotated[float, Field(ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
CacheKey = Annotated[
    str,
    Field(min_length=32, max_length=32, pattern=KEY_PATTERN, description="a cache key"),
    AfterValidator(check_key),
]
# A fixed parameter's value: a scalar (every search-space dimension is one).
ParamValue = (
    StrictBool
    | Annotated[int, Field(ge=-MAX_INT, le=MAX_INT)]
    | MetricValue
    | Annotated[str, Field(max_length=1000)]
    | None
)
FixedParams = dict[Name, Annotated[dict[Name, ParamValue], Field(max_length=1000)]]


def finite_or_none(v: Any) -> Any:
    """Non-finite floats (and values JSON cannot carry) become ``None``."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def json_safe(v: Any) -> Any:
    """``v`` with every non-finite float, at any depth, replaced by ``None``."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [json_safe(x) for x in v]
    return v


OutFloat = Annotated[float | None, BeforeValidator(finite_or_none)]
OutJson = Annotated[Any, BeforeValidator(json_safe)]
OutParams = Annotated[dict[str, dict[str, Any]], BeforeValidator(json_safe)]
OutMetrics = Annotated[dict[str, OutFloat] | None, BeforeValidator(json_safe)]


# ---------------------------------------------------------------------------- requests
class StudyCreate(BaseModel):
    """``POST /v1/studies``."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str = Field(min_length=1, max_length=300, description="built-in name or module:attr")
    optimizer: str = Field(
        default="eeipu",
        min_length=1,
        max_length=64,
        description="eeipu (default), ei, eipu, carbo, random",
    )
    budget_seconds: float = Field(
        gt=0,
        le=MAX_SECONDS,
        allow_inf_nan=False,
        description="total cost budget (s); at most the server's EEIPU_MAX_BUDGET_SECONDS",
    )
    max_trials: int | None = Field(default=None, ge=1, le=10_000_000)
    objective: str | None = Field(default=None, min_length=1, max_length=200)
    direction: Direction | None = None
    seed: int = Field(default=0, ge=0, le=MAX_ID)
    run_seed: int | None = Field(
        default=None, ge=0, le=MAX_ID, description="the pipeline run seed (part of every key)"
    )
    budget_margin: float = Field(
        default=0.0,
        ge=0,
        le=MAX_SECONDS,
        allow_inf_nan=False,
        description="allowed overshoot of the budget (s)",
    )
    max_consecutive_failures: int = Field(
        default=5, ge=1, le=1000, description="failed trials in a row before the study fails"
    )
    count_proposal_time: bool | None = Field(
        default=None,
        description="count each trial's share of the optimizer's proposal time in its cost "
        "(default: yes, unless the pipeline declares its costs)",
    )
    parallelism: int | None = Field(default=None, ge=1, le=100_000)
    fixed_params: FixedParams | None = Field(
        default=None,
        max_length=1000,
        description="{stage: {parameter: value}} held fixed in every trial",
    )
    mode: Literal["managed", "external"] = Field(
        default="managed",
        description="managed: the service's workers run trials; external: ask/tell clients do",
    )
    name: str | None = Field(default=None, max_length=200)


class AskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    worker: str | None = Field(default=None, max_length=200, description="client id (fences tell)")


class StageReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: Name
    cost_seconds: Seconds = 0.0
    hit: bool = False
    load_seconds: Seconds = 0.0
    bytes: int = Field(default=0, ge=0, le=MAX_INT)
    key: CacheKey | None = None
    original_cost_seconds: Seconds | None = None


class TellIn(BaseModel):
    """``POST .../trials/{id}/tell``: the outcome of a trial the client ran.

    The stages' costs and load times together are at most 1e9 s (each one bounded is not
    enough: their sum is the trial's cost and is added to the study's spending)."""

    model_config = ConfigDict(extra="forbid")

    state: Literal["COMPLETE", "FAILED"] = "COMPLETE"
    metrics: dict[Name, MetricValue] = Field(default_factory=dict, max_length=1000)
    value: MetricValue | None = None
    stages: list[StageReport] = Field(default_factory=list, max_length=1000)
    cost_seconds: Seconds | None = None
    worker: str | None = Field(default=None, max_length=200)
    error: str | None = Field(default=None, max_length=4000)

    @model_validator(mode="after")
    def _consistent(self) -> TellIn:
        total = sum(s.cost_seconds + s.load_seconds for s in self.stages)
        if total > MAX_SECONDS:
            raise ValueError(
                f"the stages' cost_seconds + load_seconds total {total:g} s, over {MAX_SECONDS:g}"
            )
        if self.state == "FAILED" and self.value is not None:
            raise ValueError("a FAILED trial has no value")
        return self


class HeartbeatIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    worker: str | None = Field(default=None, max_length=200)


class EvictIn(BaseModel):
    """``POST /v1/cache/evict``: by keys, and/or every entry a study computed (at least one)."""

    model_config = ConfigDict(extra="forbid")

    keys: list[CacheKey] = Field(default_factory=list, max_length=10_000)
    study_id: int | None = Field(default=None, ge=1, le=MAX_ID)

    @model_validator(mode="after")
    def _something(self) -> EvictIn:
        if not self.keys and self.study_id is None:
            raise ValueError("give 'keys' or 'study_id'")
        return self


# ---------------------------------------------------------------------------- responses
class ErrorOut(BaseModel):
    error: str = Field(description="machine-readable code")
    message: str = Field(description="what is wrong")


class BestOut(BaseModel):
    value: OutFloat
    trial_id: int
    number: int
    params: OutParams
    metrics: OutMetrics = None
    cost_seconds: OutFloat = None


class BestRef(BaseModel):
    value: OutFloat
    trial_id: int


class StudyOut(BaseModel):
    id: int
    name: str | None
    state: Literal["running", "completed", "stopped", "failed"]
    pipeline: str
    optimizer: str
    objective: str
    direction: Direction
    budget_seconds: OutFloat
    max_trials: int | None
    seed: int
    run_seed: int | None = None
    budget_margin: OutFloat = 0.0
    max_consecutive_failures: int = 5
    count_proposal_time: bool = True
    parallelism: int
    fixed_params: OutParams
    mode: str
    created_at: OutFloat
    updated_at: OutFloat
    trials_done: int
    n_trials: int
    n_complete: int
    n_failed: int
    cost_spent: OutFloat
    overshoot_seconds: OutFloat = Field(
        default=0.0, description="cost spent beyond the budget (s), >= 0"
    )
    best_value: OutFloat
    best_trial_id: int | None
    best: BestRef | None = Field(description="best so far: value and trial_id")
    error: str | None


class StageRunOut(BaseModel):
    stage: str
    position: int
    key: str | None
    hit: bool
    cost_seconds: OutFloat
    load_seconds: OutFloat
    bytes: int
    original_cost_seconds: OutFloat


class TrialOut(BaseModel):
    id: int
    study_id: int
    number: int
    state: TrialState
    params: OutParams
    reuse_depth: int
    predicted_cost: OutFloat
    reused_depth: int | None
    metrics: OutMetrics
    value: OutFloat
    cost_seconds: OutFloat
    proposal_seconds: OutFloat = Field(
        default=None, description="this trial's share of the optimizer's proposal time (s)"
    )
    worker: str | None
    attempts: int
    heartbeat_at: OutFloat
    created_at: OutFloat
    started_at: OutFloat
    finished_at: OutFloat
    error: str | None
    failures: OutJson = Field(json_schema_extra={"type": "array", "items": {"type": "object"}})
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


class ReusePrefix(BaseModel):
    depth: int
    key: str | None
    params: OutParams


class AskOut(TrialOut):
    reuse: ReusePrefix
    stage_keys: list[str]


class OkOut(BaseModel):
    ok: bool


class EntryOut(BaseModel):
    key: str
    pipeline: str
    stage: str
    params: OutJson = Field(json_schema_extra={"type": "object"})
    parent: str
    bytes: int
    compute_cost: OutFloat
    created: OutFloat
    last_used: OutFloat
    hits: int
    load_seconds: OutFloat = None
    extra: OutJson = Field(default=None, json_schema_extra={"type": "object"})


class CacheSummary(BaseModel):
    entries: list[EntryOut]
    count: int
    bytes: int
    hits: int
    compute_seconds_saved: OutFloat


class Deleted(BaseModel):
    deleted: list[str]


class Evicted(BaseModel):
    deleted: list[str]
    missing: list[str]


class WorkersOut(BaseModel):
    """The executor: ``kind`` (none, local, dask) and its workers (fields depend on kind)."""

    model_config = ConfigDict(extra="allow")

    kind: str
    workers: OutJson = Field(json_schema_extra={"type": "array", "items": {"type": "object"}})


class HealthOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str]


# ---------------------------------------------------------------------------- dict builders
def study_out(st: Study) -> dict[str, Any]:
    sp = st.spec
    budget = sp.budget_seconds
    spent = st.cost_spent
    overshoot = 0.0
    if math.isfinite(budget) and math.isfinite(spent):
        overshoot = max(0.0, spent - budget)
    return {
        "id": st.id,
        "name": sp.name,
        "state": st.state.value,
        "pipeline": sp.pipeline,
        "optimizer": sp.optimizer,
        "objective": sp.objective,
        "direction": sp.direction,
        "budget_seconds": budget,
        "max_trials": sp.max_trials,
        "seed": sp.seed,
        "run_seed": getattr(sp, "run_seed", None),
        "budget_margin": getattr(sp, "budget_margin", 0.0),
        "max_consecutive_failures": getattr(sp, "max_consecutive_failures", 5),
        "count_proposal_time": getattr(sp, "count_proposal_time", True),
        "parallelism": sp.parallelism,
        "fixed_params": sp.fixed_params,
        "mode": sp.mode,
        "created_at": st.created_at,
        "updated_at": st.updated_at,
        "trials_done": st.trials_done,
        "n_trials": st.n_trials,
        "n_complete": st.n_complete,
        "n_failed": st.n_failed,
        "cost_spent": spent,
        "overshoot_seconds": overshoot,
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


def page_out(items: list[Any], total: int, limit: int, offset: int) -> dict[str, Any]:
    nxt = offset + len(items)
    return {
        "items": items,
        "total": total,
        "limit": limit,
        "offset": offset,
        "next_offset": nxt if nxt < total else None,
    }
