"""Greedy batch selection with a kriging believer.

The first pick maximises ``log EI(x) + eta * log I(x, p)`` over the scored rows; each later
pick does so again after the earlier picks joined the objective GP at their predicted mean
(so EI vanishes at them). A row is skipped when its configuration was seen or is pending,
or when its predicted cost exceeds what remains of the budget. For a memoizing optimizer an
earlier pick will be pending as soon as the batch is submitted, so its prefixes join the pool
(``via="batch"``): a later pick may plan to reuse them, and the stage's compute lock makes
the two workers compute the prefix once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from eeipu.base import Candidate, Observation, Params, prefix_id
from eeipu.candidates import PlannedAcquisition
from eeipu.models import DTYPE, SurrogateGP
from eeipu.prefixes import PrefixPlan
from eeipu.space import SearchSpace

__all__ = ["BatchReuse", "ScoredRows", "select_batch"]


@dataclass
class ScoredRows:
    """The rounded candidates and what the batch selection needs of each (``N`` rows).

    Attributes:
        configurations: the ``N`` canonical configurations.
        X: ``N x d`` their encodings.
        plan_index: ``N`` the plan (row of the prefix table) of each.
        log_inverse_cost: ``N`` ``log I(x, p)``; ``None`` when cost-blind or ``eta = 0``.
        predicted_cost: ``N`` predicted cost in seconds.
    """

    configurations: list[Params]
    X: Tensor
    plan_index: Tensor
    log_inverse_cost: Tensor | None
    predicted_cost: Tensor

    def extend(self, other: ScoredRows) -> None:
        self.configurations += other.configurations
        self.X = torch.cat([self.X, other.X])
        self.plan_index = torch.cat([self.plan_index, other.plan_index])
        self.predicted_cost = torch.cat([self.predicted_cost, other.predicted_cost])
        if self.log_inverse_cost is not None and other.log_inverse_cost is not None:
            self.log_inverse_cost = torch.cat([self.log_inverse_cost, other.log_inverse_cost])


def _pick_info(
    acquisition: PlannedAcquisition, objective: SurrogateGP, rows: ScoredRows, i: int
) -> dict[str, Any]:
    """Why row ``i`` was picked: the cooling, its prefix and the cost GPs' moments."""
    plan = acquisition.table.plans[int(rows.plan_index[i])]
    info: dict[str, Any] = {
        "phase": "model",
        "eta": acquisition.eta,
        "prefix": plan.pid,
        "via": plan.source,
    }
    if acquisition.costs:  # the cost components' log-normal moments
        mu, sd = acquisition(objective, rows.plan_index[i : i + 1]).cost_moments(
            rows.X[i].reshape(1, 1, -1)
        )
        info["cost_log_mu"] = [round(float(v), 4) for v in mu[0]]
        info["cost_log_sd"] = [round(float(v), 4) for v in sd[0]]
    return info


def _batch_prefix_rows(
    space: SearchSpace,
    acquisition: PlannedAcquisition,
    objective: SurrogateGP,
    rows: ScoredRows,
    chosen: int,
    top_rows: list[int],
    in_pool: set[str],
    load_seconds: float,
    history: Sequence[Observation],
) -> ScoredRows | None:
    """Rows that reuse the prefixes the pick ``chosen`` will produce: each new prefix joins
    the pool, and its rows are the ``top_rows`` with the pick's stages pinned in."""
    n_stages = len(space.stage_names)
    configurations: list[Params] = []
    plan_index: list[int] = []
    for depth in range(1, n_stages):
        prefix = {s: dict(rows.configurations[chosen][s]) for s in space.stage_names[:depth]}
        pid = prefix_id(space, prefix, depth)
        if pid in in_pool:
            continue
        in_pool.add(pid)
        j = acquisition.table.append(space, PrefixPlan(depth, prefix, load_seconds, pid, "batch"))
        for i in top_rows:
            q = {st: dict(v) for st, v in rows.configurations[i].items()}
            q.update({st: dict(v) for st, v in prefix.items()})
            configurations.append(q)
            plan_index.append(j)
    if not configurations:
        return None
    X = torch.tensor([space.encode(q) for q in configurations], dtype=DTYPE)
    index = torch.tensor(plan_index)
    log_inverse, predicted = acquisition.cost_terms(objective, X, index, history)
    return ScoredRows(configurations, X, index, log_inverse, predicted)


@dataclass(frozen=True)
class BatchReuse:
    """How a pick's prefixes feed the later picks of the same batch.

    Attributes:
        memoize: whether picks' prefixes join the pool.
        batch_load_seconds: the load cost assumed for a prefix a pick will produce.
        n_top_rows: how many of the best rows get each batch prefix pinned in.
    """

    memoize: bool
    batch_load_seconds: float
    n_top_rows: int


def select_batch(
    n: int,
    space: SearchSpace,
    acquisition: PlannedAcquisition,
    objective: SurrogateGP,
    believer: SurrogateGP,
    rows: ScoredRows,
    seen: set[str],
    room: float,
    reuse: BatchReuse,
    history: Sequence[Observation],
) -> list[Candidate]:
    """Up to ``n`` picks, greedily.

    Args:
        n: the batch size.
        space: the search space.
        acquisition: the row-wise acquisition (its table grows by the batch's prefixes).
        objective: the objective GP (cost terms, pick info).
        believer: the objective GP with the pending trials as fantasies.
        rows: the scored candidates (extended by rows that reuse batch prefixes).
        seen: ids of the configurations seen or pending (picks are added).
        room: seconds of budget the picks may still spend.
        reuse: whether and how picks' prefixes join the pool for the later picks.
        history: the observations (the model-free cost estimate).
    """
    n_stages = len(space.stage_names)
    in_pool = {p.pid for p in acquisition.table.plans}
    picks: list[Candidate] = []
    picked_X: list[Tensor] = []
    model = believer
    while len(picks) < n:
        score = acquisition(model, rows.plan_index).log_ei(rows.X.unsqueeze(1))
        if rows.log_inverse_cost is not None:
            score = score + acquisition.eta * rows.log_inverse_cost
        chosen = None
        for i in score.argsort(descending=True).tolist():
            pid = prefix_id(space, rows.configurations[i], n_stages)
            if pid in seen or float(rows.predicted_cost[i]) > room:
                continue
            chosen = i
            break
        if chosen is None:
            break
        plan = acquisition.table.plans[int(rows.plan_index[chosen])]
        seen.add(prefix_id(space, rows.configurations[chosen], n_stages))
        room -= float(rows.predicted_cost[chosen])
        picks.append(
            Candidate(
                params=rows.configurations[chosen],
                reuse_depth=plan.depth,
                predicted_cost=float(rows.predicted_cost[chosen]),
                acquisition=float(score[chosen]),
                info=_pick_info(acquisition, objective, rows, chosen),
            )
        )
        picked_X.append(rows.X[chosen])
        if len(picks) == n:
            break
        model = believer.with_fantasies(torch.stack(picked_X))
        if not reuse.memoize:
            continue
        top_rows = score.argsort(descending=True)[: reuse.n_top_rows].tolist()
        more = _batch_prefix_rows(
            space,
            acquisition,
            objective,
            rows,
            chosen,
            top_rows,
            in_pool,
            reuse.batch_load_seconds,
            history,
        )
        if more is not None:
            rows.extend(more)
    return picks
