"""The exact marginal likelihood of the GPs built in ``eeipu.models``, in plain torch.

For the surrogates here (a sum of ``T`` scaled RBF terms over column subsets, a constant or
fixed mean, Gaussian noise, log-normal priors) the fitted objective is

    L(theta) = [log N(y | m, sum_t s_t k_t(X) + sigma^2 I) + sum_j log p_j(theta_j)] / n,
    k_t(x, x') = exp(-|x[c_t] - x'[c_t]|^2_{l_t} / 2),

the quantity GPyTorch's ``ExactMarginalLogLikelihood`` computes (with its priors), over the
same raw parameters (a positive hyperparameter is its constraint's softplus of a raw value,
or the raw value itself within L-BFGS-B bounds), maximised by the same L-BFGS-B. At the
sizes a tuning study fits (tens to a few hundred rows), GPyTorch's modules and lazy tensors
cost far more per evaluation than the arithmetic, and on the unlearning pipelines the
refits were most of a proposal's time (``docs/research.md``). Here every term is evaluated
in one batched product and every prior in one vector operation. A kernel, mean, constraint
or prior of another kind is fitted through GPyTorch as before (``fit_hypers`` returns
``None``).
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import torch
from botorch.models import SingleTaskGP
from gpytorch.constraints import GreaterThan, Interval
from gpytorch.kernels import AdditiveKernel, Kernel, RBFKernel, ScaleKernel
from gpytorch.means import ConstantMean, LinearMean
from gpytorch.priors import LogNormalPrior
from scipy.optimize import minimize
from torch import Tensor

__all__ = ["MarginalLikelihood", "fit_hypers", "rbf_terms"]

_LOG_2PI = math.log(2 * math.pi)
_JITTER = (0.0, 1e-8, 1e-6, 1e-4)  # added to the diagonal when a Cholesky fails


def _is_softplus(fn: Any) -> bool:
    if fn is torch.nn.functional.softplus:
        return True
    return isinstance(fn, torch.nn.Softplus) and fn.beta == 1.0 and fn.threshold == 20.0


class _Layout:
    """Every hyperparameter the likelihood reads, as one vector ``theta`` of raw values, with
    how each element maps to its value and its log-normal prior."""

    def __init__(self) -> None:
        self.tensors: list[Tensor] = []  # the model's raw parameters, in order
        self.offsets: list[int] = []
        self.softplus: list[bool] = []  # per element: value = softplus(raw) + lower
        self.lower: list[float] = []
        self.bounds: list[tuple[float | None, float | None]] = []  # for unconstrained raws
        self.prior_index: list[int] = []
        self.prior_loc: list[float] = []
        self.prior_scale: list[float] = []
        self.size = 0

    def add(self, module: Any, name: str, prior_name: str | None) -> int:
        """Append ``module``'s raw parameter ``name``; return the offset of its elements."""
        tensor: Tensor = getattr(module, name)
        size = tensor.numel()
        offset = self.size
        c = getattr(module, f"{name}_constraint", None)
        soft, lower = False, 0.0
        bound: tuple[float | None, float | None] = (None, None)
        if c is not None:
            if not isinstance(c, Interval) or math.isfinite(float(c.upper_bound)):
                raise TypeError(f"constraint {type(c).__name__}")
            lower = float(c.lower_bound)
            if c.enforced:
                if not (isinstance(c, GreaterThan) and _is_softplus(c._transform)):
                    raise TypeError("a constraint transform other than softplus")
                soft = True
            else:
                bound = (lower if math.isfinite(lower) else None, None)
        prior = getattr(module, prior_name, None) if prior_name else None
        if prior is not None:
            if not isinstance(prior, LogNormalPrior):
                raise TypeError(f"prior {type(prior).__name__}")
            self.prior_index += list(range(offset, offset + size))
            self.prior_loc += [float(prior.loc)] * size
            self.prior_scale += [float(prior.scale)] * size
        self.tensors.append(tensor)
        self.offsets.append(offset)
        self.softplus += [soft] * size
        self.lower += [lower if soft else 0.0] * size
        self.bounds += [bound] * size
        self.size += size
        return offset


