"""Surrogates with reused fits (``eeipu.models``)."""

from __future__ import annotations

import pytest
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


def test_linear_trend_recovers_a_plane() -> None:
    from eeipu.models import linear_trend

    X, _ = _data(30)
    y = 3.0 + 2.0 * X[:, 0] - X[:, 1]
    beta = linear_trend(X, y.reshape(-1, 1), ridge=1e-9)
    assert torch.allclose(beta, torch.tensor([2.0, -1.0, 0.0, 3.0], dtype=DTYPE), atol=1e-5)


def test_linear_mean_extrapolates_a_rising_log_cost_to_an_unexplored_edge() -> None:
    # Log cost rises with x0 and wiggles in x1; only x0 <= 0.6 has been tried. A constant
    # prior mean reverts towards the average cost at x0 = 1 (an expensive edge looks
    # cheap); the linear trend carries the rise on.
    g = torch.Generator().manual_seed(1)
    X = torch.rand(40, 2, generator=g, dtype=DTYPE) * torch.tensor([0.6, 1.0], dtype=DTYPE)

    def log_cost(x: torch.Tensor) -> torch.Tensor:
        return 8.0 * x[:, 0] + 0.3 * torch.sin(12 * x[:, 1])

    edge = torch.tensor([[1.0, 0.2], [1.0, 0.8]], dtype=DTYPE)
    err = {}
    for mean in ("constant", "linear"):
        gp = fit_surrogate(X, log_cost(X), mean=mean)
        m, s = gp.predict(edge)
        err[mean] = float((m.detach() - log_cost(edge)).abs().max())
        assert bool((s > 0).all())
        assert torch.allclose(gp.predict(X[:3])[0], log_cost(X[:3]), atol=0.1)
    assert err["linear"] < 1.0 < err["constant"]


def test_refit_escapes_a_collapsed_warm_start() -> None:
    # A warm start whose kernel has collapsed (tiny scale, all noise) gets no gradient to
    # recover; the refit also starts from the defaults and keeps the better fit.
    from gpytorch.mlls import ExactMarginalLogLikelihood

    X, y = _data(40)
    groups = [[0], [1, 2]]
    good = fit_surrogate(X, y, groups=groups)
    assert good.state.hypers is not None
    bad = {k: list(v) for k, v in good.state.hypers.items()}
    for k in bad:
        if k.endswith("raw_outputscale"):
            bad[k] = [-12.0]
        if k.endswith("raw_noise"):
            bad[k] = [0.9]
    refit = fit_surrogate(X, y, FitState(n_fit=1, hypers=bad), groups=groups)

    def mll(gp: object) -> float:
        model = gp.model  # type: ignore[attr-defined]
        model.train()
        with torch.no_grad():
            out = ExactMarginalLogLikelihood(model.likelihood, model)(
                model(*model.train_inputs), model.train_targets
            )
        model.eval()
        return float(out)

    assert mll(refit) >= mll(good) - 1e-3
    m, _ = refit.predict(X[:5])
    assert torch.allclose(m, y[:5], atol=0.2)


def test_fixed_noise_is_kept_through_refits_and_interpolates() -> None:
    X, y = _data(33)
    y = y + 0.05 * torch.cos(40 * X[:, 0])  # small, fast detail a learnt noise absorbs
    gp = fit_surrogate(X[:30], y[:30], noise=1e-4)
    assert gp.model is not None
    assert abs(float(gp.model.likelihood.noise) - 1e-4) < 1e-9
    again = fit_surrogate(X, y, gp.state, noise=1e-4)  # refit: 3 new points >= 10% of 30
    assert again.state.n_fit == 33 and again.model is not None
    assert abs(float(again.model.likelihood.noise) - 1e-4) < 1e-9
    m, _ = again.predict(X)
    assert float((m - y).abs().max()) < 0.02  # the detail is interpolated, not smoothed


def test_worst_mean_predicts_the_worst_value_far_from_the_data() -> None:
    X, y = _data(33)
    far = torch.full((1, X.shape[1]), 40.0, dtype=DTYPE)
    learnt = fit_surrogate(X[:30], y[:30])
    gp = fit_surrogate(X[:30], y[:30], mean="worst")
    assert gp.model is not None
    m, _ = gp.predict(far)
    assert abs(float(m[0]) - float(y[:30].min())) < 1e-6
    m_learnt, _ = learnt.predict(far)
    assert float(m_learnt[0]) > float(m[0]) + 0.1  # a learnt mean sits nearer the average
    again = fit_surrogate(X, y, gp.state, mean="worst")  # refit, and the data's worst moved
    m, _ = again.predict(far)
    assert again.state.n_fit == 33
    assert abs(float(m[0]) - float(y.min())) < 1e-6
    with pytest.raises(ValueError, match="mean"):
        fit_surrogate(X, y, mean="best")


def test_prediction_matches_gpytorch_posterior_with_and_without_the_training_side_cache() -> None:
    X, y = _data(25)
    gp = fit_surrogate(X, y, groups=[[0], [1, 2]])
    assert gp.model is not None
    Xq = torch.rand(7, 3, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
    with torch.no_grad():
        post = gp.model.posterior(Xq)
        ref_mean = post.mean.reshape(-1) * gp.y_std + gp.y_mean
        ref_std = post.variance.reshape(-1).sqrt() * gp.y_std
    for _ in range(2):  # the second call reads the cached training side
        mean, std = gp.predict(Xq)
        assert torch.allclose(mean, ref_mean, atol=1e-6)
        assert torch.allclose(std, ref_std, atol=1e-6)
    assert gp._train_side is not None


def test_a_gp_between_refits_reuses_its_model_and_predicts_as_a_fresh_build() -> None:
    X, y = _data(30)
    first = fit_surrogate(X[:25], y[:25], groups=[[0], [1, 2]])
    again = fit_surrogate(X[:26], y[:26], first.state, groups=[[0], [1, 2]])  # no refit
    assert again.state is first.state and again.model is first.model
    fresh = fit_surrogate(
        X[:26], y[:26], FitState(first.state.n_fit, first.state.hypers), groups=[[0], [1, 2]]
    )
    assert fresh.model is not first.model
    for a, b in zip(again.predict(X[26:]), fresh.predict(X[26:]), strict=True):
        assert torch.allclose(a, b, atol=1e-10)
    other = fit_surrogate(X[:27], y[:27], first.state)  # another kernel: built anew
    assert other.model is not first.model


def test_in_place_and_batched_kernels_match_the_plain_one() -> None:
    from eeipu.models import _terms_matrix

    X, y = _data(40)
    gp = fit_surrogate(X, y, groups=[[0], [1, 2]])
    Xq = torch.rand(9, 3, generator=torch.Generator().manual_seed(5), dtype=DTYPE)
    gp.predict(Xq)  # builds the terms and the training side
    assert gp._terms is not None and gp._train_side is not None
    plain = _terms_matrix(gp._terms, Xq.requires_grad_(True), gp.train_X)  # per term
    with torch.no_grad():
        in_place = _terms_matrix(gp._terms, Xq, gp.train_X)
    batched = _terms_matrix(gp._terms, Xq, gp.train_X, x2_side=gp._train_side)
    assert torch.allclose(plain, in_place, atol=1e-12) and torch.allclose(plain, batched)
    batched.sum().backward()
    assert Xq.grad is not None and float(Xq.grad.abs().sum()) > 0
