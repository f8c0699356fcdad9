"""Running one trial: resolve the pipeline, run it through the cache, make a ``TrialResult``.

Shared by the local worker processes and the Dask tasks, so both report trials identically.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from api.store import StageRun, Study, TrialResult, TrialState
from cache import StageCache
from pipelines import Pipeline, RunRecord

# The study's own bookkeeping, saved with the optimizer's state (same transaction, so it is
# never out of step with the trials): the phase of every trial not proposed by a model (the
# warm-up's spend is the cost of its trials) and the optimizer's options.
BOOK = "study"


def book_of(state: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict((state or {}).get(BOOK) or {})


def run_seed_of(study: Study) -> int | None:
    """The study's pipeline run seed (every stage of its trials runs with it)."""
    return study.spec.run_seed


_pipelines: dict[tuple[str, tuple[str, ...]], Pipeline] = {}
_caches: dict[tuple[str, int | None], StageCache] = {}


def resolve_pipeline(name: str, allowed_modules: Sequence[str]) -> Pipeline:
    """The pipeline by name (memoised per process: built-ins load their data once)."""
    from pipelines import get_pipeline

    key = (name, tuple(allowed_modules))
    if key not in _pipelines:
        _pipelines[key] = get_pipeline(name, allowed_modules=allowed_modules)
    return _pipelines[key]


def open_cache_cached(location: str, max_bytes: int | None) -> StageCache:
    from cache import open_cache

    key = (location, max_bytes)
    if key not in _caches:
        _caches[key] = open_cache(location, max_bytes=max_bytes)
    return _caches[key]


def cache_notes(rec: RunRecord) -> list[str]:
    """Why stage outputs computed by this run could not be stored (the run still counts)."""
    return [f"not cached: {e}" for e in rec.cache_errors]


def execute_trial(
    pipeline: Pipeline,
    params: dict[str, dict[str, Any]],
    cache: StageCache | None,
    objective: str,
    seed: int | None = None,
) -> TrialResult:
    """Run ``params`` with the run seed ``seed`` (reusing the deepest cached prefix);
    failures become FAILED results. A stage that computed but could not be cached is a
    note in ``error`` of a COMPLETE result, not a failure."""
    try:
        rec = pipeline.run(params, cache=cache, seed=seed)
    except Exception as e:
        tb = traceback.format_exc(limit=3)
        return TrialResult(TrialState.FAILED, error=f"{type(e).__name__}: {e}\n{tb}"[:4000])
    stages = [
        StageRun(
            stage=s.stage,
            position=i,
            key=s.key,
            hit=s.hit,
            cost_seconds=s.cost_seconds,
            load_seconds=s.load_seconds,
            bytes=s.bytes,
            original_cost_seconds=s.original_cost_seconds,
        )
        for i, s in enumerate(rec.stages)
    ]
    # Non-finite side metrics are dropped (JSON has no NaN); a non-finite objective fails.
    metrics = {k: float(v) for k, v in rec.metrics.items() if math.isfinite(v) or k == objective}
    value = metrics.get(objective)
    state, error = TrialState.COMPLETE, None
    if value is None:
        state, error = (
            TrialState.FAILED,
            f"objective {objective!r} not in metrics {sorted(metrics)}",
        )
    elif not math.isfinite(value):
        state, error = TrialState.FAILED, f"objective {objective!r} is not finite ({value})"
        metrics.pop(objective)
    notes = cache_notes(rec)
    if notes and state == TrialState.COMPLETE:
        error = "; ".join(notes)[:4000]
    return TrialResult(
        state=state,
        metrics=metrics,
        value=value if state == TrialState.COMPLETE else None,
        cost_seconds=float(rec.total_cost_seconds),
        reused_depth=int(rec.reused_depth),
        stages=stages,
        error=error,
    )


def run_trial_task(
    pipeline_name: str,
    params: dict[str, dict[str, Any]],
    objective: str,
    cache_location: str,
    cache_max_bytes: int | None,
    allowed_modules: Sequence[str],
    seed: int | None = None,
) -> dict[str, Any]:
    """A trial as a picklable task (for Dask workers): returns the result as plain data."""
    from dataclasses import asdict

    pipe = resolve_pipeline(pipeline_name, allowed_modules)
    cache = open_cache_cached(cache_location, cache_max_bytes)
    return asdict(execute_trial(pipe, params, cache, objective, seed))


def result_from_dict(d: dict[str, Any]) -> TrialResult:
    return TrialResult(
        state=TrialState(d["state"]),
        metrics=dict(d.get("metrics") or {}),
        value=d.get("value"),
        cost_seconds=float(d.get("cost_seconds") or 0.0),
        reused_depth=int(d.get("reused_depth") or 0),
        stages=[StageRun(**s) for s in d.get("stages") or []],
        error=d.get("error"),
    )
