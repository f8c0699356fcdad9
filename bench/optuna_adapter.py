"""Optuna's samplers behind the optimizer contract: outside references for the benchmark.

``OptunaTPE`` (``tpe``) is Optuna's TPE sampler, ``OptunaGP`` (``optuna-gp``) its Gaussian
process sampler (``optuna.samplers.GPSampler``). Neither knows of the cache: a trial reuses a
cached prefix only when its parameters happen to match one.

It lives beside the product, not in ``eeipu/``: optuna is an optional dependency that only the
benchmark needs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from eeipu.base import (
    BudgetState,
    CachedPrefix,
    Candidate,
    Observation,
    Optimizer,
    Pending,
    estimated_cost,
)
from eeipu.space import Categorical, Float, Int, SearchSpace

__all__ = ["OptunaGP", "OptunaSampler", "OptunaTPE", "OptunaTPEMemo"]


class OptunaSampler(Optimizer):
    """An Optuna sampler behind the ask/tell contract (sequential; outside reference).

    Stateless like every optimizer of the service (it deep-copies a template for every
    proposal): each ``ask`` builds an Optuna study from the history (finished trials as
    complete or failed trials) and asks the sampler, seeded with ``seed`` and the number of
    proposals made so far, so runs repeat exactly.
    """

    name = "optuna"

    def __init__(
        self, space: SearchSpace, direction: str = "maximize", seed: int = 0, n_warmup: int = 10
    ) -> None:
        super().__init__(space, direction=direction, seed=seed, n_warmup=n_warmup)
        self.n_warmup = n_warmup

    def make_sampler(self, optuna: Any, seed: int, n_warmup: int) -> Any:
        raise NotImplementedError

    def distributions(self) -> dict[str, Any]:
        """Optuna's distribution of every parameter, keyed ``stage.name``."""
        import optuna

        out: dict[str, Any] = {}
        for sp in self.space.specs:
            p = sp.param
            key = f"{sp.stage}.{sp.name}"
            if isinstance(p, Float):
                out[key] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.log)
            elif isinstance(p, Int):
                out[key] = optuna.distributions.IntDistribution(p.low, p.high, log=p.log)
            elif isinstance(p, Categorical):
                out[key] = optuna.distributions.CategoricalDistribution(list(p.choices))
        return out

    def study_of(self, history: Sequence[Observation]) -> tuple[Any, dict[str, Any]]:
        """An Optuna study holding ``history``, and the distributions."""
        import warnings

        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        dists = self.distributions()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-feature warnings
            sampler = self.make_sampler(optuna, self.seed * 100_003 + self.n_asked, self.n_warmup)
        study = optuna.create_study(
            direction="maximize" if self.direction == "maximize" else "minimize",
            sampler=sampler,
        )
        state = optuna.trial.TrialState
        for obs in history:
            flat = {k: obs.params[k.split(".", 1)[0]][k.split(".", 1)[1]] for k in dists}
            if obs.value is None or not math.isfinite(float(obs.value)):
                trial = optuna.trial.create_trial(
                    params=flat, distributions=dists, state=state.FAIL
                )
            else:
                trial = optuna.trial.create_trial(
                    params=flat, distributions=dists, value=float(obs.value)
                )
            study.add_trial(trial)
        return study, dists

    def params_of(self, flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        params: dict[str, dict[str, Any]] = {s: {} for s in self.space.stage_names}
        for sp in self.space.specs:
            params[sp.stage][sp.name] = sp.param.canonical(flat[f"{sp.stage}.{sp.name}"])
        return params

    def ask(
        self,
        n: int,
        history: Sequence[Observation],
        pending: Sequence[Pending] = (),
        cached: Sequence[CachedPrefix] = (),
        budget: BudgetState | None = None,
    ) -> list[Candidate]:
        import warnings

        study, dists = self.study_of(history)
        out = []
        after: dict[int, float | None] = {}
        for _ in range(n):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trial = study.ask(dists)
            phase = "warmup" if len(history) < self.n_warmup else "model"
            params = self.params_of(trial.params)
            # admitted by the cost of what the cache does not already hold of it
            depth, cost = estimated_cost(
                self.space, params, history, cached, worst=True, memo=after
            )
            out.append(Candidate(params, depth, cost, None, {"phase": phase}))
        self.n_asked += len(out)
        return out


class OptunaTPE(OptunaSampler):
    """Optuna's TPE sampler."""

    name = "tpe"

    def make_sampler(self, optuna: Any, seed: int, n_warmup: int) -> Any:
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_warmup)