class MarginalLikelihood:
    """``L(theta)`` (module docstring) of ``model``'s training data as a function of its
    trainable raw hyperparameters, flattened into one vector.

    Raises ``TypeError`` for a model with a kernel, mean, constraint or prior this module
    does not evaluate (fit those through GPyTorch).
    """

    def __init__(self, model: SingleTaskGP) -> None:
        X: Tensor = model.train_inputs[0]
        if X.dim() != 2:
            raise TypeError("batched model")
        self.X, self.y, self.n = X, model.train_targets, int(X.shape[0])
        lay = _Layout()
        noise_covar = model.likelihood.noise_covar
        self.noise_at = lay.add(noise_covar, "raw_noise", "noise_prior")
        mean = model.mean_module
        self.constant_at: int | None = None
        self.fixed_mean = torch.zeros_like(self.y)
        if isinstance(mean, ConstantMean) and mean.raw_constant.requires_grad:
            self.constant_at = lay.add(mean, "raw_constant", "mean_prior")
        elif isinstance(mean, ConstantMean | LinearMean):
            if any(p.requires_grad for p in mean.parameters()):
                raise TypeError("a trainable linear mean")
            with torch.no_grad():
                self.fixed_mean = mean(X).reshape(-1).detach()
        else:
            raise TypeError(type(mean).__name__)
        cols: list[int] = []  # the input column of each scaled column
        ls_index: list[int] = []  # the theta element of each scaled column's lengthscale
        term_of: list[int] = []  # the term each scaled column belongs to
        scale_index: list[int] = []  # per term: theta element of its scale (-1: none)
        for t, (kern, scale_kern) in enumerate(rbf_terms(model.covar_module)):
            dims = (
                list(range(X.shape[-1]))
                if kern.active_dims is None
                else [int(i) for i in kern.active_dims]
            )
            at = lay.add(kern, "raw_lengthscale", "lengthscale_prior")
            ard = kern.raw_lengthscale.numel()
            if ard not in (1, len(dims)):
                raise TypeError("lengthscale shape")
            cols += dims
            ls_index += [at + (j if ard > 1 else 0) for j in range(len(dims))]
            term_of += [t] * len(dims)
            scale_index.append(
                -1
                if scale_kern is None
                else lay.add(scale_kern, "raw_outputscale", "outputscale_prior")
            )
        if len(lay.prior_index) != _prior_elements(model):
            raise TypeError("a prior outside the kernel, the mean and the noise")
        known = {id(t) for t in lay.tensors}
        if any(id(p) not in known for p in model.parameters() if p.requires_grad):
            raise TypeError("a trainable parameter outside the kernel, the mean and the noise")
        self.layout = lay
        n_terms = len(scale_index)
        self.scaled = X[:, cols]  # n x D: each term's columns, side by side
        self.ls_index = torch.tensor(ls_index)
        member = torch.zeros(n_terms, len(cols), dtype=X.dtype)
        member[torch.tensor(term_of), torch.arange(len(cols))] = 1.0
        self.member = member.unsqueeze(1)  # T x 1 x D
        self.scale_index = torch.tensor([max(i, 0) for i in scale_index])
        self.has_scale = torch.tensor([i >= 0 for i in scale_index])
        self.softplus = torch.tensor(lay.softplus)
        self.lower = torch.tensor(lay.lower, dtype=X.dtype)
        self.prior_index = torch.tensor(lay.prior_index, dtype=torch.long)
        self.prior_loc = torch.tensor(lay.prior_loc, dtype=X.dtype)
        self.prior_scale = torch.tensor(lay.prior_scale, dtype=X.dtype)
        trainable: list[int] = []
        self.params: list[Tensor] = []
        for tensor, offset in zip(lay.tensors, lay.offsets, strict=True):
            if tensor.requires_grad:
                self.params.append(tensor)
                trainable += list(range(offset, offset + tensor.numel()))
        self.trainable = torch.tensor(trainable, dtype=torch.long)
        self.eye = torch.eye(self.n, dtype=X.dtype)
        self._raw = self.theta()  # the fixed values between evaluations

    def theta(self) -> Tensor:
        """The model's current raw values, flattened in the layout's order."""
        return torch.cat([t.detach().reshape(-1).to(self.X.dtype) for t in self.layout.tensors])

    def bounds(self) -> list[tuple[float | None, float | None]]:
        """L-BFGS-B bounds of the trainable raw values (a constraint without a transform)."""
        return [self.layout.bounds[i] for i in self.trainable.tolist()]

    def vector(self) -> np.ndarray:
        """The model's current trainable raw values, flattened."""
        return self.theta()[self.trainable].numpy().copy()

    def assign(self, x: np.ndarray) -> None:
        """Write the trainable raw values ``x`` into the model's parameters."""
        theta = self.theta().index_put((self.trainable,), torch.from_numpy(x).to(self.X.dtype))
        with torch.no_grad():
            for tensor, offset in zip(self.layout.tensors, self.layout.offsets, strict=True):
                chunk = theta[offset : offset + tensor.numel()]
                tensor.copy_(chunk.reshape(tensor.shape).to(tensor.dtype))
        self._raw = theta

    def value(self, x: Tensor | None = None) -> Tensor:
        """``L`` at the trainable raw values ``x`` (``None``: the model's own).
        Differentiable in ``x``; ``-inf`` where no Cholesky succeeds."""
        raw = self._raw if x is None else self._raw.index_put((self.trainable,), x)
        v = torch.where(self.softplus, torch.nn.functional.softplus(raw) + self.lower, raw)
        log_v = v[self.prior_index].log()
        z = (log_v - self.prior_loc) / self.prior_scale
        log_prior = (-log_v - self.prior_scale.log() - 0.5 * _LOG_2PI - 0.5 * z * z).sum()
        a = self.scaled / v[self.ls_index]  # n x D
        b = a.unsqueeze(0) * self.member  # T x n x D: each term's columns, the rest zero
        sq = (b * a).sum(-1)  # T x n
        d2 = sq.unsqueeze(-1) - 2 * b @ a.T + sq.unsqueeze(-2)
        scales = torch.where(self.has_scale, v[self.scale_index], torch.ones_like(v[:1]))
        K = (scales.reshape(-1, 1, 1) * torch.exp(-0.5 * d2.clamp_min(0.0))).sum(0)
        noise = v[self.noise_at]
        resid = self.y - self.fixed_mean
        if self.constant_at is not None:
            resid = resid - v[self.constant_at]
        for jitter in _JITTER:
            L, info = torch.linalg.cholesky_ex(K + (noise + jitter) * self.eye)
            if int(info) == 0:
                break
        else:
            return self.X.new_tensor(-math.inf)
        alpha = torch.cholesky_solve(resid.unsqueeze(-1), L).squeeze(-1)
        log_det = 2 * torch.log(torch.diagonal(L)).sum()
        log_lik = -0.5 * (resid @ alpha + log_det + self.n * _LOG_2PI)
        return (log_lik + log_prior) / self.n

    def loss_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """``-L`` and its gradient at the trainable raw values ``x`` (for scipy)."""
        with torch.enable_grad():  # a proposal runs under ``no_grad``
            flat = torch.from_numpy(x).to(self.X.dtype).requires_grad_(True)
            value = self.value(flat)
            if not torch.isfinite(value):
                return math.inf, np.zeros_like(x)
            (grad,) = torch.autograd.grad(-value, flat)
        return float(-value.detach()), grad.numpy().astype(np.float64)


