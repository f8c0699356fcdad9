"""The ask/tell contract every optimizer honours (EEIPU and the baselines).

An optimizer is independent of storage and service. ``ask`` is given everything it needs as
plain data, so the service can rebuild it from the trial store after a restart:

* ``history``: finished trials (canonical params, objective value or ``None`` if failed, each
  stage's compute cost in seconds, and how many leading stages were reused from the cache);
* ``pending``: trials proposed or running but not finished (their params, planned reuse);
* ``cached``: the prefixes the cache holds now (``depth``, params of those stages, measured or
  estimated ``load_seconds``); nothing else may be planned for reuse, except a prefix that a
  pending trial will produce;
* ``budget``: total, spent and warm-up cost in seconds.

``ask(n, ...)`` returns ``n`` distinct ``Candidate`` objects (or fewer when the remaining
budget cannot pay for more), each with the prefix depth it plans to reuse. Randomness comes
only from the optimizer's own generator, whose state is part of ``state_dict()``: for a given
seed and inputs the proposals are identical, and ``load_state_dict(state_dict())`` on a fresh
instance gives the same next proposals (a resumed study neither repeats nor skips one).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from eeipu.space import Scalar, SearchSpace

Params = dict[str, dict[str, Scalar]]

__all__ = [
    "BudgetState",
    "CachedPrefix",
    "Candidate",
    "Observation",
    "Optimizer",
    "Params",
    "Pending",
    "cached_depth",
    "config_id",
    "encoded",
    "estimated_cost",
    "max_cost_after",
    "mean_cost_after",
    "observed_prefix_ids",
    "prefix_id",
    "prefix_ids",
]


@dataclass
class Observation:
    """A finished trial."""

    params: Params
    value: float | None  # objective as measured (None: the trial failed)
    stage_costs: list[float]  # compute cost of every stage (seconds), reused ones included
    reused_depth: int = 0
    cost_paid: float | None = None  # what the trial really cost (compute + load)


@dataclass
class Pending:
    """A trial proposed or running but not yet finished."""

    params: Params
    reuse_depth: int = 0


@dataclass
class CachedPrefix:
    """A prefix the cache holds now: the first ``depth`` stages with these params."""

    depth: int
    params: Params  # only the first ``depth`` stages
    load_seconds: float = 0.0


@dataclass
class BudgetState:
    """Cost budget in seconds (``total`` may be ``inf`` when only a trial count limits)."""

    total: float
    spent: float = 0.0
    warmup_spent: float = 0.0
    margin: float = 0.0  # allowed overshoot: never start a trial predicted to exceed this

    @property
    def remaining(self) -> float:
        return self.total - self.spent


@dataclass
class Candidate:
    """A proposal: full params, the prefix depth to reuse, and what the optimizer expects."""

    params: Params
    reuse_depth: int = 0
    predicted_cost: float | None = None
    acquisition: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prefix_id(space: SearchSpace, params: Mapping[str, Mapping[str, Scalar]], depth: int) -> str:
    """Exact identity of a prefix from canonical values (no float normalisation)."""
    parts = []
    for stage in space.stage_names[:depth]:
        sp = params[stage]
        parts.append(stage + "(" + ",".join(f"{k}={sp[k]!r}" for k in sorted(sp)) + ")")
    return "/".join(parts)


def config_id(space: SearchSpace, item: Observation | Pending) -> str:
    """``prefix_id`` of ``item``'s whole configuration, memoized on ``item``.

    The duplicate check reads every trial of a study at every proposal, and a service keeps
    its observations between proposals: formatting each configuration once, not once per
    proposal, keeps a proposal's cost from growing with the study (a trial's parameters never
    change once it is proposed). The memo is keyed by the space's stage order.
    """
    key = tuple(space.stage_names)
    memo = item.__dict__.get("_config_id")
    if memo is not None and memo[0] == key:
        return str(memo[1])
    cid = prefix_id(space, item.params, len(key))
    item.__dict__["_config_id"] = (key, cid)
    return cid


def prefix_ids(space: SearchSpace, params: Mapping[str, Mapping[str, Scalar]]) -> list[str]:
    """``prefix_id`` of every depth ``1..K`` of ``params`` (each stage formatted once)."""
    ids: list[str] = []
    for stage in space.stage_names:
        sp = params[stage]
        part = stage + "(" + ",".join(f"{k}={sp[k]!r}" for k in sorted(sp)) + ")"
        ids.append(f"{ids[-1]}/{part}" if ids else part)
    return ids


def observed_prefix_ids(space: SearchSpace, item: Observation | Pending) -> list[str]:
    """``prefix_ids`` of ``item``'s configuration, memoized on ``item`` (as ``config_id``)."""
    key = tuple(space.stage_names)
    memo = item.__dict__.get("_prefix_ids")
    if memo is not None and memo[0] == key:
        return list(memo[1])
    ids = prefix_ids(space, item.params)
    item.__dict__["_prefix_ids"] = (key, tuple(ids))
    return ids


def encoded(space: SearchSpace, item: Observation | Pending) -> list[float]:
    """``space.encode(item.params)``, memoized on ``item`` for this ``space`` object: every
    proposal encodes the whole history for its GPs."""
    memo = item.__dict__.get("_encoded")
    if memo is not None and memo[0] is space:
        return list(memo[1])
    row = space.encode(item.params)
    item.__dict__["_encoded"] = (space, tuple(row))
    return row


