"""``pipelines.replicate``: a run is the mean of k seeded runs, cached and reused as one."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cache import StageCache
from pipelines import Cost, Float, Pipeline, Stage
from pipelines.replicate import mean_metrics, replicated


def make_seeded(calls: Counter[str]) -> Pipeline:
    def split(parent: Any, *, a: float, seed: int | None = None) -> Cost:
        calls["split"] += 1
        return Cost({"a": a, "seed": seed}, seconds=2.0)

    def score(parent: dict[str, Any], *, t: float, seed: int | None = None) -> Cost:
        calls["score"] += 1
        s = float(parent["seed"])
        assert seed == parent["seed"]  # both stages of one replicate see the same seed
        metrics = {"value": parent["a"] * s + t, "seed_seen": s, "note": "text is dropped"}
        return Cost(metrics, seconds=0.5)

    return Pipeline(
        "seeded",
        [
            Stage("split", split, space={"a": Float(0.0, 1.0)}, version="3"),
            Stage("score", score, space={"t": Float(-1.0, 1.0)}),
        ],
        objective="value",
        metrics=("value", "seed_seen"),
        defaults={"split": {"a": 0.5}, "score": {"t": 0.0}},
    )


CFG = {"split": {"a": 0.5}, "score": {"t": 0.25}}


def test_metrics_are_the_means_over_consecutive_seeds(tmp_path: Path) -> None:
    calls: Counter[str] = Counter()
    base = make_seeded(calls)
    rep = replicated(base, 3)
    rec = rep.run(CFG, cache=StageCache(str(tmp_path / "c")), seed=10)
    singles = [base.run(CFG, seed=s).metrics for s in (10, 11, 12)]
    assert rec.metrics["value"] == pytest.approx(sum(m["value"] for m in singles) / 3)
    assert rec.metrics["seed_seen"] == pytest.approx(11.0)  # seeds 10, 11, 12
    assert set(rec.metrics) == {"value", "seed_seen"}
    # declared costs are summed over the replicates
    assert [s.cost_seconds for s in rec.stages] == pytest.approx([6.0, 1.5])
    assert rep.name == base.name and rep.defaults == base.defaults
    assert rep.space is base.space and rep.objective == base.objective
    assert [s.version for s in rep.stages] == ["3.r3", "1.r3"]


def test_a_shared_prefix_is_reused_for_every_seed(tmp_path: Path) -> None:
    calls: Counter[str] = Counter()
    rep = replicated(make_seeded(calls), 4)
    cache = StageCache(str(tmp_path / "c"))
    rep.run(CFG, cache=cache, seed=0)
    assert calls == Counter(split=4, score=4)
    rec = rep.run({"split": {"a": 0.5}, "score": {"t": -0.5}}, cache=cache, seed=0)
    assert calls == Counter(split=4, score=8)  # the 4-seed split stage came from the cache
    assert rec.reused_depth == 1 and rec.stages[0].hit
    # the replicated stage is not the plain one: neither is served the other's output
    plain = make_seeded(calls).run(CFG, cache=cache, seed=0)
    assert plain.reused_depth == 0


def test_one_replicate_is_the_pipeline_itself_and_bad_counts_are_refused() -> None:
    base = make_seeded(Counter())
    assert replicated(base, 1) is base
    for bad in (0, -2, 65, 2.0, True, "3"):
        with pytest.raises(ValueError, match="replicates"):
            replicated(base, bad)  # type: ignore[arg-type]

    def f(parent: Any, *, seed: float) -> dict[str, float]:
        return {"value": seed}

    clash = Pipeline("clash", [Stage("s", f, space={"seed": Float(0.0, 1.0)})])
    with pytest.raises(ValueError, match="seed"):
        replicated(clash, 2)


def test_mean_metrics_propagates_gaps_as_nan() -> None:
    out = mean_metrics([{"a": 1.0, "b": 2.0, "c": "x"}, {"a": 3.0, "b": math.nan}, {"a": 5}])
    assert out["a"] == pytest.approx(3.0)
    assert math.isnan(out["b"]) and "c" not in out
    assert math.isnan(mean_metrics([{"a": 1.0}, {}])["a"])
