"""EEIPU and the GP baselines (``eeipu.bo``): prefix pool, batches, budget, state."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from eeipu.base import BudgetState, CachedPrefix, Observation, Pending, prefix_id
from eeipu.bo import EEIPU
from eeipu.registry import make_optimizer
from eeipu.space import SearchSpace

from .conftest import toy_history

FAST: dict[str, Any] = {"raw_samples": 16, "maxiter": 10, "mc_samples": 32, "restarts": 1}


def _opt(space: SearchSpace, name: str = "eeipu", seed: int = 0) -> EEIPU:
    opt = make_optimizer(name, space, seed=seed, n_warmup=5, **FAST)
    assert isinstance(opt, EEIPU) or name != "eeipu"
    return opt  # type: ignore[return-value]


def _cached(space: SearchSpace, history: list, depths: tuple[int, ...] = (1, 2)) -> list:
    return [
        CachedPrefix(d, {s: o.params[s] for s in space.stage_names[:d]}, 0.01)
        for o in history[:6]
        for d in depths
    ]


def test_warmup_is_random_then_model_based(space: SearchSpace) -> None:
    opt = _opt(space)
    first = opt.ask(1, [])
    assert first[0].info["phase"] == "warmup"
    hist = toy_history(space, 12)
    cand = opt.ask(1, hist, cached=_cached(space, hist), budget=BudgetState(100.0, 40.0, 20.0))
    assert cand[0].info["phase"] == "model"
    assert 0.0 < cand[0].info["eta"] < 1.0


def test_prefix_not_cached_nor_pending_is_never_planned(space: SearchSpace) -> None:
    hist = toy_history(space, 15)
    for seed in range(3):
        opt = _opt(space, seed=seed)
        # Nothing cached, nothing pending: a pick reuses nothing, or a prefix that an
        # earlier pick of the same batch will produce.
        picks = opt.ask(3, hist, budget=BudgetState(1000.0, 10.0, 5.0))
        assert picks[0].reuse_depth == 0
        for i, c in enumerate(picks):
            if c.reuse_depth:
                assert c.info["via"] == "batch"
                own = prefix_id(space, c.params, c.reuse_depth)
                assert own in {prefix_id(space, e.params, c.reuse_depth) for e in picks[:i]}
        cached = _cached(space, hist, depths=(2,))[:3]
        pending = [Pending(hist[7].params, 0)]
        allowed = {prefix_id(space, p.params, p.depth) for p in cached} | {
            prefix_id(space, pending[0].params, d) for d in (1, 2)
        }
        picks = opt.ask(4, hist, pending, cached, BudgetState(1000.0, 10.0, 5.0))
        for i, c in enumerate(picks):
            if c.reuse_depth:
                own = prefix_id(space, c.params, c.reuse_depth)
                earlier = {prefix_id(space, e.params, c.reuse_depth) for e in picks[:i]}
                assert own in allowed | earlier
                assert c.info["via"] in ("cache", "pending", "batch")
                assert (c.info["via"] == "batch") == (own not in allowed)


def test_later_picks_of_a_batch_reuse_earlier_picks_prefixes(space: SearchSpace) -> None:
    # Stage costs dominated by the first stages: reusing a batch-mate's prefix pays.
    hist = toy_history(space, 20)
    opt = make_optimizer("eeipu", space, seed=0, n_warmup=5, eta=1.0)
    picks = opt.ask(4, hist, budget=BudgetState(1000.0, 10.0, 5.0))
    assert len(picks) == 4 and picks[0].reuse_depth == 0
    later = [c for c in picks[1:] if c.info["via"] == "batch"]
    assert later, [c.info for c in picks]
    full = sum(hist[0].stage_costs)
    for c in later:
        assert c.predicted_cost is not None and c.predicted_cost < full
    ids = {prefix_id(space, c.params, 3) for c in picks}
    assert len(ids) == 4
    # Cost-blind baselines never plan reuse, in a batch either.
    for name in ("ei", "eipu", "carbo"):
        base = make_optimizer(name, space, seed=0, n_warmup=5, **FAST)
        assert all(c.reuse_depth == 0 for c in base.ask(4, hist, budget=BudgetState(1000.0)))


def test_reuse_is_planned_when_cheap(space: SearchSpace) -> None:
    hist = toy_history(space, 20)
    opt = make_optimizer("eeipu", space, seed=0, n_warmup=5, eta=1.0)
    cands = opt.ask(4, hist, cached=_cached(space, hist), budget=BudgetState(1000.0, 10.0, 5.0))
    assert any(c.reuse_depth > 0 for c in cands)
    full = sum(hist[0].stage_costs)
    for c in cands:
        if c.reuse_depth:
            assert c.predicted_cost is not None and c.predicted_cost < full


def test_batch_has_no_duplicates(space: SearchSpace) -> None:
    hist = toy_history(space, 15)
    pending = [Pending(toy_history(space, 1, seed=9)[0].params, 0)]
    for name in ("eeipu", "ei", "eipu", "carbo", "random"):
        opt = make_optimizer(name, space, seed=1, n_warmup=5)
        cands = opt.ask(6, hist, pending, _cached(space, hist), BudgetState(1000.0, 10.0, 5.0))
        ids = [prefix_id(space, c.params, 3) for c in cands]
        assert len(cands) == 6 and len(set(ids)) == 6, name
        seen = {prefix_id(space, o.params, 3) for o in hist} | {
            prefix_id(space, pending[0].params, 3)
        }
        assert not seen & set(ids), name


@pytest.mark.parametrize("name", ["eeipu", "ei", "eipu", "carbo"])
def test_budget_margin_is_respected(space: SearchSpace, name: str) -> None:
    hist = toy_history(space, 15)
    opt = make_optimizer(name, space, seed=0, n_warmup=5, **FAST)
    budget = BudgetState(total=100.0, spent=97.0, warmup_spent=20.0, margin=0.5)
    cands = opt.ask(5, hist, (), _cached(space, hist), budget)
    total = sum(c.predicted_cost or 0.0 for c in cands)
    assert all(c.predicted_cost is not None for c in cands)
    assert total <= budget.remaining + budget.margin
    assert opt.ask(3, hist, (), _cached(space, hist), BudgetState(100.0, 100.0, 20.0)) == []


def test_save_restore_gives_identical_proposals(space: SearchSpace) -> None:
    hist = toy_history(space, 14)
    cached = _cached(space, hist)
    budget = BudgetState(200.0, 50.0, 20.0)
    a = _opt(space, seed=4)
    a.ask(2, hist[:12], (), cached, budget)  # fits models, advances the generator
    state = json.loads(json.dumps(a.state_dict()))
    b = _opt(space, seed=999)
    b.load_state_dict(state)
    pa = a.ask(3, hist, (), cached, budget)
    pb = b.ask(3, hist, (), cached, budget)
    assert [c.params for c in pa] == [c.params for c in pb]
    assert [c.reuse_depth for c in pa] == [c.reuse_depth for c in pb]
    # With those proposals pending, the next one differs from them (no repeats).
    pend = [Pending(c.params, c.reuse_depth) for c in pa]
    assert a.ask(1, hist, pend, cached, budget)[0].params not in [c.params for c in pa]


def test_same_seed_same_proposals(space: SearchSpace) -> None:
    hist = toy_history(space, 12)
    cached = _cached(space, hist)
    runs = [_opt(space, seed=2).ask(2, hist, (), cached, BudgetState(100.0)) for _ in range(2)]
    assert [c.params for c in runs[0]] == [c.params for c in runs[1]]


def test_warmup_prefixes_are_left_out_of_the_pool(space: SearchSpace) -> None:
    from .conftest import toy_observe

    hist = toy_history(space, 8)
    cached = _cached(space, hist[:5])  # 5 warm-up trials (n_warmup=5), depths 1 and 2
    budget = BudgetState(1000.0, 10.0, 5.0)
    opt = _opt(space)
    picks = opt.ask(1, hist, cached=cached, budget=budget)
    assert opt.last_info["n_prefixes"] == 1 and picks[0].reuse_depth == 0
    # Once a model-phase trial has extended a warm-up prefix, that prefix is eligible again.
    p = {s: dict(v) for s, v in hist[7].params.items()}
    p[space.stage_names[0]] = dict(hist[2].params[space.stage_names[0]])
    opt.ask(1, [*hist, toy_observe(space, p, reused=1)], cached=cached, budget=budget)
    assert opt.last_info["n_prefixes"] == 2


@pytest.mark.parametrize("name", ["ei", "eipu", "carbo"])
def test_baselines_never_plan_reuse(space: SearchSpace, name: str) -> None:
    hist = toy_history(space, 12)
    opt = make_optimizer(name, space, seed=0, n_warmup=5, **FAST)
    for c in opt.ask(3, hist, (), _cached(space, hist), BudgetState(1000.0)):
        assert c.reuse_depth == 0


def test_minimize_flips_the_objective(space: SearchSpace) -> None:
    hist = toy_history(space, 12)
    opt = make_optimizer("ei", space, direction="minimize", seed=0, n_warmup=5, eta=0.0, **FAST)
    assert opt.sign() == -1.0
    assert len(opt.ask(1, hist)) == 1


def test_prefix_of_another_space_is_ignored(space: SearchSpace) -> None:
    hist = toy_history(space, 12)
    bad = [CachedPrefix(1, {"prep": {"a": 0.5}}, 0.01), CachedPrefix(1, {"other": {}}, 0.01)]
    opt = make_optimizer("eeipu", space, seed=0, n_warmup=5, eta=1.0, **FAST)
    for c in opt.ask(3, hist, (), bad, BudgetState(1000.0)):
        assert c.reuse_depth == 0 or c.info["via"] == "batch"


def test_clipped_gap_is_raw_among_the_best() -> None:
    import torch

    from eeipu.warp import clipped_gap

    y = torch.tensor([0.0, -1.0, -2.0, -3.0, -100.0, -1e5], dtype=torch.float64)
    # The 0.5-quantile of the gaps (0, 1, 2, 3, 100, 1e5) is 2.5.
    c = clipped_gap(y, 0.5)
    assert c[:3].tolist() == [0.0, -1.0, -2.0]  # raw differences: additive over stages
    assert c[3:].tolist() == [-2.5, -2.5, -2.5]  # one plateau for the worse half
    assert clipped_gap(y, 0.2)[2] == clipped_gap(y, 0.2)[5]  # a smaller quantile clips more
    assert clipped_gap(y, 0.5, floor=100.0)[4] == -100.0  # the floor widens the raw region


def test_the_floor_keeps_the_best_warmup_trial_unclipped() -> None:
    import torch

    from eeipu.warp import clipped_gap, objective_targets

    # Warm-up trials -50..-10, then 30 refinements crowding the incumbent at 0: the median
    # gap collapses to ~0, the floor keeps every trial up to the best warm-up one raw.
    y = torch.tensor([-50.0, -40.0, -30.0, -20.0, -10.0] + [-1e-3 * i for i in range(30)])
    z = objective_targets(y.to(torch.float64), n_warmup=5)
    assert float(z[4]) == -10.0 and float(z[0]) == -10.0  # floor 10: -10 raw, worse clipped
    assert float(clipped_gap(y.to(torch.float64), 0.5)[4]) > -0.1  # without it: clipped


def test_cost_gps_have_one_kernel_term_per_parameter(space: SearchSpace) -> None:
    from gpytorch.kernels import AdditiveKernel

    opt = _opt(space, "eipu")
    surrogates = opt.surrogates
    # Columns relative to each stage's slice; a categorical's one-hot columns stay together.
    assert surrogates.param_groups("prep") == [[0], [1]]
    assert surrogates.param_groups("fit") == [[0, 1], [2]]
    assert surrogates.param_groups("score") is None  # one parameter: a plain RBF kernel
    assert surrogates.param_groups(None) == [[0], [1], [2, 3], [4], [5]]
    models = surrogates.costs(toy_history(space, 12))
    kern = models[0][0].model.covar_module  # type: ignore[union-attr]
    assert isinstance(kern, AdditiveKernel) and len(kern.kernels) == 3  # a, n, and both


def test_a_stage_of_many_parameters_gets_one_ard_cost_kernel() -> None:
    from gpytorch.kernels import AdditiveKernel, ScaleKernel

    from eeipu.space import Float
    from eeipu.surrogates import MAX_COST_TERMS

    wide = {f"w{i}": Float(0.0, 1.0) for i in range(MAX_COST_TERMS + 1)}
    edge = {f"e{i}": Float(0.0, 1.0) for i in range(MAX_COST_TERMS)}
    space = SearchSpace([("edge", edge), ("wide", wide)])
    surrogates = _opt(space, "eipu").surrogates
    assert surrogates.param_groups("edge") == [[i] for i in range(MAX_COST_TERMS)]
    assert surrogates.param_groups("wide") is None  # fitting one term each is too slow
    rng = random.Random(0)
    history = []
    for _ in range(6):
        params = space.sample(rng)
        u = space.encode(params)
        costs = [1.0 + u[0], 2.0 + 3.0 * u[-1]]
        history.append(Observation(params, -sum(u), costs, 0, sum(costs)))
    models = surrogates.costs(history)
    kerns = [gp.model.covar_module for gp, _ in models]  # type: ignore[union-attr]
    assert isinstance(kerns[0], AdditiveKernel) and len(kerns[0].kernels) == MAX_COST_TERMS + 1
    assert isinstance(kerns[1], ScaleKernel)
    assert kerns[1].base_kernel.lengthscale.shape[-1] == MAX_COST_TERMS + 1  # ARD


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel": "matern"},
        {"objective_noise": 0.0},
        {"foo": 1},
    ],
)
def test_unknown_model_options_are_rejected(space: SearchSpace, kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        make_optimizer("eeipu", space, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"warp": "log"},
        {"warp": "clip"},
        {"warp_quantile": 0.25},
        {"clip_floor": False},
        {"memo_warmup": True},
        {"warmup": "cheap"},
        {"warmup_probe": 3},
        {"warmup_candidates": 64},
        {"cost_mean": "constant"},
        {"cost_kernel": "rbf"},
        {"block_moves": True},
        {"objective_mean": "worst"},
        {"warmup_prefixes": True},
    ],
)
@pytest.mark.parametrize("name", ["eeipu", "ei", "eipu", "carbo"])
def test_removed_options_name_the_valid_ones(space: SearchSpace, name: str, kwargs: dict) -> None:
    option = next(iter(kwargs))
    with pytest.raises(
        ValueError, match=f"{option} must be omitted, the option was removed"
    ) as err:
        make_optimizer(name, space, **kwargs)
    message = str(err.value)
    assert "docs/research.md" in message
    for valid in ("n_warmup", "mc_samples", "max_prefixes", "raw_samples", "eta", "kernel"):
        assert valid in message.split("valid options:")[1]


def test_only_the_best_rows_are_rounded_and_the_pick_is_the_same(
    space: SearchSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import eeipu.bo

    hist = toy_history(space, 30)
    cached = _cached(space, hist)
    budget = BudgetState(1000.0, 60.0, 20.0)
    opts = {**FAST, "raw_samples": 64}
    monkeypatch.setattr(eeipu.bo, "N_ROUNDED", 24)
    few = make_optimizer("eeipu", space, seed=3, n_warmup=5, **opts)
    pick = few.ask(1, hist, cached=cached, budget=budget)[0]
    assert isinstance(few, EEIPU) and few.last_info["n_rows"] == 24
    monkeypatch.setattr(eeipu.bo, "N_ROUNDED", 10**6)
    every = make_optimizer("eeipu", space, seed=3, n_warmup=5, **opts)
    same = every.ask(1, hist, cached=cached, budget=budget)[0]
    assert isinstance(every, EEIPU) and every.last_info["n_rows"] > 64
    assert pick.params == same.params and pick.reuse_depth == same.reuse_depth
