"""Surrogates with reused fits (``eeipu.models``)."""

from __future__ import annotations

import torch

from eeipu.models import DTYPE, FitState, fit_surrogate


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    X = torch.rand(n, 3, generator=g, dtype=DTYPE)
    return X, torch.sin(4 * X).sum(-1)


def test_hyperparameters_refit_only_when_data_grew() -> None:
    X, y = _data(40)
    gp = fit_surrogate(X[:30], y[:30])
    assert gp.state.n_fit == 30 and gp.state.hypers
    gp2 = fit_surrogate(X[:31], y[:31], gp.state, refit_fraction=0.1)
    assert gp2.state is gp.state  # 1 new point < 10% of 30: reused
    gp3 = fit_surrogate(X[:33], y[:33], gp.state, refit_fraction=0.1)
    assert gp3.state.n_fit == 33


def test_state_round_trip_and_prediction_units() -> None:
    X, y = _data(20)
    gp = fit_surrogate(X, 100 + 10 * y)
    st = FitState.from_dict(gp.state.to_dict())
    again = fit_surrogate(X, 100 + 10 * y, st)
    m1, s1 = gp.predict(X[:5])
    m2, s2 = again.predict(X[:5])
    assert torch.allclose(m1, m2) and torch.allclose(s1, s2)
    assert torch.allclose(m1, 100 + 10 * y[:5], atol=1.0)


def test_stage_without_parameters_is_a_constant() -> None:
    gp = fit_surrogate(torch.zeros(4, 0, dtype=DTYPE), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    m, s = gp.predict(torch.zeros(2, 0, dtype=DTYPE))
    assert torch.allclose(m, torch.full((2,), 2.5, dtype=DTYPE)) and bool((s > 0).all())


def test_fantasies_remove_improvement_at_pending_points() -> None:
    X, y = _data(20)
    gp = fit_surrogate(X, y)
    Xp = torch.tensor([[0.9, 0.1, 0.5]], dtype=DTYPE)
    _, s0 = gp.predict(Xp)
    _, s1 = gp.with_fantasies(Xp).predict(Xp)
    assert float(s1.detach()) < 0.5 * float(s0.detach())


def test_fast_kernel_matches_gpytorch() -> None:
    from eeipu.models import kernel_matrix

    X, y = _data(15)
    gp = fit_surrogate(X, y, groups=[[0], [1, 2]])
    assert gp.model is not None
    k = gp.model.covar_module
    with torch.no_grad():
        ref = k(X[:4], X).to_dense()
        assert torch.allclose(kernel_matrix(k, X[:4], X), ref, atol=1e-10)
        assert torch.allclose(kernel_matrix(k, X[:4], X[:4], diag=True), ref[:, :4].diagonal())