class OptunaGP(OptunaSampler):
    """Optuna's Gaussian-process sampler (``optuna.samplers.GPSampler``)."""

    name = "optuna-gp"

    def make_sampler(self, optuna: Any, seed: int, n_warmup: int) -> Any:
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_warmup)


class OptunaTPEMemo(OptunaTPE):
    """Optuna's TPE with a memoization layer: where the cache holds a prefix of stages close
    to TPE's proposal, the proposal takes that prefix's parameters and reuses it.

    After the warm-up, for each TPE proposal and each cached prefix, the saving is the share
    of the full run's predicted cost that reusing the prefix avoids (stage costs predicted as
    the median of each stage's observed costs). The prefix is taken when the proposal's
    parameters of those stages lie within ``radius * saving * (1 - spent / budget)`` of the
    prefix's (RMS distance of the unit-scaled encodings): the bigger the saving, the further
    the proposal may move, and less so as the budget runs out. Of those, the largest saving
    wins. TPE then learns from the trials as run (the history holds their real parameters).
    """

    name = "tpe-memo"
    radius = 0.5

    def ask(
        self,
        n: int,
        history: Sequence[Observation],
        pending: Sequence[Pending] = (),
        cached: Sequence[CachedPrefix] = (),
        budget: BudgetState | None = None,
    ) -> list[Candidate]:
        cands = super().ask(n, history, pending, cached, budget)
        full_costs = [
            o.stage_costs for o in history if len(o.stage_costs) == len(self.space.stage_names)
        ]
        if not cached or len(history) < self.n_warmup or not full_costs:
            return cands
        est = [statistics.median(c[k] for c in full_costs) for k in range(len(full_costs[0]))]
        full = sum(est)
        cooling = 1.0
        if budget is not None and math.isfinite(budget.total) and budget.total > 0:
            cooling = max(0.0, 1.0 - budget.spent / budget.total)
        return [self._memo(c, cached, est, full, cooling) for c in cands]

    def _memo(
        self,
        cand: Candidate,
        cached: Sequence[CachedPrefix],
        est: Sequence[float],
        full: float,
        cooling: float,
    ) -> Candidate:
        if full <= 0:
            return cand
        x = self.space.encode(cand.params)
        best: tuple[float, int, dict[str, dict[str, Any]], float] | None = None
        names = self.space.stage_names
        for pre in cached:
            d = int(pre.depth)
            if d < 1 or d > len(names):
                continue
            cost = sum(est[d:]) + float(pre.load_seconds)
            saving = (full - cost) / full
            merged = {
                s: dict(pre.params[s]) if i < d else dict(cand.params[s])
                for i, s in enumerate(names)
            }
            try:
                y = self.space.encode(self.space.canonical(merged))
            except (KeyError, ValueError):
                continue
            cols = range(0, self.space.stage_slices[names[d - 1]].stop)
            if not cols:
                continue
            dist = math.sqrt(sum((x[i] - y[i]) ** 2 for i in cols) / len(cols))
            if dist <= self.radius * saving * cooling and (best is None or saving > best[0]):
                best = (saving, d, merged, cost)
        if best is None:
            return cand
        _, d, merged, cost = best
        info = {**cand.info, "memo_depth": d}
        return Candidate(self.space.canonical(merged), d, cost, None, info)
