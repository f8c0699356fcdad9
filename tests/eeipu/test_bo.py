"""EEIPU and the GP baselines (``eeipu.bo``): prefix pool, batches, budget, state."""

from __future__ import annotations

import json

import pytest

from eeipu.base import BudgetState, CachedPrefix, Pending, prefix_id
from eeipu.bo import EEIPU, copula
from eeipu.registry import make_optimizer
from eeipu.space import SearchSpace

from .conftest import toy_history

FAST = {"raw_samples": 16, "maxiter": 10, "mc_samples": 32, "restarts": 1}


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


def test_warmup_prefixes_can_be_left_out_of_the_pool(space: SearchSpace) -> None:
    from .conftest import toy_observe

    hist = toy_history(space, 8)
    cached = _cached(space, hist[:5])  # 5 warm-up trials (n_warmup=5), depths 1 and 2
    budget = BudgetState(1000.0, 10.0, 5.0)
    with_warm = make_optimizer("eeipu", space, seed=0, n_warmup=5, warmup_prefixes=True, **FAST)
    with_warm.ask(1, hist, cached=cached, budget=budget)
    assert with_warm.last_info["n_prefixes"] == 1 + 10
    opt = make_optimizer("eeipu", space, seed=0, n_warmup=5, warmup_prefixes=False, **FAST)
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


def test_copula_is_monotone_with_tied_ranks() -> None:
    import torch

    z = copula(torch.tensor([3.0, -1e5, 2.0, 2.0, 10.0], dtype=torch.float64))
    assert z[1] < z[2] == z[3] < z[0] < z[4]


def test_prefix_of_another_space_is_ignored(space: SearchSpace) -> None:
    hist = toy_history(space, 12)
    bad = [CachedPrefix(1, {"prep": {"a": 0.5}}, 0.01), CachedPrefix(1, {"other": {}}, 0.01)]
    opt = make_optimizer("eeipu", space, seed=0, n_warmup=5, eta=1.0, **FAST)
    for c in opt.ask(3, hist, (), bad, BudgetState(1000.0)):
        assert c.reuse_depth == 0 or c.info["via"] == "batch"


def test_log_gap_keeps_order_and_magnitudes() -> None:
    import torch

    from eeipu.bo import log_gap

    z = log_gap(torch.tensor([-1.0, -2.0, -1000.0, -3.0], dtype=torch.float64))
    assert z[0] == 0.0 and z[0] > z[1] > z[3] > z[2]
    assert float(z[1] - z[3]) < float(z[3] - z[2])


def test_clipped_and_linlog_gaps_are_raw_among_the_best() -> None:
    import torch

    from eeipu.bo import clipped_gap, linlog_gap

    y = torch.tensor([0.0, -1.0, -2.0, -3.0, -100.0, -1e5], dtype=torch.float64)
    # The 0.5-quantile of the gaps (0, 1, 2, 3, 100, 1e5) is 2.5.
    c = clipped_gap(y, 0.5)
    assert c[:3].tolist() == [0.0, -1.0, -2.0]  # raw differences: additive over stages
    assert c[3:].tolist() == [-2.5, -2.5, -2.5]  # one plateau for the worse half
    g = linlog_gap(y, 0.5)
    assert g[:3].tolist() == [0.0, -1.0, -2.0]
    assert g[2] > g[3] > g[4] > g[5]  # the tail keeps its order...
    assert float(g[4] - g[5]) < 100 * float(g[2] - g[3])  # ...but logarithmically
    assert clipped_gap(y, 0.2)[2] == clipped_gap(y, 0.2)[5]  # a smaller quantile clips more
    assert clipped_gap(y, 0.5, floor=100.0)[4] == -100.0  # the floor widens the raw region


def test_clip_floor_keeps_the_best_warmup_trial_unclipped(space: SearchSpace) -> None:
    import torch

    # Warm-up trials -50..-10, then 30 refinements crowding the incumbent at 0: the median
    # gap collapses to ~0, the floor keeps every trial up to the best warm-up one raw.
    y = torch.tensor([-50.0, -40.0, -30.0, -20.0, -10.0] + [-1e-3 * i for i in range(30)])
    opt = make_optimizer("eeipu", space, seed=0, n_warmup=5)
    z = opt._warped(y.to(torch.float64))  # type: ignore[attr-defined]
    assert float(z[4]) == -10.0 and float(z[0]) == -10.0  # floor 10: -10 raw, worse clipped
    off = make_optimizer("eeipu", space, seed=0, n_warmup=5, clip_floor=False)
    assert float(off._warped(y.to(torch.float64))[4]) > -0.1  # type: ignore[attr-defined]


