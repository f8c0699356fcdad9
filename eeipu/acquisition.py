"""Cost-aware acquisition functions: EEIPU and the cost-weighted baselines.

Everything is computed in log space on top of BoTorch's ``LogExpectedImprovement``::

    log EEIPU(x, d) = log EI(x) + eta * log I(x, d)
    I(x, d)         = E[ 1 / (L_d + sum_{k=d+1..K} C_k(x_k)) ]

where ``C_k`` is stage ``k``'s cost, log-normal under its GP (``log C_k ~ N(mu_k, s_k^2)``),
``L_d`` the measured cost of loading the cached prefix of depth ``d`` (0 for a full run), and
``eta`` the cooling exponent. ``I`` is estimated by Monte Carlo with samples drawn
INDEPENDENTLY per stage (one quasi-random dimension per stage), so stage costs are not
perfectly correlated as they were with the published code's shared sampler.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from botorch.acquisition.acquisition import AcquisitionFunction
from botorch.acquisition.analytic import _log_ei_helper
from torch import Tensor
from torch.quasirandom import SobolEngine

from eeipu.models import DTYPE, SurrogateGP

__all__ = [
    "CostCooledLogEI",
    "cooling_eta",
    "log_expected_inverse_cost",
    "log_inverse_expected_cost",
    "normal_base_samples",
]


def cooling_eta(total: float, spent: float, warmup_spent: float) -> float:
    """eta = (B - B_spent) / (B - B_warmup), clipped to [0, 1]; 1 for an unlimited budget."""
    if not math.isfinite(total):
        return 1.0
    denom = total - warmup_spent
    if denom <= 0:
        return 0.0
    return min(1.0, max(0.0, (total - spent) / denom))


def normal_base_samples(n_samples: int, n_stages: int, seed: int) -> Tensor:
    """``n_samples x n_stages`` standard normals, scrambled Sobol, one dimension per stage.

    Distinct Sobol dimensions are independent, so each stage gets its own samples.
    """
    eng = SobolEngine(max(1, n_stages), scramble=True, seed=seed)
    u = eng.draw(n_samples, dtype=DTYPE)[:, :n_stages]
    u = u.clamp(1e-6, 1 - 1e-6)
    return cast(Tensor, torch.special.ndtri(u))


def _log_total(log_parts: Tensor, include: Tensor, log_load: Tensor) -> Tensor:
    """log(L + sum of included parts) along the last dim, ``-inf`` parts dropped."""
    masked = torch.where(include, log_parts, torch.full_like(log_parts, -math.inf))
    stacked = torch.cat([masked, log_load.unsqueeze(-1).expand(*masked.shape[:-1], 1)], dim=-1)
    return torch.logsumexp(stacked, dim=-1)


def log_expected_inverse_cost(
    mu: Tensor, sigma: Tensor, include: Tensor, load: Tensor, base_samples: Tensor
) -> Tensor:
    """log E[1 / (load + sum_k include_k * exp(mu_k + sigma_k z_k))] by Monte Carlo.

    Args:
        mu: ``b x K`` posterior means of each stage's log cost.
        sigma: ``b x K`` posterior standard deviations of each stage's log cost.
        include: ``b x K`` bool, which stages this row pays for (not cached).
        load: ``b`` cost of loading the row's cached prefix (seconds, >= 0).
        base_samples: ``S x K`` standard normals (independent across stages).

    Returns:
        ``b`` tensor of log E[1/C].
    """
    log_c = mu.unsqueeze(-2) + sigma.unsqueeze(-2) * base_samples  # b x S x K
    log_load = torch.log(load.clamp_min(0.0)).unsqueeze(-1).expand(*log_c.shape[:-1])
    log_total = _log_total(log_c, include.unsqueeze(-2).expand_as(log_c), log_load)  # b x S
    return torch.logsumexp(-log_total, dim=-1) - math.log(base_samples.shape[0])


def log_inverse_expected_cost(mu: Tensor, sigma: Tensor, include: Tensor, load: Tensor) -> Tensor:
    """-log E[C] in closed form (log-normal means), as used by EIPU and CArBO."""
    return -_log_total(mu + 0.5 * sigma**2, include, torch.log(load.clamp_min(0.0)))


class CostCooledLogEI(AcquisitionFunction):
    r"""Row-wise log EEIPU (and its baselines), one prefix plan per row.

    ``log a(x, d) = log EI(x) + eta * log I(x, d)``, with ``I`` the Monte Carlo expected
    inverse cost (``inverse="mc"``, EEIPU) or the inverse of the expected cost
    (``inverse="mean"``, EIPU / CArBO). ``eta = 0`` (or no cost model) is plain log EI.

    Each row of the batch carries its own plan: which cost components it pays for, the load
    cost of the prefix it reuses, and the dimensions that prefix fixes (``pin_mask``,
    ``pin_values``, ``b x d``): those are overwritten in ``X``, so their gradient is zero and
    one batched optimisation serves every prefix.

    Args:
        model: the objective surrogate (standardised, maximised).
        best_f: incumbent in the surrogate's standardised units.
        cost_models: one surrogate of log cost per component (stages, or one for the whole
            pipeline), each with the column slice of ``X`` it reads.
        eta: cooling exponent.
        include: ``b x K`` bool, components each row pays for.
        load: ``b`` load cost of each row's cached prefix in seconds.
        base_samples: ``S x K`` normals for the Monte Carlo estimate.
        inverse: ``"mc"`` or ``"mean"``.
    """

    def __init__(
        self,
        model: SurrogateGP,
        best_f: float,
        cost_models: list[tuple[SurrogateGP, slice]],
        eta: float,
        include: Tensor,
        load: Tensor,
        base_samples: Tensor | None = None,
        inverse: str = "mc",
        pin_mask: Tensor | None = None,
        pin_values: Tensor | None = None,
    ) -> None:
        assert model.model is not None
        super().__init__(model=model.model)
        self.objective = model
        self.best_f = float(best_f)
        self.cost_models = cost_models
        self.eta = float(eta)
        self.include = include
        self.load = load
        self.base_samples = base_samples
        self.inverse = inverse
        self.pin_mask = pin_mask
        self.pin_values = pin_values

    def pin(self, X: Tensor) -> Tensor:
        """``X`` (``b x 1 x d``) with each row's cached dimensions set to the prefix's values."""
        if self.pin_mask is None or self.pin_values is None:
            return X
        return torch.where(self.pin_mask.unsqueeze(1), self.pin_values.unsqueeze(1), X)

    def cost_moments(self, X: Tensor, paid_only: bool = False) -> tuple[Tensor, Tensor]:
        """Means and standard deviations of each component's log cost, each ``b x K``.

        Args:
            X: ``b x 1 x d`` candidates.
            paid_only: predict each component only for the rows that pay for it
                (``include``); the others get mean and deviation 0, which every cost
                term masks out. A row that reuses a deep prefix skips most cost GPs.
        """
        b = X.shape[0]
        mus, sigmas = [], []
        for k, (gp, sl) in enumerate(self.cost_models):
            rows = self.include[:, k] if paid_only else None
            if rows is None or bool(rows.all()):
                m, s = gp.predict(X[..., sl])
                mus.append(m.reshape(b))
                sigmas.append(s.reshape(b))
                continue
            m_full = torch.zeros(b, dtype=X.dtype)
            s_full = torch.zeros(b, dtype=X.dtype)
            if bool(rows.any()):
                m, s = gp.predict(X[rows][..., sl])
                m_full = m_full.masked_scatter(rows, m.reshape(-1))
                s_full = s_full.masked_scatter(rows, s.reshape(-1))
            mus.append(m_full)
            sigmas.append(s_full)
        return torch.stack(mus, -1), torch.stack(sigmas, -1)

    def log_inverse_cost(self, X: Tensor) -> Tensor:
        """log I(x, d) for each row, ``b``."""
        mu, sigma = self.cost_moments(X, paid_only=True)
        if self.inverse == "mc":
            assert self.base_samples is not None
            return log_expected_inverse_cost(mu, sigma, self.include, self.load, self.base_samples)
        return log_inverse_expected_cost(mu, sigma, self.include, self.load)

    def log_ei(self, X: Tensor) -> Tensor:
        """Analytic log EI (BoTorch's numerically stable helper) of ``X`` (``b x 1 x d``)."""
        mean, std = self.objective.predict(X)
        # The surrogate predicts standardised targets; ``best_f`` is in the same units.
        mean = (mean - self.objective.y_mean) / self.objective.y_std
        std = (std / self.objective.y_std).clamp_min(1e-9)
        u = (mean - self.best_f) / std
        return (_log_ei_helper(u) + std.log()).reshape(X.shape[0])

    def forward(self, X: Tensor) -> Tensor:
        """Args: X: ``b x 1 x d``. Returns: ``b`` log acquisition values."""
        X = self.pin(X)
        val = self.log_ei(X)
        if self.eta > 0 and self.cost_models:
            val = val + self.eta * self.log_inverse_cost(X)
        return val


def predicted_cost(mu: Tensor, sigma: Tensor, include: Tensor, load: Tensor) -> Tensor:
    """E[C] = load + sum of included log-normal means, ``b`` (for the budget check)."""
    return torch.exp(-log_inverse_expected_cost(mu, sigma, include, load))
