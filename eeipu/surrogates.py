"""Fitting the GP optimizers' surrogates: the objective GP and the log-cost GPs.

The objective GP models the warped objective (``eeipu.warp``) of the encoded configurations;
its kernel is stage-additive by default (one RBF term per stage plus one over all
dimensions, each with its own scale). The cost GPs model ``log C``, one per stage (EIPU,
EEIPU) or one on the total (CArBO), with a least-squares linear prior mean and one RBF term
per parameter plus one over all of them, so a cost driven by one parameter is not forgotten
where another, which only wiggles the cost, takes unseen values (a stage of more than
``MAX_COST_TERMS`` parameters gets one ARD RBF kernel instead: fitting 26 terms made a
proposal on the unlearning pipelines take 7-10 s at 5 observations). Hyperparameters are kept
between proposals (``FitState``) and refitted when the data grew by ``refit_fraction``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from eeipu.acquisition import predicted_cost
from eeipu.base import Observation, Pending, encoded, mean_cost_after
from eeipu.models import DTYPE, FitState, SurrogateGP, data_subset, fit_surrogate
from eeipu.space import SearchSpace

__all__ = ["COST_FLOOR", "MAX_COST_TERMS", "CostModels", "Surrogates", "mean_of_duplicates"]

COST_FLOOR = 1e-6  # seconds: the least stage cost whose log the cost GPs see
MAX_COST_TERMS = 8  # most per-parameter kernel terms of a cost GP
COST_ROWS_PER_COLUMN = 50  # rows a cost GP holds per input column (at least 64) at most

# Each cost GP with the columns of the encoded configuration it reads.
CostModels = list[tuple[SurrogateGP, slice]]


def mean_of_duplicates(X: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Distinct rows of ``X`` (``n x d``) in order of first appearance, with the mean of
    ``y`` (``n``) over each one's repeats."""
    uniq, inverse = torch.unique(X, dim=0, return_inverse=True)
    if uniq.shape[0] == X.shape[0]:
        return X, y
    n_u = uniq.shape[0]
    total = torch.zeros(n_u, dtype=y.dtype).index_add_(0, inverse, y)
    count = torch.zeros(n_u, dtype=y.dtype).index_add_(0, inverse, torch.ones_like(y))
    first = torch.full((n_u,), X.shape[0], dtype=torch.long).scatter_reduce_(
        0, inverse, torch.arange(X.shape[0]), reduce="amin"
    )
    order = torch.argsort(first)
    return uniq[order], (total / count)[order]