def test_cost_gps_have_one_kernel_term_per_parameter(space: SearchSpace) -> None:
    from gpytorch.kernels import AdditiveKernel

    opt = _opt(space, "eipu")
    # Columns relative to each stage's slice; a categorical's one-hot columns stay together.
    assert opt._param_groups("prep") == [[0], [1]]
    assert opt._param_groups("fit") == [[0, 1], [2]]
    assert opt._param_groups("score") is None  # one parameter: a plain RBF kernel
    assert opt._param_groups(None) == [[0], [1], [2, 3], [4], [5]]
    models = opt._cost_models(toy_history(space, 12))
    kern = models[0][0].model.covar_module  # type: ignore[union-attr]
    assert isinstance(kern, AdditiveKernel) and len(kern.kernels) == 3  # a, n, and both
    rbf = _opt(space, "eipu")
    rbf.cost_kernel = "rbf"
    assert rbf._param_groups("prep") is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cost_mean": "cubic"},
        {"cost_kernel": "matern"},
        {"warp": "exp"},
        {"warmup": "sobol"},
        {"objective_noise": 0.0},
        {"objective_mean": "best"},
        {"block_moves": "yes"},
        {"warp_quantile": 1.0},
        {"warp_quantile": "half"},
        {"clip_floor": "yes"},
        {"warmup_prefixes": 0},
        {"foo": 1},
    ],
)
def test_unknown_model_options_are_rejected(space: SearchSpace, kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        make_optimizer("eeipu", space, **kwargs)


def _sequential_warmup(space: SearchSpace, warmup: str, n: int = 12) -> list:
    from .conftest import toy_observe

    opt = make_optimizer("eeipu", space, seed=3, n_warmup=n, warmup=warmup, **FAST)
    hist: list = []
    picks = []
    for _ in range(n):
        (c,) = opt.ask(1, hist, budget=BudgetState(1e6))
        picks.append(c)
        hist.append(toy_observe(space, c.params))
    assert opt.ask(1, hist, budget=BudgetState(1e6))[0].info["phase"] == "model"
    return [(c, o) for c, o in zip(picks, hist, strict=True)]


def test_cheap_warmup_prefers_cheap_and_diverse_draws(space: SearchSpace) -> None:
    assert _opt(space).warmup == "random" and _opt(space, "eipu").warmup == "random"
    cheap = _sequential_warmup(space, "cheap")
    rand = _sequential_warmup(space, "random")
    # The probe trials are the baselines' uniform draws; then the cost GPs choose.
    assert [c.params for c, _ in cheap[:3]] == [c.params for c, _ in rand[:3]]
    assert all(c.info["phase"] == "warmup" for c, _ in cheap)
    assert [c.info.get("via") for c, _ in cheap[3:]] == ["cheap"] * 9
    assert all(c.predicted_cost is not None for c, _ in cheap[3:])
    paid_cheap = [o.cost_paid for _, o in cheap[3:]]
    paid_rand = [o.cost_paid for _, o in rand[3:]]
    # Uniform draws cost 4.7 on average here (3.8 for these nine); cheap ones about 2.9.
    assert sum(paid_cheap) / 9 < 3.3 < sum(paid_rand) / 9
    ids = [prefix_id(space, c.params, 3) for c, _ in cheap]
    assert len(set(ids)) == len(ids)


def test_cheap_warmup_is_deterministic_and_restorable(space: SearchSpace) -> None:
    from .conftest import toy_observe

    hist = [toy_observe(space, p.params) for p in toy_history(space, 4)]
    a = make_optimizer("eeipu", space, seed=5, n_warmup=10, warmup="cheap", **FAST)
    b = make_optimizer("eeipu", space, seed=5, n_warmup=10, warmup="cheap", **FAST)
    pa = a.ask(3, hist)
    assert [c.info["via"] for c in pa] == ["cheap"] * 3
    assert [c.params for c in pa] == [c.params for c in b.ask(3, hist)]
    c = make_optimizer("eeipu", space, seed=77, n_warmup=10, warmup="cheap", **FAST)
    c.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert [x.params for x in a.ask(2, hist)] == [x.params for x in c.ask(2, hist)]


def test_cheap_warmup_respects_the_budget(space: SearchSpace) -> None:
    hist = toy_history(space, 4)
    opt = make_optimizer("eipu", space, seed=0, n_warmup=10, warmup="cheap", **FAST)
    budget = BudgetState(total=100.0, spent=92.0, warmup_spent=0.0, margin=0.0)
    cands = opt.ask(5, hist, budget=budget)
    assert sum(c.predicted_cost or 0.0 for c in cands) <= 8.0
    assert opt.ask(2, hist, budget=BudgetState(100.0, 100.0)) == []


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_block_moves_change_one_free_stage_of_a_best_configuration(
    space: SearchSpace, depth: int
) -> None:
    import torch

    opt = make_optimizer("eeipu", space, block_moves=True, **FAST)
    assert isinstance(opt, EEIPU)
    n, d = 64, space.dims
    sobol = torch.rand(n, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    local = torch.rand(3, d, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    slices = [space.stage_slices[s] for s in space.stage_names]
    free = [sl for sl in slices[depth:] if sl.stop > sl.start]
    rows = opt._raw_rows(sobol, local, free, torch.Generator().manual_seed(3))
    assert rows.shape == (n, d)
    assert torch.equal(rows[: n // 4], sobol[: n // 4])
    assert bool(((rows >= 0) & (rows <= 1)).all())
    changed_stages = set()
    for row in rows[n // 4 + n // 8 :]:  # one-stage moves: local, then redrawn
        near = [
            [i for i, sl in enumerate(slices) if not torch.equal(row[sl], a[sl])] for a in local
        ]
        diff = min(near, key=len)
        assert len(diff) == 1, diff  # exactly one stage differs from its anchor...
        assert slices[diff[0]] in free  # ...and it is one the prefix leaves free
        changed_stages.add(diff[0])
    assert changed_stages == {slices.index(sl) for sl in free}
    # Without block moves: three quarters Sobol, a quarter perturbed best configurations.
    plain = make_optimizer("eeipu", space, **FAST)
    assert isinstance(plain, EEIPU)
    rows = plain._raw_rows(sobol, local, free, torch.Generator().manual_seed(3))
    assert torch.equal(rows[: n - n // 4], sobol[: n - n // 4])
    assert not torch.equal(rows[n - n // 4 :], local[torch.arange(n // 4) % 3])