class Optimizer(ABC):
    """Base of every optimizer; see the module docstring for the contract.

    Args:
        space: the pipeline's search space.
        direction: ``"maximize"`` or ``"minimize"``.
        seed: seeds the optimizer's own random generator.
        n_warmup: number of initial (random) trials before any model is used.
    """

    name: str = "base"

    def __init__(
        self,
        space: SearchSpace,
        direction: str = "maximize",
        seed: int = 0,
        n_warmup: int = 10,
    ) -> None:
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
        self.space = space
        self.direction = direction
        self.seed = seed
        self.n_warmup = n_warmup
        self.rng = random.Random(seed)
        self.n_asked = 0

    @abstractmethod
    def ask(
        self,
        n: int,
        history: Sequence[Observation],
        pending: Sequence[Pending] = (),
        cached: Sequence[CachedPrefix] = (),
        budget: BudgetState | None = None,
    ) -> list[Candidate]: ...

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state; restoring it reproduces the next proposals exactly."""
        version, internal, gauss = self.rng.getstate()
        return {
            "name": self.name,
            "seed": self.seed,
            "n_asked": self.n_asked,
            "rng": [version, list(internal), gauss],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("name") not in (None, self.name):
            raise ValueError(f"state of optimizer {state.get('name')!r} given to {self.name!r}")
        self.seed = int(state.get("seed", self.seed))
        self.n_asked = int(state.get("n_asked", 0))
        rng = state.get("rng")
        if rng is not None:
            version, internal, gauss = rng
            self.rng.setstate((int(version), tuple(int(x) for x in internal), gauss))

    # ------------------------------------------------------------------ helpers
    def sign(self) -> float:
        """+1 when maximising, -1 when minimising (models always maximise ``sign * value``)."""
        return 1.0 if self.direction == "maximize" else -1.0

    def _seen(self, history: Sequence[Observation], pending: Sequence[Pending]) -> set[str]:
        return {config_id(self.space, o) for o in history} | {
            config_id(self.space, p) for p in pending
        }


class RandomSearch(Optimizer):
    """Uniform random proposals (by the declared space); never duplicates a seen config."""

    name = "random"

    def ask(
        self,
        n: int,
        history: Sequence[Observation],
        pending: Sequence[Pending] = (),
        cached: Sequence[CachedPrefix] = (),
        budget: BudgetState | None = None,
    ) -> list[Candidate]:
        if n < 0:
            raise ValueError("n must be >= 0")
        seen = self._seen(history, pending)
        out: list[Candidate] = []
        k = len(self.space.stage_names)
        after: dict[int, float | None] = {}
        for _ in range(n):
            for _attempt in range(100):
                params = self.space.sample(self.rng)
                pid = prefix_id(self.space, params, k)
                if pid not in seen:
                    break
            seen.add(pid)
            depth, cost = estimated_cost(
                self.space, params, history, cached, worst=True, memo=after
            )
            out.append(Candidate(params=params, reuse_depth=depth, predicted_cost=cost))
            self.n_asked += 1
        return out


def cached_depth(
    space: SearchSpace, params: Mapping[str, Mapping[str, Scalar]], cached: Sequence[CachedPrefix]
) -> tuple[int, float]:
    """The deepest prefix of ``params`` the cache holds: ``(depth, load_seconds)``, ``(0, 0.0)``
    when none. The executor reuses every cached stage it meets, planned or not, so a draw
    that shares a cached prefix pays only for the stages after it plus the load."""
    if not cached:
        return 0, 0.0
    ids = prefix_ids(space, params)
    best = (0, 0.0)
    for c in cached:
        d = int(c.depth)
        if best[0] < d <= len(ids) and prefix_id(space, c.params, d) == ids[d - 1]:
            best = (d, float(c.load_seconds))
    return best


def max_cost_after(history: Sequence[Observation], depth: int = 0) -> float | None:
    """Largest observed compute cost of the stages after ``depth`` (``None`` without data)."""
    costs = [sum(o.stage_costs[depth:]) for o in history if len(o.stage_costs) > depth]
    return max(costs) if costs else None


def estimated_cost(
    space: SearchSpace,
    params: Mapping[str, Mapping[str, Scalar]],
    history: Sequence[Observation],
    cached: Sequence[CachedPrefix],
    *,
    worst: bool = False,
    memo: dict[int, float | None] | None = None,
) -> tuple[int, float | None]:
    """A model-free cost prediction for ``params``: the mean (``worst``: the largest) observed
    cost of the stages after its deepest cached prefix, plus that prefix's load time.

    Returns ``(depth, cost)``; ``cost`` is ``None`` before any trial finished. Charging the
    cached stages again would make a study whose upstream is cached (fixed parameters, a warm
    cache) admit far fewer trials than its budget pays for. ``memo`` keeps the per-depth
    figure between calls on the same ``history`` (one pass over it per depth, not per draw).
    """
    depth, load = cached_depth(space, params, cached)
    if memo is not None and depth in memo:
        after = memo[depth]
    else:
        after = (max_cost_after if worst else mean_cost_after)(history, depth)
        if memo is not None:
            memo[depth] = after
    return depth, None if after is None else after + load


def mean_cost_after(history: Sequence[Observation], depth: int = 0) -> float | None:
    """Mean observed compute cost of the stages after ``depth`` (``None`` without data).

    A model-free cost prediction for optimizers without a cost model (and for the budget
    check of the tuning loop when a candidate carries no prediction).
    """
    costs = [sum(o.stage_costs[depth:]) for o in history if len(o.stage_costs) > depth]
    return sum(costs) / len(costs) if costs else None
