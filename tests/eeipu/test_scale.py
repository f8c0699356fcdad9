"""GPs on a subset of a long history (``max_points``): which rows, and what they keep."""

from __future__ import annotations

import pytest
import torch

from eeipu.base import BudgetState
from eeipu.models import DTYPE, data_subset, fit_surrogate, spread_rows
from eeipu.registry import make_optimizer
from eeipu.space import SearchSpace
from eeipu.surrogates import Surrogates, mean_of_duplicates

from .conftest import toy_history


def test_spread_rows_keeps_priority_rows_and_is_stable_as_rows_are_appended() -> None:
    rows = spread_rows(100, 30, torch.tensor([99, 5, 7]))
    assert rows.shape == (30,) and len(set(rows.tolist())) == 30
    assert {99, 5, 7} <= set(rows.tolist())
    assert torch.equal(rows, rows.sort().values)
    assert torch.equal(spread_rows(10, 30), torch.arange(10))
    # The spread is the same rank order at every size: most rows chosen at 100 stay at 110.
    a, b = set(spread_rows(100, 30).tolist()), set(spread_rows(110, 30).tolist())
    assert len(a & b) >= 20
    # Spread over the trial order, not bunched at one end.
    chosen = spread_rows(1000, 100)
    assert 40 <= int((chosen < 500).sum()) <= 60


def test_data_subset_holds_the_best_and_the_latest_rows() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.rand(1000, generator=g, dtype=DTYPE)
    rows = data_subset(y, 200, top=True)
    assert rows.shape == (200,)
    best = set(torch.argsort(-y)[:10].tolist())  # the best twentieth of the limit
    assert best <= set(rows.tolist())
    assert set(range(980, 1000)) <= set(rows.tolist())
    plain = data_subset(y, 200, top=False)
    assert set(range(980, 1000)) <= set(plain.tolist())
    assert len(best & set(plain.tolist())) < 8  # without ``top`` the best are not favoured
    assert torch.equal(data_subset(y[:150], 200, top=True), torch.arange(150))


def test_mean_of_duplicates_averages_repeated_inputs_in_first_seen_order() -> None:
    X = torch.tensor([[0.5, 0.1], [0.2, 0.2], [0.5, 0.1], [0.9, 0.0]], dtype=DTYPE)
    y = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=DTYPE)
    Xu, yu = mean_of_duplicates(X, y)
    assert torch.equal(Xu, X[[0, 1, 3]])
    assert torch.equal(yu, torch.tensor([2.0, 2.0, 4.0], dtype=DTYPE))
    same_X, same_y = mean_of_duplicates(X[:2], y[:2])
    assert same_X is X[:2] or torch.equal(same_X, X[:2])
    assert torch.equal(same_y, y[:2])


def test_hyperparameters_from_a_subset_condition_the_gp_on_every_row() -> None:
    g = torch.Generator().manual_seed(1)
    X = torch.rand(120, 2, generator=g, dtype=DTYPE)
    y = torch.sin(5 * X[:, 0]) + X[:, 1]
    gp = fit_surrogate(X, y, fit_rows=torch.arange(0, 120, 3), noise=1e-4)
    assert gp.train_X.shape[0] == 120 and gp.state.n_fit == 120
    m, _ = gp.predict(X)
    assert float((m.detach() - y).abs().max()) < 0.05  # interpolates rows the fit did not see
    # The refit rule counts ``n_seen``, not the rows the GP holds.
    again = fit_surrogate(X[:60], y[:60], gp.state, n_seen=125)
    assert again.state is gp.state
    refit = fit_surrogate(X[:60], y[:60], gp.state, n_seen=140)
    assert refit.state.n_fit == 140


def test_surrogates_condition_on_at_most_max_points(space: SearchSpace) -> None:
    hist = toy_history(space, 90)
    sur = Surrogates(space, "stages", 0.1, stage_additive=True, objective_noise=None, max_points=40)
    X = torch.tensor([space.encode(o.params) for o in hist], dtype=DTYPE)
    y = torch.tensor([float(o.value or 0.0) for o in hist], dtype=DTYPE)
    objective = sur.objective(X, y)
    assert objective.train_X.shape[0] == 40
    assert sur.fits["objective"].n_fit == 90
    costs = sur.costs(hist)
    assert costs and all(gp.train_X.shape[0] <= 20 for gp, _ in costs)  # half as many
    assert all(sur.fits[f"cost_{i}"].n_fit == 90 for i in range(3))
    # The best observation is always among the objective GP's rows.
    best = X[int(torch.argmax(y))]
    assert bool((objective.train_X == best).all(-1).any())


def test_max_points_is_validated_and_a_small_one_still_proposes(space: SearchSpace) -> None:
    for bad in (0, 19, 2.5, "100", True):
        with pytest.raises(ValueError, match="max_points"):
            make_optimizer("eeipu", space, max_points=bad)
    hist = toy_history(space, 45)
    fast = {"raw_samples": 16, "maxiter": 5, "mc_samples": 16, "restarts": 1}
    opt = make_optimizer("eeipu", space, n_warmup=5, max_points=20, **fast)
    picks = opt.ask(2, hist, budget=BudgetState(1000.0, 50.0, 10.0))
    assert len(picks) == 2 and all(p.info["phase"] == "model" for p in picks)
    exact = make_optimizer("eeipu", space, n_warmup=5, max_points=None, **fast)
    assert exact.ask(1, hist, budget=BudgetState(1000.0, 50.0, 10.0))[0].info["phase"] == "model"


