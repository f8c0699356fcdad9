"""Gaussian-process surrogates whose hyperparameter fits are reused between asks.

A tuning loop asks for a proposal after every finished trial; refitting every GP from scratch
each time is what made the published code slow. Here a GP's hyperparameters are refitted only
when the data grew by a fraction since the last fit (warm-started from the previous values);
between refits the GP is rebuilt on the new data with the stored hyperparameters, which costs
one Cholesky factorisation. The hyperparameters are plain lists, so an optimizer's
``state_dict`` carries them and a restored optimizer makes the same proposals.

Targets are standardised here, outside the model, so that the stored hyperparameters never
include data-dependent transform buffers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from botorch.models import SingleTaskGP
from botorch.optim.fit import fit_gpytorch_mll_scipy
from gpytorch.kernels import AdditiveKernel, Kernel, RBFKernel, ScaleKernel
from gpytorch.means import LinearMean
from gpytorch.mlls import ExactMarginalLogLikelihood
from gpytorch.priors import LogNormalPrior
from torch import Tensor

from eeipu.mll import fit_hypers, rbf_terms

__all__ = ["DTYPE", "FitState", "SurrogateGP", "data_subset", "fit_surrogate", "spread_rows"]

DTYPE = torch.float64


@dataclass
class FitState:
    """What is kept of a GP between asks: its hyperparameters and the data size they fit."""

    n_fit: int = 0
    hypers: dict[str, list[float]] | None = None
    # The last model built with these hyperparameters and its kernel's signature, reused
    # with new training data between refits (building a GPyTorch model costs more than
    # conditioning it); never serialised.
    built: tuple[tuple[Any, ...], SingleTaskGP] | None = field(
        default=None, repr=False, compare=False
    )

    def to_dict(self) -> dict[str, Any]:
        return {"n_fit": self.n_fit, "hypers": self.hypers}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> FitState:
        if not d:
            return cls()
        hypers = d.get("hypers")
        return cls(
            n_fit=int(d.get("n_fit", 0)),
            hypers={k: [float(x) for x in v] for k, v in hypers.items()} if hypers else None,
        )


@dataclass
class SurrogateGP:
    """A fitted GP on standardised targets, with the standardisation to undo it.

    ``model`` predicts ``(y - y_mean) / y_std``; ``predict`` returns mean and standard
    deviation in the original units.
    """

    model: SingleTaskGP | None  # None: no inputs (a stage without hyperparameters)
    y_mean: float
    y_std: float
    train_X: Tensor
    train_Y: Tensor  # standardised, ``n x 1``
    state: FitState = field(default_factory=FitState)
    groups: Sequence[Sequence[int]] | None = None
    mean: str = "constant"
    _cache: tuple[Tensor, Tensor] | None = field(default=None, repr=False)
    _terms: list[_Term] | None = field(default=None, repr=False)
    _train_side: _TrainSide | None = field(default=None, repr=False)

    def _k(self, x1: Tensor, x2: Tensor, diag: bool = False) -> Tensor:
        assert self.model is not None
        if self._terms is None:
            with torch.no_grad():
                self._terms = _rbf_terms(self.model.covar_module, torch.ones((), dtype=DTYPE))
        if self._terms is None:
            return kernel_matrix(self.model.covar_module, x1, x2, diag)
        if x2 is self.train_X and not diag:
            if self._train_side is None:
                self._train_side = _train_side(self._terms, x2)
            return _terms_matrix(self._terms, x1, x2, diag, self._train_side)
        return _terms_matrix(self._terms, x1, x2, diag)

    def _prior_mean(self, X: Tensor) -> Tensor:
        """The GP's prior mean at ``X`` (``m x d``), ``m x 1`` (standardised units)."""
        assert self.model is not None
        return cast(Tensor, self.model.mean_module(X).reshape(-1, 1))

    def _factor(self) -> tuple[Tensor, Tensor]:
        """Cholesky factor of the training covariance and the weights (cached)."""
        if self._cache is None:
            assert self.model is not None
            m = self.model
            with torch.no_grad():
                K = self._k(self.train_X, self.train_X)
                noise = m.likelihood.noise.reshape(-1)[0]
                K = K + (noise + 1e-8) * torch.eye(K.shape[-1], dtype=DTYPE)
                L = torch.linalg.cholesky(K)
                alpha = torch.cholesky_solve(self.train_Y - self._prior_mean(self.train_X), L)
            self._cache = (L, alpha)
        return self._cache

    def predict(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and standard deviation (original units) of the latent function.

        Exact GP prediction from a Cholesky factor computed once per data set (much cheaper
        than rebuilding GPyTorch's prediction strategy at every call); differentiable in X.

        Args:
            X: ``batch_shape x q x d`` (or ``n x d``) inputs in the unit cube.

        Returns:
            Two tensors of shape ``batch_shape x q`` (or ``n``).
        """
        if self.model is None:
            shape = X.shape[:-1]
            return (
                torch.full(shape, self.y_mean, dtype=DTYPE),
                torch.full(shape, self.y_std, dtype=DTYPE),
            )
        L, alpha = self._factor()
        flat = X.reshape(-1, X.shape[-1])
        Ks = self._k(flat, self.train_X)  # m x n
        mean = (self._prior_mean(flat) + Ks @ alpha).squeeze(-1)
        v = torch.linalg.solve_triangular(L, Ks.T, upper=False)  # n x m
        prior = self._k(flat, flat, diag=True)
        var = (prior - (v * v).sum(0)).clamp_min(1e-12)
        mean = mean.reshape(X.shape[:-1])
        std = var.sqrt().reshape(X.shape[:-1])
        return mean * self.y_std + self.y_mean, std * self.y_std

    def with_fantasies(self, X: Tensor) -> SurrogateGP:
        """Kriging believer: the same GP also "observing" its own mean at ``X`` (``m x d``).

        Used for pending trials and the earlier picks of a batch, so that the expected
        improvement near them vanishes. Hyperparameters are kept; nothing is refitted.
        """
        if self.model is None or X.shape[0] == 0:
            return self
        with torch.no_grad():
            mean, _ = self.predict(X.to(DTYPE))
            f = ((mean - self.y_mean) / self.y_std).reshape(-1, 1)
        tx = torch.cat([self.train_X, X.to(DTYPE)])
        ty = torch.cat([self.train_Y, f])
        model = _build(tx, ty, self.state.hypers, self.groups, self.mean)
        return SurrogateGP(
            model, self.y_mean, self.y_std, tx, ty, self.state, self.groups, self.mean
        )


_Term = tuple[Tensor | None, Tensor, Tensor]  # (active dims, lengthscales, scale)


def _rbf_terms(kern: Kernel, scale: Tensor) -> list[_Term] | None:
    """The kernel as a sum of scaled RBF terms (detached), or ``None`` for other kernels."""
    try:
        parts = rbf_terms(kern)
    except TypeError:
        return None
    return [
        (
            rbf.active_dims,
            rbf.lengthscale.detach().reshape(-1),
            scale if sk is None else scale * sk.outputscale.detach(),
        )
        for rbf, sk in parts
    ]


BATCHED_TERMS_MAX = 1 << 22  # most T x m x n kernel entries computed in one batched op


@dataclass
class _TrainSide:
    """The half of every cross-covariance ``k(x, X_train)`` that stays fixed between
    predictions, in two layouts.

    Attributes:
        per_term: each term's scaled training inputs transposed (``g_t x n``) and their
            squared norms (``1 x n``).
        weights: ``T x d`` each term's inverse lengthscales on its columns, 0 elsewhere.
        scaled_T: ``T x d x n`` the training inputs scaled by each term's weights.
        norms: ``T x 1 x n`` their squared norms.
        scales: ``T x 1 x 1`` the terms' output scales.
    """

    per_term: list[tuple[Tensor, Tensor]]
    weights: Tensor
    scaled_T: Tensor
    norms: Tensor
    scales: Tensor


def _train_side(terms: list[_Term], x2: Tensor) -> _TrainSide:
    per_term = []
    weights = torch.zeros(len(terms), x2.shape[-1], dtype=x2.dtype)
    for t, (dims, ls, _) in enumerate(terms):
        b = (x2 if dims is None else x2[..., dims]) / ls
        per_term.append((b.T.contiguous(), (b * b).sum(-1).unsqueeze(0)))
        if dims is None:
            weights[t] = 1 / ls
        else:
            weights[t, dims] = 1 / ls
    scaled = x2.unsqueeze(0) * weights.unsqueeze(1)  # T x n x d
    return _TrainSide(
        per_term,
        weights,
        scaled.transpose(1, 2).contiguous(),
        (scaled * scaled).sum(-1).unsqueeze(1),
        torch.stack([torch.as_tensor(sc, dtype=x2.dtype) for _, _, sc in terms]).reshape(-1, 1, 1),
    )


def _terms_matrix(
    terms: list[_Term],
    x1: Tensor,
    x2: Tensor,
    diag: bool = False,
    x2_side: _TrainSide | None = None,
) -> Tensor:
    """``sum_t s_t exp(-|x1 - x2|^2_t / 2)`` over the terms (``m x n``, ``m`` with ``diag``);
    ``x2_side``: ``_train_side(terms, x2)``, precomputed.

    With ``x2_side`` and few rows (an L-BFGS step's candidates) every term is computed by
    one batched product (``T x m x n``): a proposal's many small predictions are then a few
    large tensor operations instead of about ten per term, which dominated their cost.
    """
    if diag:  # every RBF term is its scale on the diagonal
        return sum(sc for _, _, sc in terms) * torch.ones(x1.shape[0], dtype=x1.dtype)
    if x2_side is not None and len(terms) * x1.shape[0] * x2.shape[0] <= BATCHED_TERMS_MAX:
        a = x1.unsqueeze(0) * x2_side.weights.unsqueeze(1)  # T x m x d
        d2 = (a * a).sum(-1, keepdim=True) - 2 * torch.bmm(a, x2_side.scaled_T) + x2_side.norms
        return (x2_side.scales * torch.exp(-0.5 * d2.clamp_min(0.0))).sum(0)
    no_grad = not torch.is_grad_enabled() or not (x1.requires_grad or x2.requires_grad)
    out: Tensor | None = None
    for t, (dims, ls, scale) in enumerate(terms):
        a = (x1 if dims is None else x1[..., dims]) / ls
        if x2_side is None:
            b = (x2 if dims is None else x2[..., dims]) / ls
            bT, bb = b.T, (b * b).sum(-1).unsqueeze(0)
        else:
            bT, bb = x2_side.per_term[t]
        if no_grad:  # in place, one pass per step: half the time on large batches
            e = torch.addmm(bb.mul(-0.5), a, bT)
            e.sub_((a * a).sum(-1, keepdim=True).mul_(0.5)).clamp_max_(0.0).exp_()
            out = e.mul_(scale) if out is None else out.add_(e.mul_(scale))
            continue
        d2 = (a * a).sum(-1, keepdim=True) - 2 * a @ bT + bb
        val = scale * torch.exp(-0.5 * d2.clamp_min(0.0))
        out = val if out is None else out + val
    assert out is not None
    return out


def _dense(t: Any) -> Tensor:
    return cast(Tensor, t.to_dense() if hasattr(t, "to_dense") else t)


def kernel_matrix(kern: Kernel, x1: Tensor, x2: Tensor, diag: bool = False) -> Tensor:
    """Dense ``k(x1, x2)`` (``m x n``, or ``m`` with ``diag``) for the kernels built here.

    RBF, scale and additive kernels are evaluated directly in torch (GPyTorch's lazy
    tensors cost more than the arithmetic at these sizes); any other kernel goes through
    GPyTorch.
    """
    if isinstance(kern, AdditiveKernel):
        parts = [kernel_matrix(k, x1, x2, diag) for k in kern.kernels]
        return torch.stack(parts).sum(0)
    if isinstance(kern, ScaleKernel):
        return cast(Tensor, kern.outputscale * kernel_matrix(kern.base_kernel, x1, x2, diag))
    if isinstance(kern, RBFKernel):
        if kern.active_dims is not None:
            x1, x2 = x1[..., kern.active_dims], x2[..., kern.active_dims]
        ls = kern.lengthscale.reshape(-1)
        if diag:
            return torch.ones(x1.shape[0], dtype=x1.dtype)
        a, b = x1 / ls, x2 / ls
        d2 = (a * a).sum(-1, keepdim=True) - 2 * a @ b.T + (b * b).sum(-1).unsqueeze(0)
        return torch.exp(-0.5 * d2.clamp_min(0.0))
    return _dense(kern.forward(x1, x2, diag=diag))


def _stage_additive_kernel(d: int, groups: Sequence[Sequence[int]]) -> Kernel:
    """sum_k s_k RBF(x_k) + s_0 RBF(x): one term per stage plus a full interaction term."""
    parts: list[Kernel] = []
    for g in groups:
        idx = tuple(int(i) for i in g)
        rbf = RBFKernel(
            ard_num_dims=len(idx),
            active_dims=idx,
            lengthscale_prior=LogNormalPrior(math.sqrt(2) + 0.5 * math.log(len(idx)), math.sqrt(3)),
        )
        parts.append(ScaleKernel(rbf))
    full = RBFKernel(
        ard_num_dims=d,
        lengthscale_prior=LogNormalPrior(math.sqrt(2) + 0.5 * math.log(d), math.sqrt(3)),
    )
    parts.append(ScaleKernel(full))
    return AdditiveKernel(*parts)


def linear_trend(X: Tensor, Y: Tensor, ridge: float = 1e-2) -> Tensor:
    r"""Ridge least-squares trend ``[w; b]`` (``d + 1``) of ``Y`` (``n x 1``) on ``X`` (``n x d``).

    The prior mean of the log-cost GPs. With a constant prior mean a GP reverts to the
    average cost a few lengthscales away from its data, so an unexplored edge looks cheap:
    on synthetic-3stage a 2,211 s corner was predicted at 28-55 s, with so much uncertainty
    that the expected inverse cost made it look cheaper than a 40 s run, and EEIPU paid for
    it again and again. Cost is mostly monotone in a hyperparameter (epochs, width, data
    size), which a linear trend in log cost extrapolates (there: 1,100-2,400 s, the GP
    modelling what the trend misses). The trend is fitted once per refit, by least squares
    (``ridge`` on the slopes keeps it tame on few points), and kept fixed while the kernel
    hyperparameters are fitted, so the marginal likelihood cannot trade it for shorter
    lengthscales.
    """
    n, d = X.shape
    F = torch.cat([X, torch.ones(n, 1, dtype=X.dtype)], -1)
    reg = ridge * torch.eye(d + 1, dtype=X.dtype)
    reg[-1, -1] = 1e-9  # the intercept is not shrunk
    return cast(Tensor, torch.linalg.solve(F.T @ F + reg, F.T @ Y.reshape(-1, 1)).reshape(-1))


def _build(
    X: Tensor,
    Y: Tensor,
    hypers: dict[str, list[float]] | None,
    groups: Sequence[Sequence[int]] | None = None,
    mean: str = "constant",
    trend: Tensor | None = None,
    noise: float | None = None,
) -> SingleTaskGP:
    covar: Kernel | None = _stage_additive_kernel(X.shape[-1], groups) if groups else None
    mean_module = None
    if mean == "linear":
        mean_module = LinearMean(X.shape[-1]).to(DTYPE)
        if covar is None:  # the trend explains part of the variance: let the kernel's shrink
            d = X.shape[-1]
            covar = ScaleKernel(
                RBFKernel(
                    ard_num_dims=d,
                    lengthscale_prior=LogNormalPrior(
                        math.sqrt(2) + 0.5 * math.log(d), math.sqrt(3)
                    ),
                )
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SingleTaskGP(
            X, Y, outcome_transform=None, covar_module=covar, mean_module=mean_module
        )
    if hypers:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in hypers and len(hypers[name]) == p.numel():
                    p.copy_(torch.tensor(hypers[name], dtype=p.dtype).reshape(p.shape))
    if noise is not None:  # a deterministic target: the noise is set, not learnt
        with torch.no_grad():
            model.likelihood.noise = torch.tensor(noise, dtype=DTYPE)
        model.likelihood.noise_covar.raw_noise.requires_grad_(False)
    if mean == "worst":
        with torch.no_grad():
            model.mean_module.constant.fill_(float(Y.min()))
        model.mean_module.raw_constant.requires_grad_(False)
    if isinstance(model.mean_module, LinearMean):
        with torch.no_grad():
            if trend is not None:
                model.mean_module.weights.copy_(trend[:-1].reshape(-1, 1))
                model.mean_module.bias.copy_(trend[-1:])
            elif not hypers:
                model.mean_module.weights.zero_()
                model.mean_module.bias.zero_()
        model.mean_module.weights.requires_grad_(False)
        model.mean_module.bias.requires_grad_(False)
    model.eval()
    return model


def _fit_mll(model: SingleTaskGP, maxiter: int) -> float:
    """Fit ``model``'s hyperparameters by L-BFGS-B; return its log marginal likelihood
    (with priors) per point, ``-inf`` when the fit failed. The kernels built here are
    fitted by ``eeipu.mll`` (the same objective without GPyTorch's overhead)."""
    fast = fit_hypers(model, maxiter)
    if fast is not None:
        return fast
    model.train()
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    try:
        with warnings.catch_warnings(), torch.enable_grad():
            warnings.simplefilter("ignore")
            fit_gpytorch_mll_scipy(mll, options={"maxiter": maxiter})
        with torch.no_grad():
            value = float(mll(model(*model.train_inputs), model.train_targets))
    except Exception:
        return -math.inf
    return value if math.isfinite(value) else -math.inf


def fit_surrogate(
    X: Tensor,
    y: Tensor,
    state: FitState | None = None,
    refit_fraction: float = 0.1,
    maxiter: int = 75,
    groups: Sequence[Sequence[int]] | None = None,
    mean: str = "constant",
    noise: float | None = None,
    fit_rows: Tensor | None = None,
    n_seen: int | None = None,
) -> SurrogateGP:
    """Fit (or refresh) a GP on ``X`` (``n x d``) and targets ``y`` (``n``).

    Hyperparameters are refitted when there are none yet or when ``n`` grew by at least
    ``max(1, refit_fraction * n_fit)`` since the last fit; the fit starts from the previous
    values. Otherwise the stored hyperparameters are reused as they are.

    ``groups`` (column indices of each stage) selects a stage-additive kernel: one RBF term
    per stage plus one over all columns, each with its own scale, so the GP can learn how
    far the objective decomposes over stages (what makes a cached prefix worth extending).

    ``mean``: ``"constant"`` (learnt), ``"linear"`` (a least-squares trend, see
    ``linear_trend``) or ``"worst"``: the constant is fixed at the lowest target, so far
    from the data the GP predicts the worst seen value (De Ath et al. 2020: a pessimistic
    mean curbs EI's pull towards unexplored corners).
    ``noise``: the observation noise variance (standardised units), fixed; ``None``: learnt.
    A refit starts from the previous hyperparameters AND from the defaults and keeps the
    fit with the higher marginal likelihood.
    ``fit_rows``: the rows the hyperparameters are fitted on (``None``: all; the marginal
    likelihood's cost is cubic in their number); the GP is conditioned on every row.
    ``n_seen``: the data size the refit rule counts (``None``: ``n``), for a GP on a subset.
    """
    if mean not in ("constant", "linear", "worst"):
        raise ValueError(f"mean must be 'constant', 'linear' or 'worst', got {mean!r}")
    state = state or FitState()
    y = y.to(DTYPE).reshape(-1)
    n = int(y.shape[0])
    y_mean = float(y.mean()) if n else 0.0
    y_std = float(y.std()) if n > 1 else 1.0
    if not math.isfinite(y_std) or y_std < 1e-9:
        y_std = 1.0
    Y = ((y - y_mean) / y_std).reshape(-1, 1)
    X = X.to(DTYPE)
    if X.shape[-1] == 0 or n == 0:
        return SurrogateGP(None, y_mean, y_std, X, Y, state, groups, mean)
    n_data = n if n_seen is None else int(n_seen)
    need = state.hypers is None or n_data >= state.n_fit + max(
        1, math.ceil(refit_fraction * state.n_fit)
    )
    trend = linear_trend(X, Y) if need and mean == "linear" else None
    Xf, Yf = (X[fit_rows], Y[fit_rows]) if need and fit_rows is not None else (X, Y)
    signature = (X.shape[-1], tuple(tuple(g) for g in groups or ()), mean, noise)
    model: SingleTaskGP | None = None
    if not need and mean != "worst" and state.built is not None and state.built[0] == signature:
        model = state.built[1]
        cast(Any, model).set_train_data(Xf, Yf.reshape(-1), strict=False)
    if model is None:
        model = _build(Xf, Yf, state.hypers, groups, mean, trend, noise)
    if need:
        # Two starts: the previous fit (cheap to refine) and the default initialisation.
        # A warm start alone is path-dependent: once a kernel term's scale has collapsed
        # its gradient vanishes and it never comes back, so the GP can stay stuck with a
        # stage switched off (seen on synthetic-3stage, where it then picked a 2,049 s
        # candidate and a fresh fit a 5 s one).
        starts = (
            [model]
            if state.hypers is None
            else [model, _build(Xf, Yf, None, groups, mean, trend, noise)]
        )
        fitted = [(_fit_mll(m, maxiter), m) for m in starts]
        best_mll, model = max(fitted, key=lambda t: t[0])
        if not math.isfinite(best_mll):  # every fit failed: keep the previous hyperparameters
            model = _build(Xf, Yf, state.hypers, groups, mean, trend, noise)
        state = FitState(
            n_fit=n_data,
            hypers={k: p.detach().reshape(-1).tolist() for k, p in model.named_parameters()},
        )
        model.eval()
    if Xf is not X:  # fitted on a subset: conditioned on every row
        model = _build(X, Y, state.hypers, groups, mean, None, noise)
    state.built = (signature, model)
    return SurrogateGP(model, y_mean, y_std, X, Y, state, groups, mean)


def spread_rows(n: int, k: int, keep: Tensor | None = None) -> Tensor:
    """``min(n, k)`` of ``n`` row indices, sorted: the first ``k`` of ``keep`` (distinct
    indices, in priority order), then rows spread evenly over the trial order by a fixed
    golden-ratio rank (row ``i``'s rank is ``frac(i * 0.618...)``), so that a row chosen at
    ``n`` rows mostly stays chosen as rows are appended.
    """
    if n <= k:
        return torch.arange(n)
    rank = torch.frac(torch.arange(n, dtype=DTYPE) * 0.6180339887498949)
    if keep is not None and keep.numel():
        rank[keep[:k]] = -1.0
    return torch.sort(torch.argsort(rank, stable=True)[:k]).values


def data_subset(targets: Tensor, limit: int, top: bool) -> Tensor:
    """The rows (sorted indices) a GP is conditioned on once there are more than ``limit``.

    The latest tenth of ``limit`` rows (the search's current region), with ``top`` also the
    best twentieth of ``limit`` by target (the incumbent and its runners-up); rows spread
    over the trial order for the rest (the landscape at large). Every row when
    ``n <= limit``. (The best half instead of a twentieth measured worse: ``docs/research.md``.)
    """
    n = int(targets.shape[0])
    if n <= limit:
        return torch.arange(n)
    keep = torch.arange(n - 1, n - 1 - max(1, limit // 10), -1)
    if top:
        best = torch.argsort(-targets.reshape(-1), stable=True)[: max(1, limit // 20)]
        keep = torch.cat([best, keep[~torch.isin(keep, best)]])
    return spread_rows(n, limit, keep)
