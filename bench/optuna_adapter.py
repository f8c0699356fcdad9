"""Optuna's TPE sampler behind the optimizer contract: an outside reference for the benchmark.

It lives beside the product, not in ``eeipu/``: optuna is an optional dependency that only the
benchmark needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eeipu.base import BudgetState, CachedPrefix, Candidate, Observation, Optimizer, Pending
from eeipu.space import Categorical, Float, Int, SearchSpace

__all__ = ["OptunaTPE"]


class OptunaTPE(Optimizer):
    """Optuna's TPE sampler behind the ask/tell contract (sequential; outside reference)."""

    name = "tpe"

    def __init__(
        self, space: SearchSpace, direction: str = "maximize", seed: int = 0, n_warmup: int = 10
    ) -> None:
        super().__init__(space, direction=direction, seed=seed, n_warmup=n_warmup)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._optuna = optuna
        self.study = optuna.create_study(
            direction="maximize" if direction == "maximize" else "minimize",
            sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_warmup),
        )
        self._asked: list[Any] = []
        self._dists: dict[str, Any] = {}
        for sp in space.specs:
            p = sp.param
            key = f"{sp.stage}.{sp.name}"
            if isinstance(p, Float):
                self._dists[key] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.log)
            elif isinstance(p, Int):
                self._dists[key] = optuna.distributions.IntDistribution(p.low, p.high, log=p.log)
            elif isinstance(p, Categorical):
                self._dists[key] = optuna.distributions.CategoricalDistribution(list(p.choices))

    def ask(
        self,
        n: int,
        history: Sequence[Observation],
        pending: Sequence[Pending] = (),
        cached: Sequence[CachedPrefix] = (),
        budget: BudgetState | None = None,
    ) -> list[Candidate]:
        # Tell what finished since the last ask (the loop is sequential: same order).
        told = sum(1 for t in self._asked if t is None)
        for i in range(told, min(len(history), len(self._asked))):
            obs = history[i]
            trial = self._asked[i]
            state = self._optuna.trial.TrialState
            if obs.value is None:
                self.study.tell(trial, state=state.FAIL)
            else:
                self.study.tell(trial, obs.value)
            self._asked[i] = None
        out = []
        for _ in range(n):
            trial = self.study.ask(self._dists)
            params: dict[str, dict[str, Any]] = {s: {} for s in self.space.stage_names}
            for sp in self.space.specs:
                params[sp.stage][sp.name] = sp.param.canonical(
                    trial.params[f"{sp.stage}.{sp.name}"]
                )
            self._asked.append(trial)
            out.append(Candidate(params, 0, None, None, {"phase": "model"}))
        self.n_asked += len(out)
        return out
