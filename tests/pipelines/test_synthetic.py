from __future__ import annotations

import random

import pytest

from pipelines import get_pipeline
from pipelines.synthetic import beale, branin, hartmann3, synthetic_pipeline


def test_test_functions_at_known_optima() -> None:
    assert beale([3.0, 0.5]) == pytest.approx(0.0)
    assert hartmann3([0.114614, 0.555649, 0.852547]) == pytest.approx(-3.86278, abs=1e-4)
    assert branin([3.14159265, 2.275]) == pytest.approx(0.397887, abs=1e-4)


def test_three_stage_shape_and_declared_costs() -> None:
    p = get_pipeline("synthetic-3stage")
    assert [len(s.space) for s in p.stages] == [2, 3, 2]
    cfg = p.space.sample(random.Random(1))
    r = p.run(cfg)
    assert all(0.1 < s.cost_seconds < 30 for s in r.stages)
    assert r.metrics["value"] == pytest.approx(-r.metrics["raw_sum"])
    # Costs depend on the parameters and are deterministic.
    assert p.run(cfg).total_cost_seconds == r.total_cost_seconds
    other = p.space.sample(random.Random(2))
    assert p.run(other).stages[0].cost_seconds != r.stages[0].cost_seconds


def test_ten_stage_and_seeded_costs() -> None:
    p = get_pipeline("synthetic-10stage")
    assert len(p.stages) == 10
    cfg = p.space.sample(random.Random(0))
    assert len(p.run(cfg).stages) == 10
    a = synthetic_pipeline(3, seed=0).run(
        get_pipeline("synthetic-3stage").space.sample(random.Random(0))
    )
    b = synthetic_pipeline(3, seed=1).run(
        get_pipeline("synthetic-3stage").space.sample(random.Random(0))
    )
    assert a.metrics == b.metrics and a.total_cost_seconds != b.total_cost_seconds


def test_pipeline_by_module_reference() -> None:
    p = get_pipeline("pipelines.synthetic:synthetic_pipeline")
    assert p.name == "synthetic-3stage"
    with pytest.raises(ValueError, match="unknown pipeline"):
        get_pipeline("no-such-pipeline")
    with pytest.raises(ValueError, match="cannot import"):
        get_pipeline("no_such_module_xyz:thing")
    with pytest.raises(ValueError, match="no attribute"):
        get_pipeline("pipelines.synthetic:nothing_here")
    with pytest.raises(PermissionError, match="allowed"):
        get_pipeline("pipelines.synthetic:synthetic_pipeline", allowed_modules=["other"])
