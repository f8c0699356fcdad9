"""Tuning a pipeline in this process: the study service over a store, with an in-process
executor (``api.execution.inprocess``).

There is one trial path. ``tune`` (the benchmarks' entrance) and ``eeipu tune`` create a study
in a trial store (an in-memory one, or the database of ``eeipu tune --db``) and drive it
exactly as the server's scheduler and workers drive a study with parallelism 1: the same
conversion of trials into optimizer inputs, the same budget rule, the same failure rule.

Budget accounting: a trial costs what it really paid, the compute of the stages it ran plus
the time to load the cached prefix it reused, plus its share of the time the optimizer took
to propose it (``count_proposal_time``: by default unless the pipeline's costs are declared,
as the synthetic benchmarks' are; see ``api.service.costs_declared``). A trial is never
started when its predicted cost (the optimizer's; when it gives none, the largest full-run
cost seen so far), with that of the trials already running, exceeds the remaining budget plus
``margin``; the actual spend, and by how much it went over the budget, are reported, with the
wall time next to the compute and the proposal seconds.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from api.config import Settings
from api.errors import ServiceError
from api.execution.inprocess import InProcessExecutor
from api.execution.runner import book_of
from api.service import StudyRequest, StudyService, stage_cost
from api.store import Study, StudyState, Trial, TrialState, TrialStore, open_store
from cache import StageCache
from eeipu.base import CachedPrefix, Optimizer, Params
from pipelines import Pipeline

__all__ = [
    "MEMORY_STORE",
    "StudyFailed",
    "StudyRun",
    "TrialSink",
    "TrialSummary",
    "TuneResult",
    "cached_prefixes",
    "tune",
]

MEMORY_STORE = "memory://"  # an in-memory trial store (SQLite, one shared connection)
UNLIMITED = 1e9  # the budget, in seconds, of a count-only run (the largest a study may have)


@dataclass
class TrialSummary:
    """One finished trial as a tuning run reports it (a view of the store's ``Trial``)."""

    number: int
    params: Params
    value: float | None
    metrics: dict[str, float]
    reused_depth: int  # stages really taken from the cache
    planned_reuse: int  # stages the optimizer planned to reuse
    stage_costs: list[float]  # compute cost of every stage (original cost when reused)
    cost_paid: float  # what the budget counts: compute paid + load time (+ proposal time)
    predicted_cost: float | None
    cumulative_cost: float
    best_value: float | None  # best so far, after this trial
    phase: str
    ask_seconds: float  # its share of the seconds its proposal took (= ``proposal_seconds``)
    error: str | None = None  # why it failed; for a COMPLETE trial, a note (e.g. not cached)
    trial_id: int | None = None
    proposal_seconds: float = 0.0  # its share of the seconds its proposal took
    compute_seconds: float = 0.0  # compute paid + load time (``cost_paid`` less proposal time)

    @property
    def failed(self) -> bool:
        return self.value is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TrialSink = Callable[[TrialSummary], None]


@dataclass
class TuneResult:
    """A finished (or interrupted) tuning run."""

    pipeline: str
    optimizer: str
    objective: str
    direction: str
    budget: float
    margin: float
    trials: list[TrialSummary] = field(default_factory=list)
    stop_reason: str = ""
    seconds: float = 0.0
    study_id: int | None = None
    state: str = ""
    count_proposal_time: bool = True  # whether ``cost_spent`` includes proposal time

    @property
    def cost_spent(self) -> float:
        """What the budget counted: ``compute_seconds``, plus ``proposal_seconds`` when the
        run counts proposal time."""
        return sum(t.cost_paid for t in self.trials)

    @property
    def wall_seconds(self) -> float:
        """Wall-clock seconds of the whole run."""
        return self.seconds

    @property
    def compute_seconds(self) -> float:
        """Seconds the trials' stages computed or loaded (the pipeline's own cost)."""
        return sum(t.compute_seconds for t in self.trials)

    @property
    def proposal_seconds(self) -> float:
        """Seconds the optimizer took to propose the finished trials."""
        return sum(t.proposal_seconds for t in self.trials)

    def best(self) -> TrialSummary | None:
        ok = [t for t in self.trials if t.value is not None]
        if not ok:
            return None
        sign = 1.0 if self.direction == "maximize" else -1.0
        return max(ok, key=lambda t: (sign * float(t.value or 0.0), -t.number))

    def summary(self) -> dict[str, Any]:
        """The figures ``eeipu tune --json`` prints."""
        best = self.best()
        spent = self.cost_spent
        return {
            "pipeline": self.pipeline,
            "optimizer": self.optimizer,
            "objective": self.objective,
            "direction": self.direction,
            "best_value": best.value if best else None,
            "best_params": best.params if best else None,
            "best_trial": best.number if best else None,
            "best_metrics": dict(best.metrics) if best else None,
            "n_trials": len(self.trials),
            "n_failed": sum(t.failed for t in self.trials),
            "n_trials_reusing_cache": sum(t.reused_depth > 0 for t in self.trials),
            "cost_spent": spent,
            "budget": self.budget if math.isfinite(self.budget) else None,
            "budget_margin": self.margin,
            "overshoot": max(0.0, spent - self.budget) if math.isfinite(self.budget) else 0.0,
            "stop_reason": self.stop_reason,
            "wall_seconds": self.seconds,
            "compute_seconds": self.compute_seconds,
            "proposal_seconds": self.proposal_seconds,
            "count_proposal_time": self.count_proposal_time,
            "ask_seconds_median": _median([t.ask_seconds for t in self.trials]),
        }


class StudyFailed(RuntimeError):
    """The study failed (e.g. too many trials failed in a row); ``result`` is what it did."""

    def __init__(self, message: str, result: TuneResult) -> None:
        super().__init__(message)
        self.result = result


def _median(xs: Sequence[float]) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    m = len(s) // 2
    return s[m] if len(s) % 2 else 0.5 * (s[m - 1] + s[m])


def cached_prefixes(
    pipeline: Pipeline, cache: StageCache | None, seed: int | None = None
) -> list[CachedPrefix]:
    """What the cache holds for this pipeline, as the optimizer's plain data."""
    if cache is None:
        return []
    return [
        CachedPrefix(int(c["depth"]), c["params"], float(c["load_seconds"]))
        for c in pipeline.cached_prefixes(cache, seed=seed)
    ]


class StudyRun:
    """A study driven in this process: ``run()`` to its end, ``interrupt()`` to stop it
    resumably (the trial in hand goes back to WAITING).

    Args:
        store: the trial store (in memory, or a database shared with servers).
        pipeline: the pipeline object; ``req.pipeline`` is how it is named in the store.
        req: the study's options.
        cache: the stage cache (``None``: nothing is cached or reused).
        optimizer: an optimizer instance to use instead of one built from ``req``.
        sinks: called with every finished trial.
        budget: the run's budget as the caller sees it (``inf`` for count-only runs).
        settings: the service settings (default: unbounded, for a run in this process).
        stop: an event that ends the run between trials (default: a new one).
    """

    def __init__(
        self,
        store: TrialStore,
        pipeline: Pipeline,
        req: StudyRequest,
        cache: StageCache | None = None,
        optimizer: Optimizer | None = None,
        sinks: Sequence[TrialSink] = (),
        budget: float | None = None,
        settings: Settings | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        settings = settings or Settings(
            db_url="sqlite://", max_budget_seconds=UNLIMITED, max_trials_limit=10_000_000
        )
        self.service = StudyService(
            store, settings, cache=cache, pipelines={req.pipeline: pipeline}
        )
        self.study: Study = self.service.create_study(req, optimizer)
        self.executor = InProcessExecutor(self.service, settings.heartbeat_interval)
        self.sinks = list(sinks)
        spec = self.study.spec
        self.result = TuneResult(
            pipeline=pipeline.name,
            optimizer=spec.optimizer,
            objective=spec.objective,
            direction=spec.direction,
            budget=spec.budget_seconds if budget is None else budget,
            margin=float(req.budget_margin),
            study_id=self.study.id,
            count_proposal_time=spec.count_proposal_time,
        )
        self.stop = stop or threading.Event()
        self._best: float | None = None
        self._t0 = time.perf_counter()

    @property
    def study_id(self) -> int:
        return self.study.id

    def _summarise(self, done: Trial) -> None:
        t = self.store.get_trial(done.id, with_stages=True) or done
        st = self.store.get_study(t.study_id)
        phases = book_of(st.optimizer_state if st else None).get("phases") or {}
        ok = t.state == TrialState.COMPLETE and t.value is not None
        value = float(t.value) if ok and t.value is not None else None
        sign = 1.0 if self.result.direction == "maximize" else -1.0
        if value is not None and (self._best is None or sign * value > sign * self._best):
            self._best = value
        paid = float(t.cost_seconds or 0.0)
        proposal = float(t.proposal_seconds or 0.0)
        counted = proposal if self.result.count_proposal_time else 0.0
        s = TrialSummary(
            number=t.number,
            params=t.params,
            value=value,
            metrics=dict(t.metrics or {}),
            reused_depth=int(t.reused_depth or 0),
            planned_reuse=int(t.reuse_depth),
            stage_costs=[stage_cost(x) for x in t.stages or []],
            cost_paid=paid,
            predicted_cost=t.predicted_cost,
            cumulative_cost=self.result.cost_spent + paid,
            best_value=self._best,
            phase=str(phases.get(str(t.number), "model")),
            ask_seconds=proposal,
            error=t.error,
            trial_id=t.id,
            proposal_seconds=proposal,
            compute_seconds=max(0.0, paid - counted),
        )
        self.result.trials.append(s)
        for sink in self.sinks:
            sink(s)

    def _finish(self, reason: str | None = None) -> TuneResult:
        st = self.service.get_study(self.study.id)
        self.result.state = st.state.value
        self.result.stop_reason = reason or self.service.stop_reasons.get(st.id, st.state.value)
        self.result.seconds = time.perf_counter() - self._t0
        return self.result

    def run(self) -> TuneResult:
        """Drive the study to its end; ``StudyFailed`` if it failed."""
        state = self.executor.drive(self.study.id, self._summarise, self.stop)
        res = self._finish()
        if state == StudyState.FAILED:
            err = self.service.get_study(self.study.id).error or "the study failed"
            res.stop_reason = f"failed: {err}"
            raise StudyFailed(err, res)
        return res

    def interrupt(self, reason: str) -> TuneResult:
        """Stop the study resumably: the trial in hand goes back, the study is ``stopped``."""
        self.stop.set()
        try:
            self.executor.release_current(reason)
        finally:
            with contextlib.suppress(ServiceError):  # already finished: nothing to stop
                self.service.stop_study(self.study.id)
        return self._finish(reason)


def tune(  # noqa: PLR0913 - keyword-only options of one run
    pipeline: Pipeline,
    optimizer: Optimizer,
    budget: float,
    *,
    cache: StageCache | None = None,
    max_trials: int | None = None,
    objective: str | None = None,
    margin: float = 0.0,
    run_seed: int | None = None,
    sinks: Sequence[TrialSink] = (),
    max_consecutive_failures: int = 5,
    count_proposal_time: bool | None = None,
) -> TuneResult:
    """Tune ``pipeline`` with ``optimizer`` until the budget or ``max_trials`` runs out.

    A study over an in-memory trial store, run in this process (see the module docstring).

    Args:
        pipeline: a ``pipelines.Pipeline``.
        optimizer: built for ``pipeline.space`` and the run's direction.
        budget: total cost in seconds (``inf`` with ``max_trials`` for a count-only limit).
        cache: a ``StageCache`` (``None``: nothing is cached or reused).
        max_trials: stop after this many trials.
        objective: the metric to optimise (default: the pipeline's).
        margin: allowed overshoot; a trial predicted to exceed ``remaining + margin`` is
            not started.
        run_seed: the pipeline run seed (part of every cache key).
        sinks: called with every finished trial (e.g. to show progress).
        max_consecutive_failures: the study fails (``StudyFailed``) after this many failed
            trials in a row.
        count_proposal_time: whether a trial's share of the optimizer's proposal time is
            part of its cost (what the budget counts). ``None`` (default): yes, unless the
            pipeline's costs are declared (``api.service.costs_declared``: the synthetic
            benchmarks), whose runs then repeat exactly for a seed.

    Raises:
        ValueError: a bad argument, or an objective the pipeline does not report.
        StudyFailed: too many trials failed in a row.
    """
    if not budget > 0:
        raise ValueError(f"budget must be positive, got {budget}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if max_trials is not None and max_trials < 1:
        raise ValueError(f"max_trials must be >= 1, got {max_trials}")
    if not math.isfinite(budget) and max_trials is None:
        raise ValueError("an unlimited budget needs max_trials")
    req = StudyRequest(
        pipeline=pipeline.name,
        optimizer=optimizer.name,
        budget_seconds=budget if math.isfinite(budget) else UNLIMITED,
        max_trials=max_trials,
        objective=objective,
        direction=optimizer.direction,
        seed=optimizer.seed,
        parallelism=1,
        run_seed=run_seed,
        budget_margin=margin,
        max_consecutive_failures=max_consecutive_failures,
        name="tune",
        count_proposal_time=count_proposal_time,
    )
    store = open_store(MEMORY_STORE, pool_size=1)
    try:
        try:
            run = StudyRun(store, pipeline, req, cache, optimizer, sinks, budget=budget)
        except ServiceError as e:
            raise ValueError(e.message) from None
        return run.run()
    finally:
        store.close()