def test_prefix_ids_match_prefix_id_at_every_depth(space: SearchSpace) -> None:
    from eeipu.base import prefix_id, prefix_ids

    for o in toy_history(space, 5):
        assert prefix_ids(space, o.params) == [prefix_id(space, o.params, d) for d in (1, 2, 3)]


def test_pool_skips_a_cached_prefix_of_another_space_version(space: SearchSpace) -> None:
    from eeipu.base import CachedPrefix
    from eeipu.prefixes import prefix_pool

    hist = toy_history(space, 14)
    good = CachedPrefix(1, {"prep": dict(hist[12].params["prep"])}, 0.01)
    other = CachedPrefix(1, {"prep": {"a": 0.5, "renamed": 3}}, 0.01)
    pool = prefix_pool(space, hist, [], [other, good], 10, 1.0, max_prefixes=2)
    assert [p.source for p in pool] == ["empty", "cache"]
    assert pool[1].params == {"prep": hist[12].params["prep"]}


def test_config_id_is_the_full_prefix_id_memoized_per_stage_order(space: SearchSpace) -> None:
    from eeipu.base import config_id, prefix_id

    k = len(space.stage_names)
    for o in toy_history(space, 5):
        assert config_id(space, o) == prefix_id(space, o.params, k)
        assert config_id(space, o) == prefix_id(space, o.params, k)  # from the memo
    o = toy_history(space, 1)[0]
    per_stage = {
        s: {sp.name: sp.param for sp in space.specs if sp.stage == s} for s in space.stage_names
    }
    reordered = SearchSpace([(s, per_stage[s]) for s in reversed(space.stage_names)])
    assert config_id(space, o) != config_id(reordered, o)
    assert config_id(reordered, o) == prefix_id(reordered, o.params, k)


def test_random_search_never_repeats_a_configuration_of_history_or_pending(
    space: SearchSpace,
) -> None:
    from eeipu.base import Pending, config_id

    hist = toy_history(space, 20)
    pending = [Pending(params=hist[0].params)]
    opt = make_optimizer("random", space, seed=3)
    seen = {config_id(space, o) for o in hist}
    for c in opt.ask(30, hist[1:], pending):
        cid = config_id(space, Pending(params=c.params))
        assert cid not in seen
        seen.add(cid)


def test_cost_gps_hold_a_few_rows_per_input_column(space: SearchSpace) -> None:
    from eeipu.surrogates import COST_ROWS_PER_COLUMN

    hist = toy_history(space, 200)
    sur = Surrogates(
        space, "stages", 0.1, stage_additive=True, objective_noise=None, max_points=1000
    )
    costs = sur.costs(hist)
    for gp, sl in costs:
        cols = sl.stop - sl.start
        assert gp.train_X.shape[0] <= max(64, COST_ROWS_PER_COLUMN * cols)
    X = torch.tensor([space.encode(o.params) for o in hist], dtype=DTYPE)
    y = torch.tensor([float(o.value or 0.0) for o in hist], dtype=DTYPE)
    assert sur.objective(X, y).train_X.shape[0] == 200  # the objective GP keeps every row
    exact = Surrogates(space, "stages", 0.1, stage_additive=True, objective_noise=None)
    assert all(gp.train_X.shape[0] == 200 for gp, _ in exact.costs(hist))  # max_points None


def test_encodings_and_prefix_ids_are_memoized_per_observation(space: SearchSpace) -> None:
    from eeipu.base import encoded, observed_prefix_ids, prefix_ids

    o = toy_history(space, 1)[0]
    assert encoded(space, o) == space.encode(o.params)
    assert encoded(space, o) == space.encode(o.params)  # from the memo
    other = SearchSpace(
        [(s, {sp.name: sp.param for sp in space.specs if sp.stage == s}) for s in space.stage_names]
    )
    assert encoded(other, o) == other.encode(o.params)  # another space object: recomputed
    assert observed_prefix_ids(space, o) == prefix_ids(space, o.params)
    ids = observed_prefix_ids(space, o)
    ids.append("x")  # a caller's copy: the memo is not changed
    assert observed_prefix_ids(space, o) == prefix_ids(space, o.params)


def test_prefix_memo_gives_the_same_ids_for_kept_and_rebuilt_prefix_objects(
    space: SearchSpace,
) -> None:
    from eeipu.base import CachedPrefix, prefix_id
    from eeipu.prefixes import PrefixMemo

    hist = toy_history(space, 6)
    kept = [
        CachedPrefix(d, {s: hist[i].params[s] for s in space.stage_names[:d]}, 0.1)
        for i in range(6)
        for d in (1, 2)
    ]
    memo = PrefixMemo()
    for _ in range(2):  # the second round by identity
        memo.start()
        assert [memo.pid(space, c) for c in kept] == [
            prefix_id(space, c.params, c.depth) for c in kept
        ]
        memo.finish()
    rebuilt = [CachedPrefix(c.depth, {s: dict(v) for s, v in c.params.items()}, 0.1) for c in kept]
    memo.start()
    assert [memo.pid(space, c) for c in rebuilt] == [
        prefix_id(space, c.params, c.depth) for c in kept
    ]
    memo.finish()
    assert memo.pid(space, CachedPrefix(2, {"prep": hist[0].params["prep"]}, 0.1)) is None
