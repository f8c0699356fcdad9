"""Is an unlearned model inside the retrained models' band? (a cheap, torch-free import)

The evaluate stage of every unlearning pipeline trains, once per split and cached, an
ensemble of retrained models (the same recipe on the retain set, different training seeds)
and reports for each compared metric ``m`` in ``BAND_METRICS``:

* ``m``: the unlearned model's value;
* ``m_band_low``, ``m_band_high``: the pass band, mean +- 2 sd of ``m`` over the retrained
  ensemble (sd with ddof=1);
* ``m_band_mean``, ``m_band_sd``: the ensemble's mean and standard deviation;
* ``m_band_power``: ``|original model's m - band mean| / (2 sd)``; below 1 the original model
  (no unlearning at all) lies inside the band, so the check cannot tell unlearning from doing
  nothing: the comparison is underpowered;
* ``band_n_retrains``: the ensemble's size;
* ``time_ratio``: unlearning time / retraining time (passes at <= ``TIME_LIMIT``), in process
  CPU time on a CPU device (``time_ratio_cpu`` = 1; stable on a machine shared with other
  jobs, whose load inflates wall time) and in wall time otherwise; ``time_ratio_wall`` is
  the wall-time ratio.

``judge`` turns those into one ``Check`` per compared metric (plus the time criterion). A
metric whose band keys are missing gets ``band=None, passed=None``; a NaN value gets
``passed=None``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["BAND_METRICS", "TIME_LIMIT", "Check", "band_keys", "judge", "underpowered"]

BAND_METRICS: tuple[str, ...] = (
    "test_auc",
    "forget_auc",
    "retain_auc",
    "lira_forget_auc",
    "lira_retain_auc",
)
TIME_LIMIT = 0.2  # unlearning may cost at most a fifth of retraining


@dataclass(frozen=True)
class Check:
    """One criterion: the unlearned model's ``value``, the pass ``band`` and the outcome.

    ``passed`` is ``None`` when it cannot be decided (no band, or the value is not finite).
    """

    name: str
    value: float | None
    band: tuple[float, float] | None
    passed: bool | None


def band_keys(metric: str) -> tuple[str, str]:
    """The evaluate stage's keys of ``metric``'s pass band: ``(low, high)``."""
    return f"{metric}_band_low", f"{metric}_band_high"


def _finite(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def judge(metrics: Mapping[str, float]) -> list[Check]:
    """One ``Check`` per metric of ``BAND_METRICS`` present in ``metrics``, then ``time_ratio``.

    A metric passes when ``band_low <= value <= band_high``.
    """
    out: list[Check] = []
    for m in BAND_METRICS:
        if m not in metrics:
            continue
        value = _finite(metrics[m])
        lo_k, hi_k = band_keys(m)
        lo, hi = _finite(metrics.get(lo_k)), _finite(metrics.get(hi_k))
        band = (lo, hi) if lo is not None and hi is not None else None
        passed = None if band is None or value is None else band[0] <= value <= band[1]
        out.append(Check(m, value, band, passed))
    if "time_ratio" in metrics:
        t = _finite(metrics["time_ratio"])
        ok = None if t is None else t <= TIME_LIMIT
        out.append(Check("time_ratio", t, (0.0, TIME_LIMIT), ok))
    return out


def underpowered(metrics: Mapping[str, float]) -> list[str]:
    """The compared metrics whose band contains the original model's value (power < 1)."""
    out = []
    for m in BAND_METRICS:
        p = _finite(metrics.get(f"{m}_band_power"))
        if p is not None and p < 1.0:
            out.append(m)
    return out
