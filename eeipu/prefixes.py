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
from typing import Any

import torch
from torch import Tensor

from eeipu.base import CachedPrefix, Observation, Params, Pending, observed_prefix_ids, prefix_id
from eeipu.models import DTYPE
from eeipu.space import SearchSpace

__all__ = ["PrefixMemo", "PrefixPlan", "pin_mask_and_values", "prefix_pool"]


@dataclass
class PrefixPlan:
    """A prefix a candidate may reuse: its depth, exact params and cost of loading it."""

    depth: int
    params: Params
    load_seconds: float
    pid: str
    source: str  # "empty", "cache", "pending" or "batch"


class PrefixMemo:
    """Prefix ids of cached prefixes, kept from one call of ``prefix_pool`` to the next.

    Keyed by the prefix's depth and its exact values with their types (zeros by their text,
    so ``-0.0`` stays apart from ``0.0``), which is cheaper to build than the id's canonical
    text; only the keys of the latest call are kept.
    """

    def __init__(self) -> None:
        self._ids: dict[tuple[Any, ...], str] = {}
        self._seen: dict[tuple[Any, ...], str] = {}
        # The same CachedPrefix objects offered again (a loop that keeps its list): by
        # identity, without building a key; the object is held so its id stays its own.
        self._objects: dict[int, tuple[CachedPrefix, str | None]] = {}
        self._objects_seen: dict[int, tuple[CachedPrefix, str | None]] = {}
        self._space: SearchSpace | None = None

    def start(self) -> None:
        self._seen = {}
        self._objects_seen = {}

    def finish(self) -> None:
        self._ids = self._seen
        self._objects = self._objects_seen

    def pid(self, space: SearchSpace, c: CachedPrefix) -> str | None:
        """The id of ``c`` (``None``: it lacks a stage of ``space``)."""
        if space is not self._space:
            self._space, self._objects, self._ids = space, {}, {}
        known = self._objects.get(id(c))
        if known is not None and known[0] is c:
            self._objects_seen[id(c)] = known
            return known[1]
        pid = self._pid(space, c)
        self._objects_seen[id(c)] = (c, pid)
        return pid

    def _pid(self, space: SearchSpace, c: CachedPrefix) -> str | None:
        stages = space.stage_names[: c.depth]
        try:
            key: tuple[Any, ...] = (
                c.depth,
                *(
                    tuple((k, type(v), v if v != 0 else repr(v)) for k, v in c.params[s].items())
                    for s in stages
                ),
            )
            hash(key)
        except KeyError:
            return None
        except TypeError:  # an unhashable value: no memo
            key = ()
        pid = self._ids.get(key) if key else None
        if pid is None:
            try:
                pid = prefix_id(space, c.params, c.depth)
            except KeyError:
                return None
        if key:
            self._seen[key] = pid
        return pid


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
        pids = observed_prefix_ids(space, o)[: n_stages - 1]
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
    memo: PrefixMemo | None = None,
) -> list[PrefixPlan]:
    """The empty prefix, then up to ``max_prefixes`` cached ones, then the pending ones.

    Cached prefixes are ranked by the best value of a trial that shares them (then deeper
    first, then by id); a pending trial's prefixes join with the cache's measured load cost
    when it holds them, else with the median load cost of the cached prefixes. ``memo``
    keeps the cached prefixes' ids between calls (a long study offers thousands).
    """
    pool = [PrefixPlan(0, {}, 0.0, "", "empty")]
    stages = space.stage_names
    n_stages = len(stages)
    best, warmup_only = _best_value_and_warmup_only(space, history, n_warmup, sign)
    offered: dict[str, CachedPrefix] = {}
    memo = memo if memo is not None else PrefixMemo()
    memo.start()
    for c in cached:
        if not 1 <= c.depth < n_stages:
            continue
        pid = memo.pid(space, c)
        if pid is None or pid in offered or pid in warmup_only:
            continue
        offered[pid] = c
    memo.finish()
    # Plans are made, and checked, only for the prefixes used: a long study caches
    # thousands. A prefix of another version of the space (other params) is not reusable.
    cached_plans: dict[str, PrefixPlan | None] = {}

    def plan_of(pid: str) -> PrefixPlan | None:
        if pid not in cached_plans:
            c = offered[pid]
            params = {s: dict(c.params[s]) for s in stages[: c.depth]}
            plan = PrefixPlan(c.depth, params, max(0.0, float(c.load_seconds)), pid, "cache")
            try:
                pin_mask_and_values(space, plan)
                cached_plans[pid] = plan
            except (KeyError, ValueError, TypeError):
                cached_plans[pid] = None
        return cached_plans[pid]

    ranked = sorted(offered, key=lambda pid: (-best.get(pid, -math.inf), -offered[pid].depth, pid))
    for pid in ranked:
        if len(pool) > max_prefixes:
            break
        plan = plan_of(pid)
        if plan is not None:
            pool.append(plan)
    loads = [max(0.0, float(c.load_seconds)) for c in offered.values()]
    default_load = statistics.median(loads) if loads else 0.0
    in_pool = {p.pid for p in pool}
    for pend in pending:
        for d in range(1, n_stages):
            params = {s: dict(pend.params[s]) for s in stages[:d]}
            pid = prefix_id(space, params, d)
            if pid in in_pool:
                continue
            plan = plan_of(pid) if pid in offered else None
            if plan is not None:  # cached but not among the most promising: now it is
                pool.append(plan)
            else:
                pool.append(PrefixPlan(d, params, default_load, pid, "pending"))
            in_pool.add(pid)
    return pool
