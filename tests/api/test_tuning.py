"""The local tuning loop (``api.tuning``): budget accounting, reuse, sinks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from api.tuning import TrialSummary, cached_prefixes, tune
from cache import open_cache
from eeipu import make_optimizer
from pipelines import get_pipeline

FAST: dict[str, Any] = {"raw_samples": 16, "maxiter": 10, "mc_samples": 32, "restarts": 1}


def test_random_run_stays_within_budget_and_calls_sinks(tmp_path: Path) -> None:
    pipe = get_pipeline("synthetic-3stage-flat")
    opt = make_optimizer("random", pipe.space, seed=0)
    seen: list[TrialSummary] = []
    res = tune(pipe, opt, 40.0, cache=open_cache(str(tmp_path / "c")), sinks=[seen.append])
    s = res.summary()
    assert s["n_trials"] == len(seen) >= 3
    assert s["cost_spent"] == pytest.approx(sum(t.cost_paid for t in seen))
    assert s["overshoot"] == pytest.approx(max(0.0, s["cost_spent"] - 40.0))
    assert seen[-1].cumulative_cost == pytest.approx(s["cost_spent"])
    assert s["best_value"] == max(t.value for t in seen if t.value is not None)


def test_eeipu_reuses_cached_prefixes(tmp_path: Path) -> None:
    pipe = get_pipeline("synthetic-3stage-flat")
    cache = open_cache(str(tmp_path / "c"))
    opt = make_optimizer("eeipu", pipe.space, seed=0, n_warmup=4, **FAST)
    # 90 s: 4 warm-up and about 12 model trials (with 60 s, the 4 model trials were full runs).
    res = tune(pipe, opt, 90.0, cache=cache, margin=0.5)
    s = res.summary()
    assert s["n_trials_reusing_cache"] >= 1
    assert s["overshoot"] <= 0.5 + 1e-9 or s["overshoot"] < 0.2 * 90
    for t in res.trials:
        assert t.reused_depth >= t.planned_reuse  # the planned prefix really was there
    assert len(cached_prefixes(pipe, cache)) >= 2


def test_max_trials_and_bad_arguments(tmp_path: Path) -> None:
    pipe = get_pipeline("synthetic-3stage-flat")
    opt = make_optimizer("random", pipe.space, seed=1)
    res = tune(pipe, opt, math.inf, max_trials=3)
    assert len(res.trials) == 3 and res.stop_reason == "max_trials"
    with pytest.raises(ValueError):
        tune(pipe, opt, math.inf)
    with pytest.raises(ValueError):
        tune(pipe, opt, -1.0)
    with pytest.raises(ValueError, match="objective"):
        tune(pipe, opt, 10.0, objective="nope")


def test_repeated_failures_stop_the_run_with_the_reason() -> None:
    from api.tuning import StudyFailed
    from pipelines import Float, Pipeline, Stage

    def broken(parent: object, a: float) -> dict[str, float]:
        raise RuntimeError("no GPU")

    pipe = Pipeline("broken", [Stage("only", broken, {"a": Float(0.0, 1.0)})])
    opt = make_optimizer("random", pipe.space, seed=0)
    with pytest.raises(StudyFailed, match="2 trials failed in a row") as e:
        tune(pipe, opt, 100.0, max_consecutive_failures=2)
    assert len(e.value.result.trials) == 2 and "no GPU" in str(e.value)
    assert e.value.result.summary()["n_failed"] == 2


def test_proposal_time_counts_toward_the_budget_unless_the_costs_are_declared() -> None:
    from api.service import costs_declared
    from pipelines import Float, Pipeline, Stage

    synthetic = get_pipeline("synthetic-3stage-flat")
    assert costs_declared(synthetic)
    # Declared costs (benchmarks): by default the budget counts the stages only.
    res = tune(synthetic, make_optimizer("random", synthetic.space, seed=0), 20.0)
    s = res.summary()
    assert s["count_proposal_time"] is False and res.proposal_seconds > 0
    assert s["cost_spent"] == pytest.approx(s["compute_seconds"])
    assert s["wall_seconds"] > 0
    # Asked for, the proposal time is part of every trial's cost.
    res = tune(
        synthetic, make_optimizer("random", synthetic.space, seed=0), 20.0, count_proposal_time=True
    )
    for t in res.trials:
        assert t.proposal_seconds > 0 and t.ask_seconds == t.proposal_seconds
        assert t.cost_paid == pytest.approx(t.compute_seconds + t.proposal_seconds)
    s = res.summary()
    assert s["cost_spent"] == pytest.approx(s["compute_seconds"] + s["proposal_seconds"])

    # A pipeline that measures its costs counts proposal time by default.
    def measured(parent: object, a: float) -> dict[str, float]:
        return {"value": a}

    real = Pipeline("measured", [Stage("only", measured, {"a": Float(0.0, 1.0)})])
    assert not costs_declared(real)
    res = tune(real, make_optimizer("random", real.space, seed=0), 1e6, max_trials=3)
    assert res.count_proposal_time and res.summary()["count_proposal_time"] is True
    assert all(t.cost_paid >= t.proposal_seconds > 0 for t in res.trials)
    assert res.cost_spent == pytest.approx(res.compute_seconds + res.proposal_seconds)
