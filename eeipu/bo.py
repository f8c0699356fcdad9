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

A proposal is one job per module: the warm-up (``eeipu.warmup``), the objective's warp
(``eeipu.warp``), the GPs (``eeipu.surrogates``), the prefix pool (``eeipu.prefixes``), the
candidates and their batched refinement (``eeipu.candidates``) and the batch selection
(``eeipu.batch``). This module runs them in order. What was tried and measured instead of
the defaults is in ``docs/research.md``.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.quasirandom import SobolEngine

from eeipu.acquisition import cooling_eta, normal_base_samples
from eeipu.base import (
    BudgetState,
    CachedPrefix,
    Candidate,
    Observation,
    Optimizer,
    Pending,
    encoded,
)
from eeipu.batch import BatchReuse, ScoredRows, select_batch
from eeipu.candidates import (
    PlannedAcquisition,
    PrefixTable,
    raw_candidates,
    refine,
    round_to_canonical,
)
from eeipu.models import DTYPE
from eeipu.options import BOOptions, check_options
from eeipu.prefixes import PrefixMemo, PrefixPlan, prefix_pool
from eeipu.space import SearchSpace
from eeipu.surrogates import Surrogates
from eeipu.warmup import uniform_warmup
from eeipu.warp import objective_targets

__all__ = ["EEIPU", "EI", "EIPU", "CArBO", "CostAwareBO", "PrefixPlan"]