def rbf_terms(
    kern: Kernel, scale: ScaleKernel | None = None
) -> list[tuple[RBFKernel, ScaleKernel | None]]:
    """The kernel as a sum of (optionally scaled) RBF kernels; ``TypeError`` otherwise."""
    if isinstance(kern, AdditiveKernel):
        return [t for k in kern.kernels for t in rbf_terms(k, scale)]
    if isinstance(kern, ScaleKernel) and scale is None:
        return rbf_terms(kern.base_kernel, kern)
    if type(kern) is RBFKernel:
        return [(kern, scale)]
    raise TypeError(type(kern).__name__)


def _prior_elements(model: SingleTaskGP) -> int:
    """How many values GPyTorch's priors of ``model`` score."""
    count = 0
    with torch.no_grad():
        for _, module, _, closure, _ in cast(Any, model).named_priors():
            values = closure(module)
            count += int(values.numel())
    return count


def fit_hypers(model: SingleTaskGP, maxiter: int) -> float | None:
    """Maximise ``model``'s marginal likelihood (with priors) over its trainable raw
    hyperparameters by L-BFGS-B from their current values, in place.

    Returns ``L`` per point at the optimum (``-inf`` when the fit failed), or ``None`` when
    the model is not one this module evaluates (nothing is changed then).
    """
    try:
        mll = MarginalLikelihood(model)
    except TypeError:
        return None
    if not mll.params:
        with torch.no_grad():
            return float(mll.value())
    x0 = mll.vector()
    try:
        result = minimize(
            mll.loss_and_grad,
            x0,
            jac=True,
            method="L-BFGS-B",
            bounds=mll.bounds(),
            options={"maxiter": maxiter},
        )
    except (RuntimeError, ValueError, np.linalg.LinAlgError):
        return -math.inf
    x = result.x if np.all(np.isfinite(result.x)) else x0
    mll.assign(x)
    with torch.no_grad():
        value = float(mll.value())
    return value if math.isfinite(value) else -math.inf
