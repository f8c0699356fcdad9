"""The prefix pool: which stored or soon-stored stage prefixes a candidate may reuse.

A prefix of depth ``d`` is the exact parameters of the first ``d`` stages. The pool holds the
empty prefix (a full run), the most promising prefixes the cache really holds (with their
measured load cost), and every prefix a pending trial will produce. Prefixes that only
warm-up trials produced are left out, as in the published method: a random head is often an
expensive one, and extending it for hundreds of cheap trials ties the search to a head that
costs a fortune to refine later (measurements in ``docs/research.md``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from eeipu.base import CachedPrefix, Observation, Params, Pending, prefix_id
from eeipu.models import DTYPE
from eeipu.space import SearchSpace

__all__ = ["PrefixPlan", "pin_mask_and_values", "prefix_pool"]


@dataclass
class PrefixPlan:
    """A prefix a candidate may reuse: its depth, exact params and cost of loading it."""

    depth: int
    params: Params
    load_seconds: float
    pid: str
    source: str  # "empty", "cache", "pending" or "batch"


def pin_mask_and_values(space: SearchSpace, plan: PrefixPlan) -> tuple[Tensor, Tensor]:
    """The dimensions a prefix fixes: a bool mask and their encoded values, ``d`` each.

    Raises ``KeyError``, ``ValueError`` or ``TypeError`` for a prefix of another space.
    """
    mask = torch.zeros(space.dims, dtype=torch.bool)
    values = torch.zeros(space.dims, dtype=DTYPE)
    pinned = set(space.stage_names[: plan.depth])
    for sp in space.specs:
        if sp.stage in pinned:
            sl = slice(sp.offset, sp.offset + sp.param.dims)
            mask[sl] = True
            values[sl] = torch.tensor(sp.param.encode(plan.params[sp.stage][sp.name]))
    return mask, values


def _best_value_and_warmup_only(
    space: SearchSpace, history: Sequence[Observation], n_warmup: int, sign: float
) -> tuple[dict[str, float], set[str]]:
    """Per prefix id: the best signed value of a trial that shares it; and the ids that only
    warm-up trials (the first ``n_warmup``) produced."""
    n_stages = len(space.stage_names)
    best: dict[str, float] = {}
    warmup_only: dict[str, bool] = {}
    for i, o in enumerate(history):
        pids = [prefix_id(space, o.params, d) for d in range(1, n_stages)]
        for pid in pids:
            warmup_only[pid] = warmup_only.get(pid, True) and i < n_warmup
        if o.value is None or not math.isfinite(o.value):
            continue
        for pid in pids:
            best[pid] = max(best.get(pid, -math.inf), sign * o.value)
    return best, {pid for pid, only in warmup_only.items() if only}


def prefix_pool(
    space: SearchSpace,
    history: Sequence[Observation],
    pending: Sequence[Pending],
    cached: Sequence[CachedPrefix],
    n_warmup: int,
    sign: float,
    max_prefixes: int,
) -> list[PrefixPlan]:
    """The empty prefix, then up to ``max_prefixes`` cached ones, then the pending ones.

    Cached prefixes are ranked by the best value of a trial that shares them (then deeper
    first, then by id); a pending trial's prefixes join with the cache's measured load cost
    when it holds them, else with the median load cost of the cached prefixes.
    """
    pool = [PrefixPlan(0, {}, 0.0, "", "empty")]
    stages = space.stage_names
    n_stages = len(stages)
    best, warmup_only = _best_value_and_warmup_only(space, history, n_warmup, sign)
    cached_plans: dict[str, PrefixPlan] = {}
    for c in cached:
        if not 1 <= c.depth < n_stages:
            continue
        try:
            params = {s: dict(c.params[s]) for s in stages[: c.depth]}
            pid = prefix_id(space, params, c.depth)
        except KeyError:
            continue
        if pid in cached_plans or pid in warmup_only:
            continue
        plan = PrefixPlan(c.depth, params, max(0.0, float(c.load_seconds)), pid, "cache")
        try:  # a prefix of another version of the space (other params) is not reusable
            pin_mask_and_values(space, plan)
        except (KeyError, ValueError, TypeError):
            continue
        cached_plans[pid] = plan
    ranked = sorted(
        cached_plans.values(), key=lambda p: (-best.get(p.pid, -math.inf), -p.depth, p.pid)
    )
    pool += ranked[:max_prefixes]
    loads = [p.load_seconds for p in cached_plans.values()]
    default_load = statistics.median(loads) if loads else 0.0
    in_pool = {p.pid for p in pool}
    for pend in pending:
        for d in range(1, n_stages):
            params = {s: dict(pend.params[s]) for s in stages[:d]}
            pid = prefix_id(space, params, d)
            if pid in in_pool:
                continue
            if pid in cached_plans:  # cached but not among the most promising: now it is
                pool.append(cached_plans[pid])
            else:
                pool.append(PrefixPlan(d, params, default_load, pid, "pending"))
            in_pool.add(pid)
    return pool
