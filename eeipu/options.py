"""The options of the GP optimizers, and the ones that were removed.

Every option here is one a user may set: compute knobs (how hard ``ask`` searches), the
objective GP's kernel, a fixed noise for a deterministic objective, and a fixed cooling
exponent. Options that only selected modes measured worse than the defaults (or within the
seeds' noise) are gone; ``REMOVED_OPTIONS`` names them so that an old call fails clearly, and
``docs/research.md`` keeps their measurements and the commands that made them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["REMOVED_OPTIONS", "BOOptions", "check_options"]

KERNELS = ("stage-additive", "rbf")

# Removed option -> the default behaviour it now always has.
REMOVED_OPTIONS: dict[str, str] = {
    "warp": 'the clipped gap ("clip")',
    "warp_quantile": "the median gap (0.5)",
    "clip_floor": "the floor at the best warm-up trial's gap (true)",
    "memo_warmup": "a warm-up that reuses nothing (false)",
    "warmup": 'uniform warm-up draws ("random")',
    "warmup_probe": 'only used by warmup="cheap"',
    "warmup_candidates": 'only used by warmup="cheap"',
    "cost_mean": 'a linear prior mean for the log-cost GPs ("linear")',
    "cost_kernel": 'one RBF term per parameter plus one over all ("additive")',
    "block_moves": "raw candidates without one-stage moves (false)",
    "objective_mean": 'a learnt constant prior mean ("constant")',
    "warmup_prefixes": "the warm-up's prefixes left out of the pool (false)",
}


@dataclass(frozen=True)
class BOOptions:
    """Options of ``CostAwareBO`` (see its docstring for each one's meaning)."""

    mc_samples: int = 128
    max_prefixes: int = 16
    raw_samples: int = 64
    restarts: int = 2
    maxiter: int = 25
    refit_fraction: float = 0.1
    torch_threads: int | None = 1
    eta: float | None = None
    kernel: str = "stage-additive"
    objective_noise: float | None = None
    max_points: int | None = 1000

    def __post_init__(self) -> None:
        if self.max_points is not None and (
            isinstance(self.max_points, bool)
            or not isinstance(self.max_points, int)
            or self.max_points < 20
        ):
            raise ValueError(
                f"max_points must be an integer >= 20 or null, got {self.max_points!r}"
            )
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be 'rbf' or 'stage-additive', got {self.kernel!r}")
        noise = self.objective_noise
        if noise is not None and not 1e-4 <= noise <= 1.0:
            raise ValueError(f"objective_noise must be in [1e-4, 1], got {noise!r}")


def option_names() -> list[str]:
    return [f.name for f in fields(BOOptions)]


def check_options(optimizer: str, unknown: Mapping[str, Any]) -> None:
    """``ValueError`` naming the first of ``unknown`` options and the valid ones, if any."""
    if not unknown:
        return
    name = sorted(unknown)[0]
    valid = ", ".join(["n_warmup", *option_names()])
    if name in REMOVED_OPTIONS:
        raise ValueError(
            f"optimizer {optimizer!r}: {name} must be omitted, the option was removed (it is"
            f" always {REMOVED_OPTIONS[name]}; its other modes measured worse, see"
            f" docs/research.md); valid options: {valid}"
        )
    raise ValueError(f"optimizer {optimizer!r} has no option {name!r}; valid options: {valid}")
