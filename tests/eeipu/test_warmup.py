"""The warm-up and random search price a draw by what the cache already holds of it."""

from __future__ import annotations

import random

import pytest

from eeipu.base import (
    BudgetState,
    CachedPrefix,
    Observation,
    RandomSearch,
    cached_depth,
    estimated_cost,
)
from eeipu.space import Categorical, Float, SearchSpace
from eeipu.warmup import uniform_warmup


def _pinned_space() -> SearchSpace:
    """An expensive first stage fixed to one choice, cheap stages after it."""
    return SearchSpace(
        [
            ("prep", {"k": Categorical([3])}),
            ("fit", {"lr": Float(0.0, 1.0)}),
            ("score", {"t": Float(0.0, 1.0)}),
        ]
    )


def _history(space: SearchSpace, n: int) -> list[Observation]:
    rng = random.Random(1)
    # a reused prep stage still reports its original cost (10 s): the cost of a full run
    return [Observation(space.sample(rng), 0.0, [10.0, 1.0, 0.5], 1, 1.6) for _ in range(n)]


def _cached(space: SearchSpace) -> list[CachedPrefix]:
    return [CachedPrefix(1, {"prep": {"k": 3}}, 0.1)]


def test_cached_depth_finds_the_deepest_matching_prefix() -> None:
    space = _pinned_space()
    params = {"prep": {"k": 3}, "fit": {"lr": 0.25}, "score": {"t": 0.5}}
    cached = [
        *_cached(space),
        CachedPrefix(2, {"prep": {"k": 3}, "fit": {"lr": 0.25}}, 0.2),
        CachedPrefix(2, {"prep": {"k": 3}, "fit": {"lr": 0.5}}, 0.3),
    ]
    assert cached_depth(space, params, cached) == (2, 0.2)
    other = {"prep": {"k": 3}, "fit": {"lr": 0.75}, "score": {"t": 0.5}}
    assert cached_depth(space, other, cached) == (1, 0.1)
    assert cached_depth(space, other, []) == (0, 0.0)


def test_estimated_cost_counts_only_the_stages_after_the_cached_prefix() -> None:
    space = _pinned_space()
    hist = _history(space, 4)
    params = space.sample(random.Random(5))
    assert estimated_cost(space, params, hist, _cached(space)) == (1, pytest.approx(1.6))
    assert estimated_cost(space, params, hist, []) == (0, pytest.approx(11.5))
    assert estimated_cost(space, params, [], _cached(space)) == (1, None)


def test_warmup_admits_what_the_budget_pays_for_when_the_upstream_is_cached() -> None:
    space = _pinned_space()
    hist = _history(space, 2)
    budget = BudgetState(total=30.0, spent=22.5)  # 7.5 s left: no full run, 4 cheap ones
    seen: set[str] = set()
    with_cache = uniform_warmup(space, random.Random(0), 10, hist, [], budget, seen, _cached(space))
    assert len(with_cache) == 4
    assert all(c.reuse_depth == 1 for c in with_cache)
    assert all(c.predicted_cost == pytest.approx(1.6) for c in with_cache)
    assert uniform_warmup(space, random.Random(0), 10, hist, [], budget, set()) == []


def test_random_search_predicts_the_worst_cost_after_the_cached_prefix() -> None:
    space = _pinned_space()
    hist = _history(space, 3)
    hist[0].stage_costs = [10.0, 3.0, 0.5]  # the most expensive tail seen
    opt = RandomSearch(space, seed=0)
    (c,) = opt.ask(1, hist, cached=_cached(space))
    assert c.reuse_depth == 1
    assert c.predicted_cost == pytest.approx(3.6)
    (d,) = RandomSearch(space, seed=0).ask(1, hist)
    assert d.reuse_depth == 0
    assert d.predicted_cost == pytest.approx(13.5)
