"""What the dashboard and the reports compute from a study's trials.

Trials arrive as *compact rows* (``compact``): number, state, value, cost, reused depth,
parameters flattened to ``stage.name``, metrics, error, timestamps. From them:

* ``best_so_far``: the best value against cumulative compute seconds, trials taken in the
  order they finished (what the budget paid, so curves of studies are comparable);
* ``StageTotals``: per stage, runs, cache hits, compute paid, load time, and the compute the
  cache saved (what the hits cost when first computed, less their load time);
* ``importance``: how much each parameter explains the objective: the impurity-based
  feature importances of a scikit-learn forest of extremely randomized trees
  (``ExtraTreesRegressor``: 32 trees, depth <= 6, leaves of >= 5 trials) fitted on the
  completed trials' parameters (categories as integer codes) against their values, at most
  ``MAX_FIT_TRIALS`` of them (a seeded uniform sample beyond that); the scores sum to 1.
  A rough ranking in the spirit of optuna's default evaluator (a random forest's
  importances), not a causal claim; it takes about 70 ms for 2,000 trials.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

MAX_FIT_TRIALS = 2000
MIN_FIT_TRIALS = 4
FINISHED = ("COMPLETE", "FAILED")


def _num(v: object) -> float | None:
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def compact(t: Mapping[str, Any]) -> dict[str, Any]:
    """A trial dict (``Trial.to_dict()``) as the dashboard's row."""
    params = {
        f"{stage}.{name}": v
        for stage, ps in (t.get("params") or {}).items()
        for name, v in (ps or {}).items()
    }
    return {
        "number": t.get("number"),
        "id": t.get("id"),
        "state": t.get("state"),
        "value": _num(t.get("value")),
        "cost": _num(t.get("cost_seconds")),
        "reused": t.get("reused_depth"),
        "planned": t.get("reuse_depth"),
        "params": params,
        "metrics": {k: _num(v) for k, v in (t.get("metrics") or {}).items()},
        "error": t.get("error"),
        "started_at": _num(t.get("started_at")),
        "finished_at": _num(t.get("finished_at")),
    }


def best_so_far(
    rows: Iterable[Mapping[str, Any]], direction: str = "maximize"
) -> list[tuple[float, float]]:
    """``(cumulative compute seconds, best value so far)`` after each finished trial with a
    value, trials in the order they finished (failed ones add their cost only)."""
    done = [r for r in rows if r.get("state") in FINISHED]
    done.sort(key=lambda r: (r.get("finished_at") or 0.0, r.get("number") or 0))
    sign = 1.0 if direction == "maximize" else -1.0
    spent, best, out = 0.0, None, []
    for r in done:
        spent += r.get("cost") or 0.0
        v = r.get("value")
        if r.get("state") != "COMPLETE" or v is None:
            continue
        if best is None or sign * v > sign * best:
            best = v
        out.append((spent, best))
    return out


@dataclass
class StageTotals:
    """One stage's totals over the finished trials of a study."""

    stage: str
    position: int
    runs: int = 0
    hits: int = 0
    compute_seconds: float = 0.0
    load_seconds: float = 0.0
    saved_seconds: float = 0.0

    def add(self, run: Mapping[str, Any]) -> None:
        self.runs += 1
        cost = _num(run.get("cost_seconds")) or 0.0
        load = _num(run.get("load_seconds")) or 0.0
        self.load_seconds += load
        if run.get("hit"):
            self.hits += 1
            original = _num(run.get("original_cost_seconds")) or 0.0
            self.saved_seconds += max(0.0, original - load)
        else:
            self.compute_seconds += cost

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cache_share(stages: Iterable[StageTotals]) -> float | None:
    """The share of the study's stage compute served by the cache: saved / (saved + paid)."""
    items = list(stages)
    saved = sum(s.saved_seconds for s in items)
    paid = sum(s.compute_seconds + s.load_seconds for s in items)
    return None if saved + paid <= 0 else saved / (saved + paid)


def _encode(values: Sequence[Any]) -> list[float]:
    """A parameter's values as numbers: numbers as they are, anything else by category code."""
    if all(_num(v) is not None for v in values):
        return [float(v) for v in values]
    codes: dict[str, int] = {}
    return [float(codes.setdefault(repr(v), len(codes))) for v in values]


def importance(
    rows: Sequence[Mapping[str, Any]], seed: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """``([{"param", "importance"}, ...] most important first, trials fitted)``."""
    done = [r for r in rows if r.get("state") == "COMPLETE" and r.get("value") is not None]
    if len(done) > MAX_FIT_TRIALS:
        done = random.Random(seed).sample(done, MAX_FIT_TRIALS)
    names = sorted({k for r in done for k in r.get("params", {})})
    if len(done) < MIN_FIT_TRIALS or not names:
        return [], len(done)
    import numpy as np
    from sklearn.ensemble import ExtraTreesRegressor

    cols = [_encode([r["params"].get(n) for r in done]) for n in names]
    x = np.array(cols, dtype=float).T
    y = np.array([r["value"] for r in done], dtype=float)
    if float(np.ptp(y)) == 0.0:
        return [{"param": n, "importance": 0.0} for n in names], len(done)
    forest = ExtraTreesRegressor(
        n_estimators=32, max_depth=6, min_samples_leaf=5, random_state=seed, n_jobs=1
    )
    forest.fit(x, y)
    scores = [float(s) for s in forest.feature_importances_]
    out = [{"param": n, "importance": s} for n, s in zip(names, scores, strict=True)]
    out.sort(key=lambda d: -d["importance"])
    return out, len(done)
