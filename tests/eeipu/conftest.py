"""A toy three-stage space with known objective and stage costs (no pipelines, no cache)."""

from __future__ import annotations

import math
import random

import pytest

from eeipu.base import Observation
from eeipu.space import Categorical, Float, Int, SearchSpace


def toy_space() -> SearchSpace:
    return SearchSpace(
        [
            ("prep", {"a": Float(0.0, 1.0), "n": Int(1, 8)}),
            ("fit", {"lr": Float(1e-4, 1e-1, log=True), "kind": Categorical(["x", "y"])}),
            ("score", {"t": Float(-1.0, 1.0)}),
        ]
    )


def toy_observe(space: SearchSpace, params: dict, reused: int = 0) -> Observation:
    u = space.encode(params)
    value = -sum((x - 0.3) ** 2 for x in u)
    costs = [0.5 + 2.0 * u[0], 1.0 + 3.0 * u[2], 0.2 + u[-1]]
    paid = 0.01 * (reused > 0) + sum(costs[reused:])
    return Observation(params, value, costs, reused, paid)


def toy_history(space: SearchSpace, n: int, seed: int = 0) -> list[Observation]:
    rng = random.Random(seed)
    return [toy_observe(space, space.sample(rng)) for _ in range(n)]


@pytest.fixture
def space() -> SearchSpace:
    return toy_space()


__all__ = ["math", "toy_history", "toy_observe", "toy_space"]