N_BEST = 5  # best configurations the local raw candidates perturb
N_ROUNDED = 256  # most candidate rows rounded and scored again (at least 8 per pick)


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

    The first ``n_warmup`` trials are uniform draws by the declared space, the same for every
    optimizer with a given seed. Then each proposal fits the GPs, scores ``raw_samples``
    candidates per prefix of the pool, refines the best by L-BFGS-B and picks the batch.

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
        eta: a fixed cooling exponent instead of the budget schedule (``1``: no cooling).
        kernel: ``"stage-additive"`` (default): the objective GP's kernel is a sum of one RBF
            term per stage and one over all dimensions, each with its own scale, so it learns
            how far the objective decomposes over stages; ``"rbf"``: one ARD RBF kernel.
        objective_noise: the objective GP's noise variance (standardised, warped units),
            fixed, in [1e-4, 1], for a deterministic objective; ``None`` (default): learnt
            by marginal likelihood.
        max_points: most observations the objective GP is conditioned on (``None``: all,
            exact but cubic in the history's size); beyond it a subset: the best, the
            latest and a spread of the rest. Cost GPs hold half as many (each distinct
            input once, at most 50 rows per input column), and hyperparameters are
            fitted on a quarter as many (``eeipu.surrogates.Surrogates``).

    Options that were removed (``eeipu.options.REMOVED_OPTIONS``) raise ``ValueError``.
    """

    name = "bo"
    cost_model = "none"  # "none" | "stages" | "total"
    memoize = False
    cooling = False
    inverse = "mean"

    # Optimizer tuning knobs are optional keywords a user sets; keyword-only is the design.
    def __init__(  # noqa: PLR0913
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
        kernel: str = "stage-additive",
        objective_noise: float | None = None,
        max_points: int | None = 1000,
        **unknown: Any,
    ) -> None:
        check_options(self.name, unknown)
        super().__init__(space, direction=direction, seed=seed, n_warmup=n_warmup)
        self.options = BOOptions(
            mc_samples=mc_samples,
            max_prefixes=max_prefixes,
            raw_samples=raw_samples,
            restarts=restarts,
            maxiter=maxiter,
            refit_fraction=refit_fraction,
            torch_threads=torch_threads,
            eta=eta,
            kernel=kernel,
            objective_noise=objective_noise,
            max_points=max_points,
        )
        self.surrogates = Surrogates(
            space,
            self.cost_model,
            refit_fraction,
            stage_additive=kernel == "stage-additive",
            objective_noise=objective_noise,
            max_points=max_points,
        )
        self.last_info: dict[str, Any] = {}
        self._prefix_memo = PrefixMemo()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["fits"] = self.surrogates.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.surrogates.load_state_dict(state.get("fits", {}))

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
        with _torch_threads(self.options.torch_threads), torch.no_grad():
            valid = [o for o in history if o.value is not None and math.isfinite(o.value)]
            n_random = max(0, self.n_warmup - len(history) - len(pending))
            if len(valid) < 2:
                n_random = n
            out = self._warmup(min(n, n_random), history, pending, budget, cached)
            if len(out) < n and len(valid) >= 2 and (n_random == 0 or len(out) == n_random):
                extra = [Pending(c.params, c.reuse_depth) for c in out]
                try:
                    out += self._model_ask(
                        n - len(out), history, [*pending, *extra], cached, budget
                    )
                except (RuntimeError, ValueError) as e:
                    # A numerical failure (e.g. a non-positive-definite covariance) must not
                    # stop a study: propose at random this once and say why.
                    more = self._warmup(n - len(out), history, [*pending, *extra], budget, cached)
                    for c in more:
                        c.info = {"phase": "fallback", "error": f"{type(e).__name__}: {e}"}
                    out += more
        self.n_asked += len(out)
        return out

    def _warmup(
        self,
        n: int,
        history: Sequence[Observation],
        pending: Sequence[Pending],
        budget: BudgetState,
        cached: Sequence[CachedPrefix] = (),
    ) -> list[Candidate]:
        seen = self._seen(history, pending)
        return uniform_warmup(self.space, self.rng, n, history, pending, budget, seen, cached)

    # ------------------------------------------------------------------ the model step
    def _eta(self, history: Sequence[Observation], budget: BudgetState) -> float:
        """The cooling exponent ``eta = (B - B_spent) / (B - B_warm-up)`` (1 without
        cooling, the ``eta`` option when set)."""
        if self.options.eta is not None:
            return float(self.options.eta)
        if not self.cooling:
            return 1.0
        warm = budget.warmup_spent
        if warm <= 0:
            warm = sum(
                o.cost_paid if o.cost_paid is not None else sum(o.stage_costs)
                for o in history[: self.n_warmup]
            )
        return cooling_eta(budget.total, budget.spent, warm)

    def _model_ask(
        self,
        n: int,
        history: Sequence[Observation],
        pending: Sequence[Pending],
        cached: Sequence[CachedPrefix],
        budget: BudgetState,
    ) -> list[Candidate]:
        space, opts = self.space, self.options
        seed = self.rng.getrandbits(31)
        gen = torch.Generator().manual_seed(seed)
        valid = [o for o in history if o.value is not None and math.isfinite(o.value)]
        X_seen = torch.tensor([encoded(space, o) for o in valid], dtype=DTYPE)
        y_seen = torch.tensor([self.sign() * float(o.value or 0.0) for o in valid], dtype=DTYPE)
        objective = self.surrogates.objective(X_seen, objective_targets(y_seen, self.n_warmup))
        costs = self.surrogates.costs(history)
        eta = self._eta(history, budget) if costs else 0.0

        plans = [PrefixPlan(0, {}, 0.0, "", "empty")]
        if self.memoize:
            plans = prefix_pool(
                space,
                history,
                pending,
                cached,
                self.n_warmup,
                self.sign(),
                opts.max_prefixes,
                self._prefix_memo,
            )
        table = PrefixTable.of(space, plans)
        acquisition = PlannedAcquisition(
            table,
            float(objective.train_Y.max()),
            costs,
            eta,
            normal_base_samples(opts.mc_samples, max(len(costs), 1), seed),
            self.inverse,
            total_cost=self.cost_model == "total",
        )

        # Raw candidates of every plan, pinned, as one batch.
        n_raw = opts.raw_samples
        quasi_random = SobolEngine(space.dims, scramble=True, seed=seed).draw(
            n_raw * len(plans), dtype=DTYPE
        )
        best_rows = sorted(range(len(valid)), key=lambda i: -float(y_seen[i]))[:N_BEST]
        best = X_seen[best_rows] if best_rows else X_seen[:0]
        raw = []
        for j in range(len(plans)):
            rows = quasi_random[j * n_raw : (j + 1) * n_raw]
            if best.shape[0]:
                rows = raw_candidates(rows, best, gen)
            raw.append(torch.where(table.pin_mask[j], table.pin_values[j], rows))
        X_raw = torch.cat(raw)
        raw_plan_index = torch.arange(len(plans)).repeat_interleave(n_raw)

        believer = objective
        if pending:
            believer = objective.with_fantasies(
                torch.tensor([space.encode(p.params) for p in pending], dtype=DTYPE)
            )
        X_all, plan_index, scores = refine(
            acquisition, believer, X_raw, raw_plan_index, len(plans), opts.restarts, opts.maxiter
        )
        # Only the most promising rows are rounded and scored again: the pick is among
        # them (rounding moves a row's value little), and a pool of many prefixes would
        # otherwise spend a fifth of the proposal on rows that cannot win.
        keep = scores.argsort(descending=True)[: max(N_ROUNDED, 8 * n)].sort().values
        X_all, plan_index = X_all[keep], plan_index[keep]

        # Round to canonical values (pinned stages copied exactly), then score the rounding.
        configurations = round_to_canonical(space, X_all, plan_index, plans)
        X_rounded = torch.tensor([space.encode(p) for p in configurations], dtype=DTYPE)
        log_inverse, predicted = acquisition.cost_terms(objective, X_rounded, plan_index, history)
        rows_scored = ScoredRows(configurations, X_rounded, plan_index, log_inverse, predicted)
        committed = self.surrogates.pending_cost(history, pending, costs)
        batch_load = statistics.median(
            [p.load_seconds for p in plans if p.source == "cache"] or [0.0]
        )
        picks = select_batch(
            n,
            space,
            acquisition,
            objective,
            believer,
            rows_scored,
            self._seen(history, pending),
            budget.remaining + budget.margin - committed,
            BatchReuse(memoize=self.memoize, batch_load_seconds=batch_load, n_top_rows=n_raw),
            history,
        )
        self.last_info = {"eta": eta, "n_prefixes": len(plans), "n_rows": int(X_all.shape[0])}
        return picks


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
    the cache holds or a pending trial will produce (``eeipu.prefixes``).
    """

    name = "eeipu"
    cost_model = "stages"
    memoize = True
    cooling = True
    inverse = "mc"