class Surrogates:
    """The fitted GPs of one optimizer and their hyperparameters between proposals.

    Args:
        space: the search space.
        cost_model: ``"none"``, ``"stages"`` (one log-cost GP per stage) or ``"total"``.
        refit_fraction: refit hyperparameters when the data grew by this fraction.
        stage_additive: the objective GP's kernel is stage-additive (else one ARD RBF).
        objective_noise: fixed noise variance of the objective GP, ``None``: learnt.
        max_points: most observations the objective GP is conditioned on (``None``: all).
            Beyond it the GP sees the best, the latest and rows spread over the rest
            (``eeipu.models.data_subset``). A cost GP holds at most half as many, and at
            most ``COST_ROWS_PER_COLUMN`` per input column (64 at least): beyond that,
            each distinct input once (its mean cost), the latest and a spread. A stage's
            cost is a smooth function of its few parameters; on synthetic-10stage at 1,000
            observations 150 rows predicted held-out log costs as well as 500 and made a
            proposal 1.4x faster (``eeipu bench suggest``, ``docs/benchmarks.md``).
            Hyperparameters are fitted on at most a quarter as many rows, chosen alike.
    """

    def __init__(
        self,
        space: SearchSpace,
        cost_model: str,
        refit_fraction: float,
        stage_additive: bool,
        objective_noise: float | None,
        max_points: int | None = None,
    ) -> None:
        self.space = space
        self.max_points = max_points
        self.cost_model = cost_model
        self.refit_fraction = refit_fraction
        self.stage_additive = stage_additive
        self.objective_noise = objective_noise
        self.fits: dict[str, FitState] = {}

    def state_dict(self) -> dict[str, Any]:
        return {k: v.to_dict() for k, v in sorted(self.fits.items())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.fits = {k: FitState.from_dict(v) for k, v in dict(state).items()}

    def _fit(
        self,
        name: str,
        X: Tensor,
        y: Tensor,
        mean: str,
        groups: list[list[int]] | None,
        noise: float | None = None,
        top: bool = False,
    ) -> SurrogateGP:
        n_seen = int(y.shape[0])
        fit_rows = None
        if self.max_points is not None:
            limit, quarter = self.max_points, self.max_points // 4
            if not top:  # a cost GP: a smooth function of a few columns needs fewer rows
                limit = min(limit // 2, max(64, COST_ROWS_PER_COLUMN * X.shape[-1]))
                quarter = min(quarter, limit)
            if n_seen > limit:
                if not top:  # repeated inputs (a reused prefix's stages) count once
                    X, y = mean_of_duplicates(X, y)
                rows = data_subset(y, limit, top)
                X, y = X[rows], y[rows]
            if y.shape[0] > quarter:
                fit_rows = data_subset(y, quarter, top)
        gp = fit_surrogate(
            X,
            y,
            self.fits.get(name),
            refit_fraction=self.refit_fraction,
            groups=groups,
            mean=mean,
            noise=noise,
            fit_rows=fit_rows,
            n_seen=n_seen,
        )
        self.fits[name] = gp.state
        return gp

    def objective(self, X: Tensor, targets: Tensor) -> SurrogateGP:
        """The objective GP.

        Args:
            X: ``n x d`` encoded configurations.
            targets: ``n`` warped objective values (larger is better).
        """
        groups = None
        if self.stage_additive and len(self.space.stage_names) > 1:
            groups = [
                list(range(sl.start, sl.stop))
                for sl in self.space.stage_slices.values()
                if sl.stop > sl.start
            ]
        return self._fit(
            "objective", X, targets, "constant", groups, self.objective_noise, top=True
        )

    def costs(self, history: Sequence[Observation]) -> CostModels:
        """The log-cost GPs on the trials that ran every stage (none with fewer than two)."""
        space, n_stages = self.space, len(self.space.stage_names)
        rows = [o for o in history if len(o.stage_costs) == n_stages]
        if self.cost_model == "none" or len(rows) < 2:
            return []
        X = torch.tensor([encoded(space, o) for o in rows], dtype=DTYPE)
        C = torch.tensor([o.stage_costs for o in rows], dtype=DTYPE).clamp_min(COST_FLOOR)
        if self.cost_model == "total":
            total = self._fit("cost_total", X, C.sum(-1).log(), "linear", self.param_groups(None))
            return [(total, slice(0, space.dims))]
        models = []
        for i, stage in enumerate(space.stage_names):
            sl = space.stage_slices[stage]
            gp = self._fit(f"cost_{i}", X[:, sl], C[:, i].log(), "linear", self.param_groups(stage))
            models.append((gp, sl))
        return models

    def param_groups(self, stage: str | None) -> list[list[int]] | None:
        """Columns of each parameter of ``stage`` (of all stages: ``None``), relative to the
        stage's slice: the cost GP's additive kernel terms; ``None`` (one ARD RBF kernel) for
        a single parameter or more than ``MAX_COST_TERMS``."""
        start = 0 if stage is None else self.space.stage_slices[stage].start
        groups = [
            list(range(sp.offset - start, sp.offset - start + sp.param.dims))
            for sp in self.space.specs
            if (stage is None or sp.stage == stage) and sp.param.dims > 0
        ]
        return groups if 1 < len(groups) <= MAX_COST_TERMS else None

    def pending_cost(
        self, history: Sequence[Observation], pending: Sequence[Pending], costs: CostModels
    ) -> float:
        """Predicted cost of the trials already pending (they will spend budget too).

        ``sum_p E[sum_{k > d_p} C_k(x_p)]`` under the cost GPs, or the mean observed cost of
        the stages after each pending trial's reused depth ``d_p`` without them.
        """
        if not pending:
            return 0.0
        if not costs:
            return sum(mean_cost_after(history, p.reuse_depth) or 0.0 for p in pending)
        X_pending = torch.tensor([self.space.encode(p.params) for p in pending], dtype=DTYPE)
        depth = torch.tensor([p.reuse_depth for p in pending])
        mus, sigmas = zip(*(gp.predict(X_pending[:, sl]) for gp, sl in costs), strict=True)
        mu, sigma = torch.stack(mus, -1), torch.stack(sigmas, -1)
        if self.cost_model == "total":
            include = torch.ones(len(pending), 1, dtype=torch.bool)
        else:
            include = torch.arange(len(costs)).unsqueeze(0) >= depth.unsqueeze(1)
        no_load = torch.zeros(len(pending), dtype=DTYPE)
        return float(predicted_cost(mu, sigma, include, no_load).sum())
