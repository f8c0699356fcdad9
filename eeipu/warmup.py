"""The warm-up: uniform draws by the declared space, the same for every optimizer and seed.

The published EEIPU's warm-up prefers cheap and diverse draws; here it is uniform, because
what the uniform draws learn about the expensive corners is what the cost-aware phase needs
(the measurements are in ``docs/research.md``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from eeipu.base import (
    BudgetState,
    CachedPrefix,
    Candidate,
    Observation,
    Pending,
    estimated_cost,
    mean_cost_after,
    prefix_id,
)
from eeipu.space import SearchSpace

__all__ = ["uniform_warmup"]


def uniform_warmup(
    space: SearchSpace,
    rng: random.Random,
    n: int,
    history: Sequence[Observation],
    pending: Sequence[Pending],
    budget: BudgetState,
    seen: set[str],
    cached: Sequence[CachedPrefix] = (),
) -> list[Candidate]:
    """Up to ``n`` uniform draws, none a configuration in ``seen`` (100 tries each).

    Each draw's predicted cost is the mean observed cost of the stages after the deepest
    prefix of it that ``cached`` holds, plus that prefix's load time (a full run when none);
    the draws stop when it, on top of the pending trials' and the earlier draws', would
    exceed what remains of the budget plus its margin. ``seen`` gains the draws' ids.
    """
    n_stages = len(space.stage_names)
    committed = sum(mean_cost_after(history, p.reuse_depth) or 0.0 for p in pending)
    out: list[Candidate] = []
    after: dict[int, float | None] = {}
    for _ in range(n):
        for _attempt in range(100):
            params = space.sample(rng)
            pid = prefix_id(space, params, n_stages)
            if pid not in seen:
                break
        depth, estimate = estimated_cost(space, params, history, cached, memo=after)
        if estimate is not None and committed + estimate > budget.remaining + budget.margin:
            break
        seen.add(pid)
        committed += estimate or 0.0
        out.append(Candidate(params, depth, estimate, None, {"phase": "warmup"}))
    return out
