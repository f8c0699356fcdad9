"""The local tuning loop: ask the optimizer, run the pipeline through the cache, tell it.

``tune`` runs one trial at a time in this process and keeps the history in memory. Each
finished trial is handed to the ``sinks`` (plain callables), which is where a persistent trial
store plugs in later without this loop knowing about it.

Budget accounting: a trial costs what it really paid, the compute of the stages it ran plus
the time to load the cached prefix it reused. A trial is never started when its predicted
cost exceeds the remaining budget plus ``margin``; the actual spend, and by how much it went
over the budget, are reported.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from eeipu.base import BudgetState, CachedPrefix, Observation, Optimizer, Params, mean_cost_after

__all__ = ["TrialResult", "TrialSink", "TuneResult", "cached_prefixes", "tune"]


@dataclass
class TrialResult:
    """One finished trial, as the loop saw it (what a trial store persists)."""

    number: int
    params: Params
    value: float | None
    metrics: dict[str, float]
    reused_depth: int  # stages really taken from the cache
    planned_reuse: int  # stages the optimizer planned to reuse
    stage_costs: list[float]  # compute cost of every stage (original cost when reused)
    cost_paid: float  # compute paid + load time
    predicted_cost: float | None
    cumulative_cost: float
    best_value: float | None  # best so far, after this trial
    phase: str
    ask_seconds: float
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TrialSink = Callable[[TrialResult], None]


@dataclass
class TuneResult:
    """A finished tuning run."""

    pipeline: str
    optimizer: str
    objective: str
    direction: str
    budget: float
    margin: float
    trials: list[TrialResult] = field(default_factory=list)
    stop_reason: str = ""
    seconds: float = 0.0

    @property
    def cost_spent(self) -> float:
        return sum(t.cost_paid for t in self.trials)

    def best(self) -> TrialResult | None:
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
            "n_failed": sum(t.error is not None for t in self.trials),
            "n_trials_reusing_cache": sum(t.reused_depth > 0 for t in self.trials),
            "cost_spent": spent,
            "budget": self.budget if math.isfinite(self.budget) else None,
            "budget_margin": self.margin,
            "overshoot": max(0.0, spent - self.budget) if math.isfinite(self.budget) else 0.0,
            "stop_reason": self.stop_reason,
            "wall_seconds": self.seconds,
            "ask_seconds_median": _median([t.ask_seconds for t in self.trials]),
        }


def _median(xs: Sequence[float]) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    m = len(s) // 2
    return s[m] if len(s) % 2 else 0.5 * (s[m - 1] + s[m])


def cached_prefixes(pipeline: Any, cache: Any, seed: int | None = None) -> list[CachedPrefix]:
    """What the cache holds for this pipeline, as the optimizer's plain data."""
    if cache is None:
        return []
    return [
        CachedPrefix(int(c["depth"]), c["params"], float(c["load_seconds"]))
        for c in pipeline.cached_prefixes(cache, seed=seed)
    ]


def tune(
    pipeline: Any,
    optimizer: Optimizer,
    budget: float,
    *,
    cache: Any = None,
    max_trials: int | None = None,
    objective: str | None = None,
    margin: float = 0.0,
    run_seed: int | None = None,
    sinks: Sequence[TrialSink] = (),
    max_consecutive_failures: int = 5,
) -> TuneResult:
    """Tune ``pipeline`` with ``optimizer`` until the budget or ``max_trials`` runs out.

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
        sinks: called with every finished trial (e.g. to persist it).
        max_consecutive_failures: give up after this many failed trials in a row.
    """
    if not budget > 0:
        raise ValueError(f"budget must be positive, got {budget}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if max_trials is not None and max_trials < 1:
        raise ValueError(f"max_trials must be >= 1, got {max_trials}")
    if not math.isfinite(budget) and max_trials is None:
        raise ValueError("an unlimited budget needs max_trials")
    objective = objective or pipeline.objective
    sign = 1.0 if optimizer.direction == "maximize" else -1.0
    res = TuneResult(pipeline.name, optimizer.name, objective, optimizer.direction, budget, margin)
    history: list[Observation] = []
    spent = warm = 0.0
    best: float | None = None
    failures = 0
    t_start = time.perf_counter()
    while True:
        if max_trials is not None and len(res.trials) >= max_trials:
            res.stop_reason = "max_trials"
            break
        remaining = budget - spent
        if remaining <= 0:
            res.stop_reason = "budget"
            break
        state = BudgetState(total=budget, spent=spent, warmup_spent=warm, margin=margin)
        t0 = time.perf_counter()
        cands = optimizer.ask(1, history, (), cached_prefixes(pipeline, cache, run_seed), state)
        ask_s = time.perf_counter() - t0
        if not cands:
            res.stop_reason = "no candidate fits the remaining budget"
            break
        cand = cands[0]
        pred = cand.predicted_cost
        if pred is None:
            pred = mean_cost_after(history, cand.reuse_depth)
        if pred is not None and pred > remaining + margin:
            res.stop_reason = "next trial's predicted cost exceeds the remaining budget"
            break
        phase = str(cand.info.get("phase", "model"))
        try:
            rec = pipeline.run(cand.params, cache=cache, seed=run_seed)
            v = float(rec.metrics[objective])
            if not math.isfinite(v):
                raise ValueError(f"objective {objective!r} is not finite: {v}")
            value: float | None = v
            error = None
            failures = 0
        except KeyError:
            raise ValueError(
                f"objective {objective!r} is not a metric of {pipeline.name}"
            ) from None
        except Exception as e:  # a failed trial is recorded and the search goes on
            failures += 1
            if failures >= max_consecutive_failures:
                raise
            rec, value, error = None, None, f"{type(e).__name__}: {e}"
        if rec is not None:
            costs = [s.original_cost_seconds if s.hit else s.cost_seconds for s in rec.stages]
            paid, depth, metrics = rec.total_cost_seconds, rec.reused_depth, rec.metrics
            params = rec.params
        else:
            costs, paid, depth, metrics, params = [], 0.0, 0, {}, cand.params
        spent += paid
        if phase == "warmup":
            warm += paid
        if value is not None and (best is None or sign * value > sign * best):
            best = value
        history.append(Observation(params, value, costs, depth, paid))
        trial = TrialResult(
            number=len(res.trials),
            params=params,
            value=value,
            metrics=dict(metrics),
            reused_depth=depth,
            planned_reuse=cand.reuse_depth,
            stage_costs=costs,
            cost_paid=paid,
            predicted_cost=cand.predicted_cost,
            cumulative_cost=spent,
            best_value=best,
            phase=phase,
            ask_seconds=ask_s,
            error=error,
        )
        res.trials.append(trial)
        for sink in sinks:
            sink(trial)
    res.seconds = time.perf_counter() - t_start
    return res
