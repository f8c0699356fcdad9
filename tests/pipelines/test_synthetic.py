from __future__ import annotations

import random
from typing import Any

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
    assert all(0.1 < s.cost_seconds < 3000 for s in r.stages)
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
    with pytest.raises(ValueError, match="not a Pipeline or a factory marked"):
        get_pipeline("pipelines.synthetic:synthetic_pipeline")  # unmarked: never called
    with pytest.raises(ValueError, match="unknown pipeline"):
        get_pipeline("no-such-pipeline")
    with pytest.raises(ValueError, match="cannot import"):
        get_pipeline("no_such_module_xyz:thing")
    with pytest.raises(ValueError, match="no attribute"):
        get_pipeline("pipelines.synthetic:nothing_here")
    with pytest.raises(PermissionError, match="allowed"):
        get_pipeline("pipelines.synthetic:synthetic_pipeline", allowed_modules=["other"])


def test_declared_costs_vary_strongly_and_flat_ones_do_not() -> None:
    """The paper's costs apply g to each parameter in its own units; the flat variant to the
    unit-scaled parameter. Same objective, different cost spread, different cache keys."""
    declared, flat = get_pipeline("synthetic-3stage"), get_pipeline("synthetic-3stage-flat")
    rng = random.Random(0)
    cfgs = [declared.space.sample(rng) for _ in range(200)]
    d = [declared.run(c) for c in cfgs]
    f = [flat.run(c) for c in cfgs]
    assert [r.metrics for r in d] == [r.metrics for r in f]
    d_tot = [r.total_cost_seconds for r in d]
    f_tot = [r.total_cost_seconds for r in f]
    assert max(d_tot) / min(d_tot) > 50
    assert max(f_tot) / min(f_tot) < 2
    assert declared.fingerprint != flat.fingerprint
    assert flat.name == "synthetic-3stage-flat"
    assert len(get_pipeline("synthetic-10stage-flat").stages) == 10
    with pytest.raises(ValueError, match="costs must be"):
        synthetic_pipeline(3, costs="raw")


def test_memoizing_runs_repeat_exactly_for_a_seed(tmp_path: Any) -> None:
    """Loading a cached synthetic output has a declared cost, so an EEIPU run (which is
    charged, and plans with, load costs) repeats trial for trial."""
    from api.tuning import tune
    from cache import open_cache
    from eeipu import make_optimizer

    p = get_pipeline("synthetic-3stage")
    runs = []
    for i in range(2):
        opt = make_optimizer(
            "eeipu", p.space, seed=5, n_warmup=4, raw_samples=16, maxiter=5, eta=1.0
        )
        res = tune(p, opt, 5000.0, cache=open_cache(str(tmp_path / f"c{i}")), max_trials=12)
        runs.append([(t.params, t.reused_depth, t.cost_paid) for t in res.trials])
    assert runs[0] == runs[1]
    assert any(depth > 0 for _, depth, _ in runs[0])
