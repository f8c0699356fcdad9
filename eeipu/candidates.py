"""Candidate generation: raw candidates for every prefix, one batched L-BFGS-B refinement,
and rounding to canonical values.

Each candidate row ``x`` (``d`` unit coordinates) carries a prefix plan ``p``: the stages
the plan reuses are pinned to the prefix's values, and the acquisition of the row is

    ``log a(x, p) = log EI(x) + eta * log I(x, p)``

(``eeipu.acquisition.CostCooledLogEI``), with ``I`` counting only the stages after the
plan's depth plus the prefix's load cost. Every prefix's candidates are scored in ONE tensor
batch and refined by one batched L-BFGS-B run (pinned dimensions have zero gradient), so a
proposal costs about one acquisition optimisation whatever the pool size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from botorch.generation.gen import gen_candidates_scipy
from torch import Tensor

from eeipu.acquisition import CostCooledLogEI, predicted_cost
from eeipu.base import Observation, Params, mean_cost_after
from eeipu.models import DTYPE, SurrogateGP
from eeipu.prefixes import PrefixPlan, pin_mask_and_values
from eeipu.space import SearchSpace
from eeipu.surrogates import CostModels

__all__ = [
    "PlannedAcquisition",
    "PrefixTable",
    "raw_candidates",
    "refine",
    "round_to_canonical",
]


@dataclass
class PrefixTable:
    """The pool's plans as tensors, one row per plan (``P`` plans, ``d`` dimensions).

    Attributes:
        plans: the ``P`` plans.
        pin_mask: ``P x d`` bool, the dimensions each plan fixes.
        pin_values: ``P x d`` their encoded values.
        depths: ``P`` stages each plan reuses.
        loads: ``P`` seconds to load each plan's prefix.
    """

    plans: list[PrefixPlan]
    pin_mask: Tensor
    pin_values: Tensor
    depths: Tensor
    loads: Tensor

    @classmethod
    def of(cls, space: SearchSpace, plans: list[PrefixPlan]) -> PrefixTable:
        pins = [pin_mask_and_values(space, p) for p in plans]
        return cls(
            plans,
            torch.stack([m for m, _ in pins]),
            torch.stack([v for _, v in pins]),
            torch.tensor([p.depth for p in plans]),
            torch.tensor([p.load_seconds for p in plans], dtype=DTYPE),
        )

    def append(self, space: SearchSpace, plan: PrefixPlan) -> int:
        """Add ``plan``; its row index."""
        mask, values = pin_mask_and_values(space, plan)
        self.plans.append(plan)
        self.pin_mask = torch.cat([self.pin_mask, mask[None]])
        self.pin_values = torch.cat([self.pin_values, values[None]])
        self.depths = torch.cat([self.depths, torch.tensor([plan.depth])])
        self.loads = torch.cat([self.loads, torch.tensor([plan.load_seconds], dtype=DTYPE)])
        return len(self.plans) - 1


class PlannedAcquisition:
    """Builds the row-wise acquisition of candidate rows, each with its plan.

    Args:
        table: the pool's plans.
        best_f: the incumbent, in the objective GP's standardised units.
        costs: the cost GPs (empty: cost-blind).
        eta: the cooling exponent.
        base_samples: ``S x K`` normals for the Monte Carlo expected inverse cost.
        inverse: ``"mc"`` (``E[1/C]``, EEIPU) or ``"mean"`` (``1/E[C]``).
        total_cost: one cost GP on the total cost (CArBO) instead of one per stage.
    """

    def __init__(
        self,
        table: PrefixTable,
        best_f: float,
        costs: CostModels,
        eta: float,
        base_samples: Tensor,
        inverse: str,
        total_cost: bool,
    ) -> None:
        self.table = table
        self.best_f = best_f
        self.costs = costs
        self.eta = eta
        self.base_samples = base_samples
        self.inverse = inverse
        self.total_cost = total_cost

    def paid_components(self, plan_index: Tensor) -> Tensor:
        """``b x K`` bool: the cost components each row pays for (those after its depth)."""
        if self.total_cost:
            return torch.ones(len(plan_index), 1, dtype=torch.bool)
        components = torch.arange(max(len(self.costs), 1)).unsqueeze(0)
        return components >= self.table.depths[plan_index].unsqueeze(1)

    def __call__(self, model: SurrogateGP, plan_index: Tensor) -> CostCooledLogEI:
        """The acquisition of ``b`` rows whose plans are ``plan_index`` (``b``)."""
        return CostCooledLogEI(
            model,
            self.best_f,
            self.costs,
            self.eta,
            self.paid_components(plan_index),
            self.table.loads[plan_index],
            self.base_samples,
            inverse=self.inverse,
            pin_mask=self.table.pin_mask[plan_index],
            pin_values=self.table.pin_values[plan_index],
        )

    def cost_terms(
        self,
        model: SurrogateGP,
        X: Tensor,
        plan_index: Tensor,
        history: Sequence[Observation],
    ) -> tuple[Tensor | None, Tensor]:
        """``log I(x, p)`` (``b``; ``None`` when cost-blind or ``eta = 0``) and the predicted
        cost ``E[C(x, p)]`` (``b``) of rows ``X`` (``b x d``) with plans ``plan_index``.

        Without cost GPs the predicted cost is the mean observed cost of the stages after
        the plan's depth, plus its load cost.
        """
        acquisition = self(model, plan_index)
        rows = X.unsqueeze(1)
        log_inverse = None
        if self.costs and self.eta > 0:
            log_inverse = acquisition.log_inverse_cost(rows)
        if self.costs:
            mu, sigma = acquisition.cost_moments(rows, paid_only=True)
            loads = self.table.loads[plan_index]
            return log_inverse, predicted_cost(mu, sigma, self.paid_components(plan_index), loads)
        plans = self.table.plans
        return log_inverse, torch.tensor(
            [
                (mean_cost_after(history, plans[int(j)].depth) or 0.0) + plans[int(j)].load_seconds
                for j in plan_index
            ],
            dtype=DTYPE,
        )


def raw_candidates(quasi_random: Tensor, best: Tensor, gen: torch.Generator) -> Tensor:
    """Raw candidates of one prefix, before its pinned dimensions are set.

    Three quarters are the quasi-random points, a quarter the best configurations so far
    perturbed in every dimension by ``N(0, 0.05^2)`` and clipped to the unit cube.

    Args:
        quasi_random: ``n x d`` quasi-random points in the unit cube.
        best: ``t x d`` best configurations so far (encoded), ``t >= 1``, cycled through.
        gen: the generator of the perturbations.

    Returns:
        ``n x d`` rows.
    """
    n, d = quasi_random.shape
    n_local = n // 4
    anchors = best[torch.arange(n_local) % best.shape[0]].clone()
    jitter = torch.randn(n_local, d, generator=gen, dtype=DTYPE) * 0.05
    return torch.cat([quasi_random[: n - n_local], (anchors + jitter).clamp(0, 1)])


def refine(
    acquisition: PlannedAcquisition,
    model: SurrogateGP,
    X_raw: Tensor,
    plan_index: Tensor,
    n_pools: int,
    restarts: int,
    maxiter: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Refine the best raw rows by one batched L-BFGS-B run.

    The starting points are the ``restarts`` best raw rows of each plan and the
    ``2 * restarts`` best overall.

    Args:
        acquisition: the row-wise acquisition.
        model: the objective GP the acquisition scores with.
        X_raw: ``N x d`` raw rows, pinned.
        plan_index: ``N`` the plan of each raw row.
        n_pools: the number of plans ``P``.
        restarts: starting points per plan.
        maxiter: L-BFGS-B iterations.

    Returns:
        The refined rows followed by the raw rows (``(R + N) x d``), their plans and their
        acquisition values before rounding (``R + N``).
    """
    raw_scores = acquisition(model, plan_index)(X_raw.unsqueeze(1))
    starts: list[int] = []
    for j in range(n_pools):
        rows_of_plan = (plan_index == j).nonzero().squeeze(-1)
        order = rows_of_plan[raw_scores[rows_of_plan].argsort(descending=True)]
        starts += order[:restarts].tolist()
    starts += raw_scores.argsort(descending=True)[: 2 * restarts].tolist()
    start_index = torch.tensor(sorted(set(starts)))
    with torch.enable_grad():
        X_refined, refined_scores = gen_candidates_scipy(
            X_raw[start_index].unsqueeze(1),
            acquisition(model, plan_index[start_index]),
            lower_bounds=0.0,
            upper_bounds=1.0,
            options={"maxiter": maxiter},
            use_parallel_mode=False,
        )
    X_all = torch.cat([X_refined.squeeze(1).detach(), X_raw])
    scores = torch.cat([refined_scores.detach().reshape(-1), raw_scores])
    return X_all, torch.cat([plan_index[start_index], plan_index]), scores


def round_to_canonical(
    space: SearchSpace, X: Tensor, plan_index: Tensor, plans: Sequence[PrefixPlan]
) -> list[Params]:
    """Canonical configurations of rows ``X`` (``N x d``), each plan's stages copied exactly."""
    configurations: list[Params] = []
    for i in range(X.shape[0]):
        params = space.decode(X[i].tolist())
        plan = plans[int(plan_index[i])]
        for s in space.stage_names[: plan.depth]:
            params[s] = dict(plan.params[s])
        configurations.append(params)
    return configurations
