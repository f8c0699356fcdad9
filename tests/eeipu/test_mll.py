"""The marginal likelihood evaluated without GPyTorch (``eeipu.mll``) against GPyTorch's."""

from __future__ import annotations

import math
import warnings
from typing import Any, cast

import pytest
import torch
from botorch.optim.fit import fit_gpytorch_mll_scipy
from gpytorch.kernels import MaternKernel
from gpytorch.mlls import ExactMarginalLogLikelihood

from eeipu.mll import MarginalLikelihood, fit_hypers
from eeipu.models import DTYPE, _build

# (groups, mean, fixed noise): every model eeipu.models builds.
KINDS = [
    ([[0, 1], [2, 3, 4]], "constant", None),  # the stage-additive objective GP
    (None, "constant", None),  # one ARD RBF (BoTorch's default kernel, bounded lengthscale)
    (None, "linear", None),  # a cost GP of a single or many-parameter stage
    ([[0], [1, 2], [3, 4]], "linear", None),  # a cost GP with one term per parameter
    ([[0, 1], [2, 3, 4]], "worst", 1e-3),  # the pessimistic mean, fixed noise
]


def _model(kind: tuple[Any, ...], seed: int = 0) -> Any:
    groups, mean, noise = kind
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(14, 5, generator=g, dtype=DTYPE)
    Y = (torch.sin(5 * X[:, :1]) + 0.3 * torch.randn(14, 1, generator=g, dtype=DTYPE)).to(DTYPE)
    trend = torch.randn(6, generator=g, dtype=DTYPE) if mean == "linear" else None
    model = _build(X, Y, None, groups, mean, trend, noise)
    with torch.no_grad():  # away from the defaults, inside every constraint's support
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.rand(p.shape, generator=g, dtype=DTYPE))
    return model


def _gpytorch_value(model: Any) -> torch.Tensor:
    model.train()
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model(*model.train_inputs)
        return cast(torch.Tensor, mll(out, model.train_targets))


@pytest.mark.parametrize("kind", KINDS)
def test_value_and_gradient_match_gpytorch(kind: tuple[Any, ...]) -> None:
    model = _model(kind)
    ours = MarginalLikelihood(model)
    loss, grad = ours.loss_and_grad(ours.vector())
    ref = _gpytorch_value(model)
    ref.backward()
    ref_grad = torch.cat([cast(torch.Tensor, p.grad).reshape(-1) for p in ours.params])
    assert -loss == pytest.approx(float(ref.detach()), abs=1e-7)
    assert torch.allclose(torch.from_numpy(-grad), ref_grad, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_fit_reaches_gpytorchs_optimum(kind: tuple[Any, ...]) -> None:
    ours, ref = _model(kind, seed=1), _model(kind, seed=1)
    # both fits run to convergence: capped at 200 iterations, two of the five stopped short
    # at points that differ between machines in the last bits of their arithmetic
    value = fit_hypers(ours, maxiter=2000)
    assert value is not None and math.isfinite(value)
    ref.train()
    mll = ExactMarginalLogLikelihood(ref.likelihood, ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_gpytorch_mll_scipy(mll, options={"maxiter": 2000})
    start = float(_gpytorch_value(_model(kind, seed=1)))
    assert value == pytest.approx(float(_gpytorch_value(ours)), abs=1e-7)  # written back
    assert value > start  # the fit improved the start...
    assert value >= float(_gpytorch_value(ref)) - 1e-3  # ...as far as GPyTorch's own fit


def test_fixed_parameters_stay_fixed() -> None:
    model = _model(KINDS[4])
    noise = float(model.likelihood.noise)
    fit_hypers(model, maxiter=50)
    assert float(model.likelihood.noise) == pytest.approx(noise)
    constant = float(model.mean_module.constant)
    assert constant == pytest.approx(float(model.train_targets.min()))


def test_other_kernels_are_left_to_gpytorch() -> None:
    model = _model(KINDS[1])
    model.covar_module = MaternKernel(ard_num_dims=5).to(DTYPE)
    before = [p.detach().clone() for p in model.parameters()]
    assert fit_hypers(model, maxiter=10) is None
    after = list(model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
