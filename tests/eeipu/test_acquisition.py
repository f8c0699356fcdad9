"""The mathematics of ``eeipu.acquisition``."""

from __future__ import annotations

import math

import torch
from botorch.acquisition import LogExpectedImprovement

from eeipu.acquisition import (
    CostCooledLogEI,
    cooling_eta,
    log_expected_inverse_cost,
    log_inverse_expected_cost,
    normal_base_samples,
)
from eeipu.models import DTYPE, fit_surrogate


def test_mc_expected_inverse_cost_matches_lognormal_closed_form() -> None:
    # C ~ LogNormal(mu, sigma^2)  =>  E[1/C] = exp(-mu + sigma^2 / 2).
    base = normal_base_samples(8192, 1, seed=3)
    for mu, sigma in [(0.0, 0.3), (1.5, 0.8), (-2.0, 1.2)]:
        got = log_expected_inverse_cost(
            torch.tensor([[mu]], dtype=DTYPE),
            torch.tensor([[sigma]], dtype=DTYPE),
            torch.tensor([[True]]),
            torch.zeros(1, dtype=DTYPE),
            base,
        )
        assert math.isclose(float(got), -mu + sigma**2 / 2, abs_tol=0.01)


def test_expected_inverse_cost_is_not_inverse_expected_cost() -> None:
    # Jensen: E[1/C] > 1/E[C] for a non-degenerate cost.
    mu, sigma = torch.tensor([[0.0, 0.5]], dtype=DTYPE), torch.tensor([[1.0, 1.0]], dtype=DTYPE)
    inc, load = torch.tensor([[True, True]]), torch.zeros(1, dtype=DTYPE)
    mc = log_expected_inverse_cost(mu, sigma, inc, load, normal_base_samples(4096, 2, seed=0))
    assert float(mc) > float(log_inverse_expected_cost(mu, sigma, inc, load))


def test_stage_samples_are_independent() -> None:
    z = normal_base_samples(4096, 3, seed=1)
    corr = torch.corrcoef(z.T)
    off = corr - torch.diag(torch.diag(corr))
    assert float(off.abs().max()) < 0.05
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05


def test_cached_stages_are_charged_their_load_cost_only() -> None:
    base = normal_base_samples(256, 2, seed=0)
    mu = torch.tensor([[math.log(5.0), math.log(1.0)]] * 2, dtype=DTYPE)
    sigma = torch.full((2, 2), 1e-6, dtype=DTYPE)
    inc = torch.tensor([[True, True], [False, True]])
    load = torch.tensor([0.0, 0.25], dtype=DTYPE)
    got = log_expected_inverse_cost(mu, sigma, inc, load, base).exp()
    assert torch.allclose(got, torch.tensor([1 / 6.0, 1 / 1.25], dtype=DTYPE), rtol=1e-4)


def test_cooling_eta() -> None:
    assert cooling_eta(100.0, 20.0, 20.0) == 1.0
    assert math.isclose(cooling_eta(100.0, 60.0, 20.0), 0.5)
    assert cooling_eta(100.0, 120.0, 20.0) == 0.0
    assert cooling_eta(math.inf, 5.0, 1.0) == 1.0


def _models(seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(30, 4, generator=g, dtype=DTYPE)
    y = -((X - 0.4) ** 2).sum(-1)
    obj = fit_surrogate(X, y)
    c1 = fit_surrogate(X[:, :2], (1 + X[:, 0]).log())
    c2 = fit_surrogate(X[:, 2:], (0.5 + 2 * X[:, 3]).log())
    return obj, [(c1, slice(0, 2)), (c2, slice(2, 4))], g


def test_eta_zero_ranks_like_ei() -> None:
    obj, costs, g = _models()
    Xc = torch.rand(200, 1, 4, generator=g, dtype=DTYPE)
    best = float(obj.train_Y.max())
    inc = torch.ones(200, 2, dtype=torch.bool)
    load = torch.zeros(200, dtype=DTYPE)
    base = normal_base_samples(64, 2, seed=0)
    with torch.no_grad():
        ei = LogExpectedImprovement(obj.model, best_f=best)(Xc)
        a0 = CostCooledLogEI(obj, best, costs, 0.0, inc, load, base)(Xc)
        a1 = CostCooledLogEI(obj, best, costs, 1.0, inc, load, base)(Xc)
    assert torch.equal(a0.argsort(), ei.argsort())
    assert torch.allclose(a0, ei)
    assert not torch.equal(a1.argsort(), ei.argsort())  # cost-aware when eta > 0


def test_pins_fix_the_cached_dimensions() -> None:
    obj, costs, g = _models(1)
    X = torch.rand(5, 1, 4, generator=g, dtype=DTYPE)
    mask = torch.tensor([[True, True, False, False]] * 5)
    vals = torch.full((5, 4), 0.7, dtype=DTYPE)
    acq = CostCooledLogEI(
        obj,
        0.0,
        costs,
        1.0,
        torch.ones(5, 2, dtype=torch.bool),
        torch.zeros(5, dtype=DTYPE),
        normal_base_samples(32, 2, 0),
        pin_mask=mask,
        pin_values=vals,
    )
    X.requires_grad_(True)
    acq(X).sum().backward()
    assert X.grad is not None and float(X.grad[..., :2].abs().max()) == 0.0
    assert torch.all(acq.pin(X.detach())[..., :2] == 0.7)


def test_paid_only_moments_skip_the_cost_gps_a_row_does_not_pay_for() -> None:
    obj, costs, g = _models(2)
    X = torch.rand(6, 1, 4, generator=g, dtype=DTYPE, requires_grad=True)
    inc = torch.tensor([[True, True], [False, True], [False, False]] * 2)
    load = torch.full((6,), 0.3, dtype=DTYPE)
    base = normal_base_samples(64, 2, seed=0)
    acq = CostCooledLogEI(obj, 0.0, costs, 1.0, inc, load, base)
    mu_all, sd_all = (t.detach() for t in acq.cost_moments(X))
    mu, sd = (t.detach() for t in acq.cost_moments(X, paid_only=True))
    assert torch.allclose(mu[inc], mu_all[inc]) and torch.allclose(sd[inc], sd_all[inc])
    assert float(mu[~inc].abs().max()) == 0.0 and float(sd[~inc].abs().max()) == 0.0
    # The expected inverse cost is the one computed from every component's moments.
    full = log_expected_inverse_cost(mu_all, sd_all, inc, load, base)
    assert torch.allclose(acq.log_inverse_cost(X).detach(), full)
    assert torch.allclose(full[2::3].exp(), 1 / load[2::3])  # nothing paid: the load only
    acq.log_inverse_cost(X).sum().backward()
    assert X.grad is not None and float(X.grad[0].abs().sum()) > 0.0
