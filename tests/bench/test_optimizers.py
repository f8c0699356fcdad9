"""Figures of the optimizer benchmark (``bench.optimizers``) from hand-built runs."""

from __future__ import annotations

from typing import Any

import pytest

from bench.optimizers import equal_spend


def _run(
    opt: str, costs: list[float], values: list[float], capped: bool, seed: int = 0
) -> dict[str, Any]:
    rows, cum, best = [], 0.0, -float("inf")
    for c, v in zip(costs, values, strict=True):
        cum += c
        best = max(best, v)
        rows.append({"cumulative_cost": cum, "best_so_far": best, "value": v})
    return {
        "pipeline": "p",
        "optimizer": opt,
        "seed": seed,
        "rows": rows,
        "cost_spent": cum,
        "capped": capped,
    }


def test_equal_spend_counts_trials_within_each_seeds_least_capped_spend() -> None:
    runs = [
        _run("cheap", [1.0] * 6, [0, 1, 2, 3, 4, 5], capped=True, seed=0),  # spent 6
        _run("cheap", [2.0] * 5, [0, 0, 9, 0, 0], capped=True, seed=1),  # spent 10
        _run("dear", [4.0, 4.0, 4.0], [1, 7, 8], capped=False, seed=0),  # within 6: 1 trial
        _run("dear", [1.0, 5.0, 5.0], [3, 1, 1], capped=False, seed=1),  # within 10: 2
    ]
    eq = equal_spend(runs, "p", ["cheap", "dear"])
    assert eq is not None and eq["spend_by_seed"] == {"0": 6.0, "1": 10.0}
    assert eq["spend"] == pytest.approx(8.0)
    assert eq["optimizers"]["cheap"]["n_trials"]["mean"] == pytest.approx((6 + 5) / 2)
    assert eq["optimizers"]["cheap"]["best"]["mean"] == pytest.approx((5 + 9) / 2)
    assert eq["optimizers"]["dear"]["n_trials"]["mean"] == pytest.approx(1.5)
    assert eq["optimizers"]["dear"]["best"]["mean"] == pytest.approx(2.0)


def test_equal_spend_is_none_without_capped_runs() -> None:
    runs = [_run("a", [1.0, 1.0], [0, 1], capped=False)]
    assert equal_spend(runs, "p", ["a"]) is None


def test_optuna_samplers_are_stateless_and_learn_from_the_history() -> None:
    """The service deep-copies a template optimizer for every proposal: the adapters must
    copy, and rebuild what they know from the history."""
    import copy

    from bench.optuna_adapter import OptunaGP, OptunaTPE
    from eeipu.base import Observation
    from pipelines import get_pipeline

    space = get_pipeline("synthetic-3stage-flat").space
    for cls in (OptunaTPE, OptunaGP):
        opt = copy.deepcopy(cls(space, seed=1, n_warmup=2))
        first = opt.ask(1, [])[0]
        again = copy.deepcopy(cls(space, seed=1, n_warmup=2)).ask(1, [])[0]
        assert first.params == again.params  # repeatable
        history = [Observation(first.params, -1.0, [1.0, 1.0, 1.0])]
        second = opt.ask(1, history)[0]
        assert second.params != first.params and first.info["phase"] == "warmup"
        history.append(Observation(second.params, -2.0, [1.0, 1.0, 1.0]))
        assert opt.ask(1, history)[0].info["phase"] == "model"


def test_tpe_memo_takes_a_close_cached_prefix_and_leaves_a_far_one() -> None:
    from bench.optuna_adapter import OptunaTPEMemo
    from eeipu.base import CachedPrefix, Observation
    from pipelines import get_pipeline

    space = get_pipeline("synthetic-3stage-flat").space
    opt = OptunaTPEMemo(space, seed=0, n_warmup=1)
    cand = opt.ask(1, [])[0]
    # stage 1 costs 80% of a run; without a cached prefix, ask leaves TPE's proposal as is
    history = [Observation(cand.params, -1.0, [8.0, 1.0, 1.0])]
    assert opt.ask(1, history)[0].reuse_depth == 0
    near = {"s1_beale": {k: float(v) for k, v in cand.params["s1_beale"].items()}}
    near["s1_beale"]["x0"] = float(near["s1_beale"]["x0"]) + 0.05
    out = opt._memo(cand, [CachedPrefix(1, near, 0.0)], [8.0, 1.0, 1.0], 10.0, 1.0)
    assert (
        out.reuse_depth == 1
        and out.params["s1_beale"] == space.canonical({**cand.params, **near})["s1_beale"]
    )
    assert out.predicted_cost == pytest.approx(2.0) and out.info["memo_depth"] == 1
    far = {"s1_beale": {"x0": -4.5 if cand.params["s1_beale"]["x0"] > 0 else 4.5, "x1": -4.5}}
    assert opt._memo(cand, [CachedPrefix(1, far, 0.0)], [8.0, 1.0, 1.0], 10.0, 1.0) is cand
    # at the end of the budget no prefix is close enough
    assert opt._memo(cand, [CachedPrefix(1, near, 0.0)], [8.0, 1.0, 1.0], 10.0, 0.0) is cand


def test_optuna_proposals_are_priced_by_what_the_cache_lacks() -> None:
    """A TPE proposal whose fixed first stage is cached is admitted at the cost of the rest."""
    from bench.optuna_adapter import OptunaTPE
    from eeipu.base import CachedPrefix, Observation
    from eeipu.space import Categorical, Float, SearchSpace

    space = SearchSpace([("prep", {"k": Categorical([1])}), ("fit", {"x": Float(0.0, 1.0)})])
    history = [
        Observation({"prep": {"k": 1}, "fit": {"x": 0.1}}, 1.0, [9.0, 1.0]),
        Observation({"prep": {"k": 1}, "fit": {"x": 0.9}}, 2.0, [9.0, 2.0], 1),
    ]
    opt = OptunaTPE(space, seed=0, n_warmup=1)
    cand = opt.ask(1, history, cached=[CachedPrefix(1, {"prep": {"k": 1}}, 0.5)])[0]
    assert cand.reuse_depth == 1 and cand.predicted_cost == pytest.approx(2.5)
    bare = OptunaTPE(space, seed=0, n_warmup=1).ask(1, history)[0]
    assert bare.reuse_depth == 0 and bare.predicted_cost == pytest.approx(11.0)
