"""Bayesian optimizers for staged pipelines: EEIPU and the EI, EIPU and CArBO baselines.

All four share one engine (``CostAwareBO``) and differ only in their cost model:

=======  ======================  ==========  ========  ===============================
name     cost model              memoized    cooling   acquisition
=======  ======================  ==========  ========  ===============================
ei       none                    no          -         log EI
eipu     one GP per stage        no          no        log EI - log E[C]
carbo    one GP on total cost    no          yes       log EI - eta log E[C]
eeipu    one GP per stage        yes         yes       log EI + eta log E[1/C(x, d)]
=======  ======================  ==========  ========  ===============================

Every optimizer's warm-up is the same uniform draws for a seed. ``warmup="cheap"`` (the
published EEIPU's: random draws, preferring cheap and diverse ones) is an option, not the
default: it made EEIPU's warm-up cheaper but its final objective worse (see ``CostAwareBO``).

EEIPU plans, for every candidate, which cached prefix to reuse. Its prefix pool holds only
prefixes the cache really holds (with their measured load cost) or that a pending trial will
produce, plus the empty prefix (a full run). Every prefix's candidates are scored in ONE
tensor batch and refined by one batched L-BFGS-B run (pinned dimensions have equal bounds),
so a proposal costs about one acquisition optimisation whatever the pool size.

Batches (``n > 1``) are picked greedily with a kriging believer: pending trials and earlier
picks are added to the objective GP at their predicted mean, so EI vanishes at them; exact
duplicates of seen or pending configurations are never proposed. An earlier pick of the
batch will be pending as soon as the batch is submitted, so (for EEIPU) its prefixes join
the pool (``via="batch"``) and a later pick may plan to reuse them: the two workers share
the stage's compute lock, so the prefix is computed once and the other loads it. A
candidate is dropped when its predicted cost exceeds what remains of the budget (after the
pending trials' predicted costs) plus ``budget.margin``.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from botorch.generation.gen import gen_candidates_scipy
from torch import Tensor
from torch.quasirandom import SobolEngine

from eeipu.acquisition import (
    CostCooledLogEI,
    cooling_eta,
    normal_base_samples,
    predicted_cost,
)
from eeipu.base import (
    BudgetState,
    CachedPrefix,
    Candidate,
    Observation,
    Optimizer,
    Params,
    Pending,
    mean_cost_after,
    prefix_id,
)
from eeipu.models import DTYPE, FitState, SurrogateGP, fit_surrogate
from eeipu.space import SearchSpace

__all__ = ["EEIPU", "EI", "EIPU", "CArBO", "CostAwareBO", "PrefixPlan", "copula"]

COST_FLOOR = 1e-6


@dataclass
class PrefixPlan:
    """A prefix a candidate may reuse: its depth, exact params and cost of loading it."""

    depth: int
    params: Params
    load_seconds: float
    pid: str
    source: str  # "empty", "cache" or "pending"


def copula(y: Tensor) -> Tensor:
    """Normal scores of ``y`` (``n``): ranks (ties averaged) through the normal quantile."""
    n = y.shape[0]
    order = y.argsort()
    ranks = torch.empty(n, dtype=DTYPE)
    ranks[order] = torch.arange(n, dtype=DTYPE)
    for v in torch.unique(y):  # average the ranks of ties
        sel = y == v
        if int(sel.sum()) > 1:
            ranks[sel] = ranks[sel].mean()
    return torch.special.ndtri((ranks + 0.5) / n)


def _gap_and_scale(y: Tensor, q: float, floor: float = 0.0) -> tuple[Tensor, Tensor]:
    """Gaps to the best (``n``) and the warps' scale: their ``q``-quantile, at least
    ``floor`` (and positive)."""
    gap = y.max() - y
    return gap, torch.quantile(gap, q).clamp_min(max(float(floor), 1e-12))


def log_gap(y: Tensor, q: float = 0.5) -> Tensor:
    """``-log(1 + (max(y) - y) / s)``, ``s`` the ``q``-quantile of the gaps (the median by
    default): tames heavy tails like the copula but keeps magnitudes (how much better one
    configuration is than another). Gaps below ``s`` stay nearly linear, so a small ``q``
    resolves the differences among the best configurations."""
    gap, s = _gap_and_scale(y, q)
    return -torch.log1p(gap / s)


def clipped_gap(y: Tensor, q: float = 0.5, floor: float = 0.0) -> Tensor:
    """``-min(max(y) - y, s)``: raw (so additive over stages) among the best configurations,
    one plateau for every worse one.

    ``s`` is the ``q``-quantile of the gaps, but at least ``floor``. Without a floor the
    quantile collapses once most trials refine the incumbent, and the plateau then hides
    every way out of its basin; the engine's floor is the gap of the best warm-up trial.
    """
    gap, s = _gap_and_scale(y, q, floor)
    return -gap.clamp_max(s)


def linlog_gap(y: Tensor, q: float = 0.5) -> Tensor:
    """``-gap`` for gaps up to ``s`` (the ``q``-quantile of the gaps), ``-s (1 + log(gap /
    s))`` beyond: raw, hence additive over stages, among the best configurations, and
    logarithmic in the heavy tail, which still shows the way out of a poor basin."""
    gap, s = _gap_and_scale(y, q)
    return -torch.where(gap <= s, gap, s * (1 + torch.log(gap.clamp_min(s) / s)))


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class CostAwareBO(Optimizer):
    """Shared engine of the GP-based optimizers (see the module docstring).

    Args:
        space: the search space.
        direction: ``"maximize"`` or ``"minimize"``.
        seed: seeds the optimizer's generator (every torch seed is drawn from it).
        n_warmup: random trials before the models are used.
        mc_samples: Monte Carlo samples for the expected inverse cost.
        max_prefixes: most cached prefixes in the pool (the most promising by best observed
            value of a configuration that shares them); pending ones come on top.
        raw_samples: quasi-random candidates scored per prefix.
        restarts: best raw candidates per prefix refined by L-BFGS-B (plus ``restarts * 2``
            best overall).
        maxiter: L-BFGS-B iterations of the batched refinement.
        refit_fraction: refit GP hyperparameters when the data grew by this fraction.
        torch_threads: torch threads during ``ask`` (``None``: leave torch's setting).
        eta: a fixed cooling exponent instead of the budget schedule (ablations, tests).
        kernel: ``"stage-additive"`` (default): the objective GP's kernel is a sum of one RBF
            term per stage and one over all dimensions, each with its own scale, so it learns
            how far the objective decomposes over stages; ``"rbf"``: one ARD RBF kernel.
        memo_warmup: a memoizing optimizer's second half of the warm-up reuses cached
            prefixes of the first half. Off by default: on synthetic-3stage it
            bought ~3% more trials but a worse final objective (8 seeds; less diversity in the
            early stages), and it makes "gain after warm-up" incomparable with the baselines,
            whose warm-up is then no longer the same.
        warp: how the objective is modelled. ``"clip"`` (default): ``-min(gap to the best,
            s)``, ``s`` the ``warp_quantile`` of the gaps (the median) but at least the gap of
            the best warm-up trial (``clip_floor``): raw differences, so additive over stages,
            among the better configurations, one plateau below. On synthetic-3stage (10
            seeds) it took EEIPU's mean final best from 2.09 to 3.11 (the optimum is 3.46)
            and its trials from 94 to 297: under ``"log"`` the better half of the
            trials shared a band narrower than the learnt noise, the Hartmann-3 kernel term
            was switched off, and EI went to the 2,000 s corners of the last stage. Without
            the floor the median gap collapsed once most trials refined the incumbent and
            two seeds of ten stayed in a poor basin (2.51 over the ten). ``"log"``:
            ``-log(1 + gap / s)`` (``s`` the same quantile), robust to heavy tails but not
            additive; ``"linlog"``: raw up to ``s``, logarithmic beyond; ``"copula"``:
            normal scores of the ranks; ``"none"``: raw values.
        warp_quantile: the quantile of the gaps to the best that sets ``s`` (in (0, 1)).
        clip_floor: with ``"clip"``, ``s`` is at least the gap of the best warm-up trial.
        warmup: how the warm-up trials are drawn. ``"random"`` (default): uniformly by the
            declared space, the same draws as every baseline's for that seed. ``"cheap"``
            (the published method's "random draws, preferring cheap and diverse ones"): the
            first ``warmup_probe`` trials are those same uniform draws; each later one is, of
            ``warmup_candidates`` uniform draws, the one farthest from every trial so far
            among the cheapest quarter by the cost GPs' predicted cost. Needs a cost model
            (``"random"`` otherwise). Not the default: on synthetic-3stage (10 seeds) it
            bought EEIPU 9% more trials (109 against 99.6) but a worse mean final best (1.55
            against 2.15); a uniform warm-up spends up to 45% of the budget on a few 2,000 s
            Branin corners, yet what it learns there is what the cost-aware phase needs.
        objective_noise: the objective GP's noise variance (standardised, warped units),
            fixed; ``None`` (default): learnt by marginal likelihood.
        warmup_probe: uniform warm-up trials before ``"cheap"`` uses the cost GPs.
        warmup_candidates: uniform draws scored per ``"cheap"`` warm-up trial.
        cost_mean: prior mean of the log-cost GPs: ``"linear"`` (default), a least-squares
            trend, so an unexplored expensive edge is not predicted at the average cost;
            ``"constant"``.
        cost_kernel: ``"additive"`` (default): one RBF term per parameter plus one over all
            of them, so a cost driven by one parameter is not forgotten where another, which
            only wiggles the cost, takes unseen values. Held-out log-cost RMSE on 30
            synthetic-3stage histories, first / last stage: 0.28 / 0.24 with both
            defaults, 0.39 / 0.48 with a constant mean and one RBF kernel.
            ``"rbf"``: one ARD RBF kernel.
        block_moves: half of each prefix's raw candidates are one of the best configurations
            with ONE free stage redrawn (or, an eighth, slightly perturbed); see
            ``_raw_rows``. Off by default: on synthetic-3stage (10 seeds) EEIPU's mean final
            best went from 2.11 to 2.36 (Hartmann-3 regret 0.91 -> 0.56) with it, and to
            2.07 with a variant that kept fewer quasi-random points; within the seeds'
            spread either way. EIPU with it: 2.76 and 167 trials, against 2.54 and 122.
        objective_mean: the objective GP's prior mean, ``"constant"`` (learnt, default) or
            ``"worst"`` (fixed at the worst value seen, De Ath et al. 2020). Not the
            default: on synthetic-3stage (10 seeds) it did not stop EEIPU's costly trials
            (72% of the post-warm-up spend went to trials over 500 s, against 66%), it made
            fewer trials (87 against 105) and reached 2.18 against 2.11.
        warmup_prefixes: whether prefixes that only warm-up trials produced join the prefix
            pool. Off by default (the published method leaves them out too): a random head
            is often expensive, and on synthetic-10stage (seed 0) EEIPU extended warm-up
            heads for 250 trials, then spent two thirds of the budget on ~2,300 s full runs around
            them. On synthetic-3stage (10 seeds) leaving them out took EEIPU's median final
            best from 3.24 to 3.42 and its mean from 3.11 to 3.16.
    """

    name = "bo"
    cost_model = "none"  # "none" | "stages" | "total"
    memoize = False
    cooling = False
    inverse = "mean"
    warmup_default = "random"

    def __init__(
        self,
        space: SearchSpace,
        direction: str = "maximize",
        seed: int = 0,
        n_warmup: int = 10,
        *,
        mc_samples: int = 128,
        max_prefixes: int = 16,
        raw_samples: int = 64,
        restarts: int = 2,
        maxiter: int = 25,
        refit_fraction: float = 0.1,
        torch_threads: int | None = 1,
        eta: float | None = None,
        warp: str = "clip",
        kernel: str = "stage-additive",
        memo_warmup: bool = False,
        cost_mean: str = "linear",
        cost_kernel: str = "additive",
        warmup: str | None = None,
        objective_noise: float | None = None,
        warmup_probe: int = 3,
        warmup_candidates: int = 128,
        block_moves: bool = False,
        objective_mean: str = "constant",
        warp_quantile: float = 0.5,
        clip_floor: bool = True,
        warmup_prefixes: bool = False,
    ) -> None:
        super().__init__(space, direction=direction, seed=seed, n_warmup=n_warmup)
        self.mc_samples = mc_samples
        self.max_prefixes = max_prefixes
        self.raw_samples = raw_samples
        self.restarts = restarts
        self.maxiter = maxiter
        self.refit_fraction = refit_fraction
        self.torch_threads = torch_threads
        self.fixed_eta = eta
        if warp not in ("clip", "copula", "linlog", "log", "none"):
            raise ValueError(
                f"warp must be 'clip', 'copula', 'linlog', 'log' or 'none', got {warp!r}"
            )
        self.warp = warp
        if kernel not in ("rbf", "stage-additive"):
            raise ValueError(f"kernel must be 'rbf' or 'stage-additive', got {kernel!r}")
        self.kernel = kernel
        self.memo_warmup = memo_warmup
        if cost_mean not in ("constant", "linear"):
            raise ValueError(f"cost_mean must be 'constant' or 'linear', got {cost_mean!r}")
        self.cost_mean = cost_mean
        if cost_kernel not in ("additive", "rbf"):
            raise ValueError(f"cost_kernel must be 'additive' or 'rbf', got {cost_kernel!r}")
        self.cost_kernel = cost_kernel
        warmup = self.warmup_default if warmup is None else warmup
        if warmup not in ("cheap", "random"):
            raise ValueError(f"warmup must be 'cheap' or 'random', got {warmup!r}")
        self.warmup = warmup
        if warmup_probe < 2:
            raise ValueError(f"warmup_probe must be >= 2, got {warmup_probe}")
        if warmup_candidates < 1:
            raise ValueError(f"warmup_candidates must be >= 1, got {warmup_candidates}")
        if objective_noise is not None and not 1e-4 <= objective_noise <= 1.0:
            raise ValueError(f"objective_noise must be in [1e-4, 1], got {objective_noise!r}")
        self.objective_noise = objective_noise
        self.warmup_probe = warmup_probe
        self.warmup_candidates = warmup_candidates
        if not isinstance(block_moves, bool):
            raise ValueError(f"block_moves must be true or false, got {block_moves!r}")
        self.block_moves = block_moves
        if objective_mean not in ("constant", "worst"):
            raise ValueError(
                f"objective_mean must be 'constant' or 'worst', got {objective_mean!r}"
            )
        self.objective_mean = objective_mean
        if not isinstance(warp_quantile, (int, float)) or not 0.0 < warp_quantile < 1.0:
            raise ValueError(f"warp_quantile must be in (0, 1), got {warp_quantile!r}")
        self.warp_quantile = float(warp_quantile)
        if not isinstance(clip_floor, bool):
            raise ValueError(f"clip_floor must be true or false, got {clip_floor!r}")
        self.clip_floor = clip_floor
        if not isinstance(warmup_prefixes, bool):
            raise ValueError(f"warmup_prefixes must be true or false, got {warmup_prefixes!r}")
        self.warmup_prefixes = warmup_prefixes
        self._fits: dict[str, FitState] = {}
        self.last_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["fits"] = {k: v.to_dict() for k, v in sorted(self._fits.items())}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._fits = {k: FitState.from_dict(v) for k, v in dict(state.get("fits", {})).items()}

    # ------------------------------------------------------------------ ask
    def ask(
        self,
        n: int,
        history: Sequence[Observation],
        pending: Sequence[Pending] = (),
        cached: Sequence[CachedPrefix] = (),
        budget: BudgetState | None = None,
    ) -> list[Candidate]:
        if n < 0:
            raise ValueError("n must be >= 0")
        budget = budget or BudgetState(total=math.inf)
        if n == 0:
            return []
        with _torch_threads(self.torch_threads), torch.no_grad():
            valid = [o for o in history if o.value is not None and math.isfinite(o.value)]
            n_random = max(0, self.n_warmup - len(history) - len(pending))
            if len(valid) < 2:
                n_random = n
            out = self._random(min(n, n_random), history, pending, budget, cached)
            if len(out) < n and len(valid) >= 2 and (n_random == 0 or len(out) == n_random):
                extra = [Pending(c.params, c.reuse_depth) for c in out]
                try:
                    out += self._model_ask(
                        n - len(out), history, [*pending, *extra], cached, budget
                    )
                except (RuntimeError, ValueError) as e:
                    # A numerical failure (e.g. a non-positive-definite covariance) must not
                    # stop a study: propose at random this once and say why.
                    more = self._random(n - len(out), history, [*pending, *extra], budget)
                    for c in more:
                        c.info = {"phase": "fallback", "error": f"{type(e).__name__}: {e}"}
                    out += more
        self.n_asked += len(out)
        return out

    def _random(
        self,
        n: int,
        history: Sequence[Observation],
        pending: Sequence[Pending],
        budget: BudgetState,
        cached: Sequence[CachedPrefix] = (),
    ) -> list[Candidate]:
        """Warm-up proposals: uniform by the declared space, or cheap and diverse.

        With ``memo_warmup``, a memoizing optimizer makes the second half of its warm-up
        cheap: each of those trials reuses a random cached prefix and draws the later stages
        afresh. With ``warmup="cheap"``, see ``_cheap_warmup`` (uniform draws when its cost
        GPs fail). Otherwise the warm-up is the same draws as every baseline's for that seed.
        """
        seen = self._seen(history, pending)
        k = len(self.space.stage_names)
        done = [o for o in history if len(o.stage_costs) == k]
        if (
            self.warmup == "cheap"
            and self.cost_model != "none"
            and not (self.memoize and self.memo_warmup)
            and len(done) >= self.warmup_probe
        ):
            try:
                return self._cheap_warmup(n, history, pending, budget, set(seen))
            except (RuntimeError, ValueError):
                pass
        n_full = math.ceil(self.n_warmup / 2)
        plans = [c for c in cached if 1 <= c.depth < k] if self.memoize and self.memo_warmup else []
        out: list[Candidate] = []
        committed = sum(mean_cost_after(history, p.reuse_depth) or 0.0 for p in pending)
        for i in range(n):
            depth, load = 0, 0.0
            for _attempt in range(100):
                params = self.space.sample(self.rng)
                depth, load = 0, 0.0
                if plans and len(history) + len(pending) + i >= n_full:
                    plan = plans[self.rng.randrange(len(plans))]
                    for s in self.space.stage_names[: plan.depth]:
                        params[s] = dict(plan.params[s])
                    depth, load = plan.depth, plan.load_seconds
                pid = prefix_id(self.space, params, k)
                if pid not in seen:
                    break
            est = mean_cost_after(history, depth)
            if est is not None:
                est += load
                if committed + est > budget.remaining + budget.margin:
                    break
            seen.add(pid)
            committed += est or 0.0
            out.append(Candidate(params, depth, est, None, {"phase": "warmup"}))
        return out

    def _cheap_warmup(
        self,
        n: int,
        history: Sequence[Observation],
        pending: Sequence[Pending],
        budget: BudgetState,
        seen: set[str],
    ) -> list[Candidate]:
        """Cheap and diverse warm-up trials: of ``warmup_candidates`` uniform draws, those in
        the cheapest quarter by predicted cost, the farthest (in the unit cube) from every
        trial so far, pending and already picked ones included."""
        space, k = self.space, len(self.space.stage_names)
        with torch.no_grad():
            costs = self._cost_models(history)
        if not costs:
            return []
        points = [space.encode(o.params) for o in history] + [
            space.encode(p.params) for p in pending
        ]
        X_seen = torch.tensor(points, dtype=DTYPE).reshape(-1, space.dims)
        n_comp = len(costs)
        committed = self._pending_cost(history, pending, costs)
        out: list[Candidate] = []
        for _ in range(n):
            draws = [space.sample(self.rng) for _ in range(self.warmup_candidates)]
            keep = [i for i, p in enumerate(draws) if prefix_id(space, p, k) not in seen]
            if not keep:
                break
            Xd = torch.tensor([space.encode(draws[i]) for i in keep], dtype=DTYPE)
            mus, sds = zip(*(gp.predict(Xd[:, sl]) for gp, sl in costs), strict=True)
            mu, sd = torch.stack(mus, -1), torch.stack(sds, -1)
            include = torch.ones(len(keep), n_comp, dtype=torch.bool)
            pred = predicted_cost(mu, sd, include, torch.zeros(len(keep), dtype=DTYPE))
            cheap = pred <= torch.quantile(pred, 0.25)
            dist = torch.cdist(Xd, X_seen).min(-1).values if X_seen.shape[0] else pred * 0
            score = torch.where(cheap, dist, torch.full_like(dist, -math.inf))
            j = int(score.argmax())
            est = float(pred[j])
            if committed + est > budget.remaining + budget.margin:
                break
            params = draws[keep[j]]
            seen.add(prefix_id(space, params, k))
            committed += est
            X_seen = torch.cat([X_seen, Xd[j : j + 1]])
            info = {"phase": "warmup", "via": "cheap"}
            out.append(Candidate(params, 0, est, None, info))
        return out

    # ------------------------------------------------------------------ models
    def _fit(
        self,
        name: str,
        X: Tensor,
        y: Tensor,
        additive: bool = False,
        mean: str = "constant",
        groups: list[list[int]] | None = None,
        noise: float | None = None,
    ) -> SurrogateGP:
        if additive and len(self.space.stage_names) > 1:
            groups = [
                list(range(sl.start, sl.stop))
                for sl in self.space.stage_slices.values()
                if sl.stop > sl.start
            ]
        gp = fit_surrogate(
            X,
            y,
            self._fits.get(name),
            refit_fraction=self.refit_fraction,
            groups=groups,
            mean=mean,
            noise=noise,
        )
        self._fits[name] = gp.state
        return gp

    def _cost_models(self, history: Sequence[Observation]) -> list[tuple[SurrogateGP, slice]]:
        k_total = len(self.space.stage_names)
        rows = [o for o in history if len(o.stage_costs) == k_total]
        if self.cost_model == "none" or len(rows) < 2:
            return []
        X = torch.tensor([self.space.encode(o.params) for o in rows], dtype=DTYPE)
        C = torch.tensor([o.stage_costs for o in rows], dtype=DTYPE).clamp_min(COST_FLOOR)
        if self.cost_model == "total":
            groups = self._param_groups(None)
            total = self._fit("cost_total", X, C.sum(-1).log(), mean=self.cost_mean, groups=groups)
            return [(total, slice(0, self.space.dims))]
        out = []
        for i, stage in enumerate(self.space.stage_names):
            sl = self.space.stage_slices[stage]
            gp = self._fit(
                f"cost_{i}",
                X[:, sl],
                C[:, i].log(),
                mean=self.cost_mean,
                groups=self._param_groups(stage),
            )
            out.append((gp, sl))
        return out

    def _param_groups(self, stage: str | None) -> list[list[int]] | None:
        """Columns of each parameter of ``stage`` (of all stages: ``None``), relative to the
        stage's slice, for the cost GPs' additive kernel; ``None`` for an RBF kernel."""
        if self.cost_kernel != "additive":
            return None
        start = 0 if stage is None else self.space.stage_slices[stage].start
        groups = [
            list(range(sp.offset - start, sp.offset - start + sp.param.dims))
            for sp in self.space.specs
            if (stage is None or sp.stage == stage) and sp.param.dims > 0
        ]
        return groups if len(groups) > 1 else None

    # ------------------------------------------------------------------ prefixes
    def _prefix_pool(
        self,
        history: Sequence[Observation],
        pending: Sequence[Pending],
        cached: Sequence[CachedPrefix],
    ) -> list[PrefixPlan]:
        pool = [PrefixPlan(0, {}, 0.0, "", "empty")]
        if not self.memoize:
            return pool
        stages = self.space.stage_names
        k_total = len(stages)
        score: dict[str, float] = {}
        warm_only: dict[str, bool] = {}  # prefix id -> made by warm-up trials alone
        for i, o in enumerate(history):
            pids = [prefix_id(self.space, o.params, d) for d in range(1, k_total)]
            for pid in pids:
                warm_only[pid] = warm_only.get(pid, True) and i < self.n_warmup
            if o.value is None or not math.isfinite(o.value):
                continue
            v = self.sign() * o.value
            for pid in pids:
                score[pid] = max(score.get(pid, -math.inf), v)
        # Prefixes only the random warm-up made are left out (as in the published method):
        # a random head is often expensive, and extending it for hundreds of cheap trials
        # ties the search to a head that costs a fortune to refine later.
        skip = set() if self.warmup_prefixes else {p for p, w in warm_only.items() if w}
        cache_plans: dict[str, PrefixPlan] = {}
        for c in cached:
            if not 1 <= c.depth < k_total:
                continue
            try:
                params = {s: dict(c.params[s]) for s in stages[: c.depth]}
                pid = prefix_id(self.space, params, c.depth)
            except KeyError:
                continue
            if pid in cache_plans or pid in skip:
                continue
            plan = PrefixPlan(c.depth, params, max(0.0, float(c.load_seconds)), pid, "cache")
            try:  # a prefix of another version of the space (other params) is not reusable
                self._pins(plan)
            except (KeyError, ValueError, TypeError):
                continue
            cache_plans[pid] = plan
        ranked = sorted(
            cache_plans.values(), key=lambda p: (-score.get(p.pid, -math.inf), -p.depth, p.pid)
        )
        pool += ranked[: self.max_prefixes]
        loads = [p.load_seconds for p in cache_plans.values()]
        default_load = statistics.median(loads) if loads else 0.0
        have = {p.pid for p in pool}
        for pend in pending:
            for d in range(1, k_total):
                params = {s: dict(pend.params[s]) for s in stages[:d]}
                pid = prefix_id(self.space, params, d)
                if pid in have:
                    continue
                if pid in cache_plans:  # cached but not among the most promising: now it is
                    pool.append(cache_plans[pid])
                else:
                    pool.append(PrefixPlan(d, params, default_load, pid, "pending"))
                have.add(pid)
        return pool

    def _pins(self, plan: PrefixPlan) -> tuple[Tensor, Tensor]:
        """Bool mask and values (``d`` each) of the dimensions a prefix fixes."""
        mask = torch.zeros(self.space.dims, dtype=torch.bool)
        vals = torch.zeros(self.space.dims, dtype=DTYPE)
        pinned = set(self.space.stage_names[: plan.depth])
        for sp in self.space.specs:
            if sp.stage in pinned:
                sl = slice(sp.offset, sp.offset + sp.param.dims)
                mask[sl] = True
                vals[sl] = torch.tensor(sp.param.encode(plan.params[sp.stage][sp.name]))
        return mask, vals

    # ------------------------------------------------------------------ raw candidates
    def _raw_rows(
        self, sobol: Tensor, local: Tensor, free: Sequence[slice], gen: torch.Generator
    ) -> Tensor:
        """Raw candidates of one prefix (``n x d``, before its pinned dimensions are set).

        Args:
            sobol: ``n x d`` quasi-random points in the unit cube.
            local: ``t x d`` best configurations so far (encoded), ``t >= 1``.
            free: the column slices of the stages the prefix leaves free.
            gen: the generator of the perturbations.

        Without ``block_moves``: the Sobol points, a quarter replaced by the best
        configurations perturbed in every dimension (sd 0.05). With ``block_moves``, a
        quarter are Sobol points, an eighth perturbed best configurations, an eighth best
        configurations with ONE free stage perturbed (sd 0.03) and half best configurations
        with ONE free stage redrawn (its Sobol coordinates). The objective of a pipeline
        mostly decomposes over stages, so the best configuration with one stage changed is
        where improvement lies, and a perturbation of all seven dimensions at once rarely
        finds it (EI there is dominated by the far, expensive corners of the last stage).
        """
        n, d = sobol.shape
        t = local.shape[0]

        def anchors(k: int, offset: int) -> Tensor:
            return local[(torch.arange(k) + offset) % t].clone()

        def jitter(k: int, sd: float) -> Tensor:
            return torch.randn(k, d, generator=gen, dtype=DTYPE) * sd

        if not (self.block_moves and free):
            n_loc = n // 4
            return torch.cat(
                [sobol[: n - n_loc], (anchors(n_loc, 0) + jitter(n_loc, 0.05)).clamp(0, 1)]
            )
        n_sob, n_loc = n // 4, n // 8
        n_blk_loc, n_blk = n // 8, n - n // 4 - n // 8 - n // 8
        loc = (anchors(n_loc, 0) + jitter(n_loc, 0.05)).clamp(0, 1)
        blk_loc = anchors(n_blk_loc, 1)
        moved = (blk_loc + jitter(n_blk_loc, 0.03)).clamp(0, 1)
        for i in range(n_blk_loc):
            sl = free[i % len(free)]
            blk_loc[i, sl] = moved[i, sl]
        blk = anchors(n_blk, 0)
        fresh = sobol[n_sob:]
        for i in range(n_blk):
            sl = free[(i // t) % len(free)]
            blk[i, sl] = fresh[i, sl]
        return torch.cat([sobol[:n_sob], loc, blk_loc, blk])

    # ------------------------------------------------------------------ the model step
    def _eta(self, history: Sequence[Observation], budget: BudgetState) -> float:
        if self.fixed_eta is not None:
            return float(self.fixed_eta)
        if not self.cooling:
            return 1.0
        warm = budget.warmup_spent
        if warm <= 0:
            warm = sum(
                o.cost_paid if o.cost_paid is not None else sum(o.stage_costs)
                for o in history[: self.n_warmup]
            )
        return cooling_eta(budget.total, budget.spent, warm)

    def _warped(self, y: Tensor) -> Tensor:
        """The objective GP's targets (``n``) from the signed values ``y`` (``n``)."""
        if self.warp == "copula":
            return copula(y)
        if self.warp == "log":
            return log_gap(y, self.warp_quantile)
        if self.warp == "clip":
            warm = y[: max(1, self.n_warmup)]
            floor = float(y.max() - warm.max()) if self.clip_floor else 0.0
            return clipped_gap(y, self.warp_quantile, floor)
        if self.warp == "linlog":
            return linlog_gap(y, self.warp_quantile)
        return y

    def _model_ask(
        self,
        n: int,
        history: Sequence[Observation],
        pending: Sequence[Pending],
        cached: Sequence[CachedPrefix],
        budget: BudgetState,
    ) -> list[Candidate]:
        space, k_total, d = self.space, len(self.space.stage_names), self.space.dims
        seed = self.rng.getrandbits(31)
        gen = torch.Generator().manual_seed(seed)
        valid = [o for o in history if o.value is not None and math.isfinite(o.value)]
        X = torch.tensor([space.encode(o.params) for o in valid], dtype=DTYPE)
        y = torch.tensor([self.sign() * float(o.value or 0.0) for o in valid], dtype=DTYPE)
        obj = self._fit(
            "objective",
            X,
            self._warped(y),
            additive=self.kernel == "stage-additive",
            noise=self.objective_noise,
            mean=self.objective_mean,
        )
        costs = self._cost_models(history)
        eta = self._eta(history, budget) if costs else 0.0
        best_f = float(obj.train_Y.max())
        n_comp = len(costs)

        # Pool of prefixes and the raw candidates of each, pinned, as one batch.
        pool = self._prefix_pool(history, pending, cached)
        n_raw = self.raw_samples
        sobol = SobolEngine(d, scramble=True, seed=seed).draw(n_raw * len(pool), dtype=DTYPE)
        top = sorted(range(len(valid)), key=lambda i: -float(y[i]))[:5]
        local = X[top] if top else X[:0]
        slices = [space.stage_slices[s] for s in space.stage_names]
        rows, plan_idx, masks, vals = [], [], [], []
        for j, plan in enumerate(pool):
            mask, val = self._pins(plan)
            base = sobol[j * n_raw : (j + 1) * n_raw]
            if local.shape[0]:
                base = self._raw_rows(base, local, slices[plan.depth :], gen)
            rows.append(torch.where(mask, val, base))
            plan_idx += [j] * base.shape[0]
            masks.append(mask)
            vals.append(val)
        Xr = torch.cat(rows)
        pidx = torch.tensor(plan_idx)
        M, V = torch.stack(masks), torch.stack(vals)
        depths = torch.tensor([p.depth for p in pool])
        loads = torch.tensor([p.load_seconds for p in pool], dtype=DTYPE)

        def plan_of(idx: Tensor) -> tuple[Tensor, Tensor]:
            if self.cost_model == "total":
                return torch.ones(len(idx), 1, dtype=torch.bool), loads[idx]
            comp = torch.arange(max(n_comp, 1)).unsqueeze(0)
            return comp >= depths[idx].unsqueeze(1), loads[idx]

        base_samples = normal_base_samples(self.mc_samples, max(n_comp, 1), seed)

        def acqf(model: SurrogateGP, idx: Tensor) -> CostCooledLogEI:
            inc, ld = plan_of(idx)
            return CostCooledLogEI(
                model,
                best_f,
                costs,
                eta,
                inc,
                ld,
                base_samples,
                inverse=self.inverse,
                pin_mask=M[idx],
                pin_values=V[idx],
            )

        fant = obj
        if pending:
            fant = obj.with_fantasies(
                torch.tensor([space.encode(p.params) for p in pending], dtype=DTYPE)
            )
        raw_vals = acqf(fant, pidx)(Xr.unsqueeze(1))

        # Starting points: best raw rows of each prefix and best overall; batched L-BFGS-B.
        starts: list[int] = []
        for j in range(len(pool)):
            sel = (pidx == j).nonzero().squeeze(-1)
            order = sel[raw_vals[sel].argsort(descending=True)]
            starts += order[: self.restarts].tolist()
        starts += raw_vals.argsort(descending=True)[: 2 * self.restarts].tolist()
        sidx = torch.tensor(sorted(set(starts)))
        with torch.enable_grad():
            Xopt, _ = gen_candidates_scipy(
                Xr[sidx].unsqueeze(1),
                acqf(fant, pidx[sidx]),
                lower_bounds=0.0,
                upper_bounds=1.0,
                options={"maxiter": self.maxiter},
                use_parallel_mode=False,
            )
        Xall = torch.cat([Xopt.squeeze(1).detach(), Xr])
        iall = torch.cat([pidx[sidx], pidx])

        # Round to canonical values (pinned stages copied exactly), then score the rounding.
        params_all: list[Params] = []
        for i in range(Xall.shape[0]):
            p = space.decode(Xall[i].tolist())
            plan = pool[int(iall[i])]
            for s in space.stage_names[: plan.depth]:
                p[s] = dict(plan.params[s])
            params_all.append(p)
        Xc = torch.tensor([space.encode(p) for p in params_all], dtype=DTYPE)

        def cost_terms(Xrows: Tensor, irows: Tensor) -> tuple[Tensor | None, Tensor]:
            """log E[1/C] (``None`` when cost-blind) and predicted cost of candidate rows."""
            a0 = acqf(obj, irows)
            log_inv = a0.log_inverse_cost(Xrows.unsqueeze(1)) if costs and eta > 0 else None
            if costs:
                mu, sigma = a0.cost_moments(Xrows.unsqueeze(1))
                inc, ld = plan_of(irows)
                return log_inv, predicted_cost(mu, sigma, inc, ld)
            return log_inv, torch.tensor(
                [
                    (mean_cost_after(history, pool[int(j)].depth) or 0.0)
                    + pool[int(j)].load_seconds
                    for j in irows
                ],
                dtype=DTYPE,
            )

        log_inv, pred = cost_terms(Xc, iall)
        committed = self._pending_cost(history, pending, costs)
        room = budget.remaining + budget.margin - committed
        have = {p.pid for p in pool}
        batch_load = statistics.median(
            [p.load_seconds for p in pool if p.source == "cache"] or [0.0]
        )

        seen = self._seen(history, pending)
        picks: list[Candidate] = []
        picked_X: list[Tensor] = []
        model = fant
        while len(picks) < n:
            score = acqf(model, iall).log_ei(Xc.unsqueeze(1))
            if log_inv is not None:
                score = score + eta * log_inv
            chosen = None
            for i in score.argsort(descending=True).tolist():
                pid = prefix_id(space, params_all[i], k_total)
                if pid in seen or float(pred[i]) > room:
                    continue
                chosen = i
                break
            if chosen is None:
                break
            plan = pool[int(iall[chosen])]
            seen.add(prefix_id(space, params_all[chosen], k_total))
            room -= float(pred[chosen])
            info: dict[str, Any] = {
                "phase": "model",
                "eta": eta,
                "prefix": plan.pid,
                "via": plan.source,
            }
            if costs:  # why it was picked: the cost components' log-normal moments
                mu, sd = acqf(obj, iall[chosen : chosen + 1]).cost_moments(
                    Xc[chosen].reshape(1, 1, -1)
                )
                info["cost_log_mu"] = [round(float(v), 4) for v in mu[0]]
                info["cost_log_sd"] = [round(float(v), 4) for v in sd[0]]
            picks.append(
                Candidate(
                    params=params_all[chosen],
                    reuse_depth=plan.depth,
                    predicted_cost=float(pred[chosen]),
                    acquisition=float(score[chosen]),
                    info=info,
                )
            )
            picked_X.append(Xc[chosen])
            if len(picks) == n:
                break
            model = fant.with_fantasies(torch.stack(picked_X))
            if not self.memoize:
                continue
            # Same-batch reuse: the pick will be pending as soon as the batch is submitted,
            # so the prefixes it produces join the pool; their candidates are the best rows
            # so far with the pick's stages pinned in.
            top = score.argsort(descending=True)[: self.raw_samples].tolist()
            new_params: list[Params] = []
            new_idx: list[int] = []
            for depth in range(1, k_total):
                prefix = {s: dict(params_all[chosen][s]) for s in space.stage_names[:depth]}
                pid = prefix_id(space, prefix, depth)
                if pid in have:
                    continue
                have.add(pid)
                new_plan = PrefixPlan(depth, prefix, batch_load, pid, "batch")
                mask, val = self._pins(new_plan)
                pool.append(new_plan)
                M, V = torch.cat([M, mask[None]]), torch.cat([V, val[None]])
                depths = torch.cat([depths, torch.tensor([depth])])
                loads = torch.cat([loads, torch.tensor([batch_load], dtype=DTYPE)])
                for i in top:
                    q = {st: dict(v) for st, v in params_all[i].items()}
                    q.update({st: dict(v) for st, v in prefix.items()})
                    new_params.append(q)
                    new_idx.append(len(pool) - 1)
            if new_params:
                Xn = torch.tensor([space.encode(q) for q in new_params], dtype=DTYPE)
                In = torch.tensor(new_idx)
                li, pr = cost_terms(Xn, In)
                params_all += new_params
                Xc, iall, pred = torch.cat([Xc, Xn]), torch.cat([iall, In]), torch.cat([pred, pr])
                if log_inv is not None and li is not None:
                    log_inv = torch.cat([log_inv, li])
        self.last_info = {"eta": eta, "n_prefixes": len(pool), "n_rows": int(Xall.shape[0])}
        return picks

    def _pending_cost(
        self,
        history: Sequence[Observation],
        pending: Sequence[Pending],
        costs: list[tuple[SurrogateGP, slice]],
    ) -> float:
        """Predicted cost of the trials already pending (they will spend budget too)."""
        if not pending:
            return 0.0
        if not costs:
            return sum(mean_cost_after(history, p.reuse_depth) or 0.0 for p in pending)
        Xp = torch.tensor([self.space.encode(p.params) for p in pending], dtype=DTYPE)
        depth = torch.tensor([p.reuse_depth for p in pending])
        mus, sigmas = zip(*(gp.predict(Xp[:, sl]) for gp, sl in costs), strict=True)
        mu, sigma = torch.stack(mus, -1), torch.stack(sigmas, -1)
        if self.cost_model == "total":
            inc = torch.ones(len(pending), 1, dtype=torch.bool)
        else:
            inc = torch.arange(len(costs)).unsqueeze(0) >= depth.unsqueeze(1)
        return float(predicted_cost(mu, sigma, inc, torch.zeros(len(pending), dtype=DTYPE)).sum())


class EI(CostAwareBO):
    """Expected improvement (log EI), cost-blind: the standard GP-BO baseline."""

    name = "ei"


class EIPU(CostAwareBO):
    """EI per unit cost, ``log EI(x) - log E[C(x)]`` with one GP per stage, no memoization,
    no cooling (Snoek et al. 2012's EIPS)."""

    name = "eipu"
    cost_model = "stages"


class CArBO(CostAwareBO):
    """Cost-apportioned BO (Lee et al. 2020): ``log EI(x) - eta * log E[C(x)]``, one GP on
    the total log cost, cost cooling ``eta = remaining / (total - warm-up)``."""

    name = "carbo"
    cost_model = "total"
    cooling = True


class EEIPU(CostAwareBO):
    r"""Memoization-aware expected-expected-improvement per unit cost.

    ``EEIPU(x, d) = EI(x) * E[1 / (L_d + sum_{k>d} C_k(x_k))]^eta`` with one GP per stage on
    log cost, ``L_d`` the measured load cost of the cached prefix of depth ``d``, the
    expectation by Monte Carlo with independent per-stage samples, and
    ``eta = remaining / (total - warm-up)`` budget. Candidates come from a pool of prefixes
    the cache holds or a pending trial will produce.
    """

    name = "eeipu"
    cost_model = "stages"
    memoize = True
    cooling = True
    inverse = "mc"
