"""The objective GP's targets: the clipped gap to the best.

``w(y) = -min(max(y) - y, s)`` with ``s = max(median(max(y) - y), max(y) - max(y_warm-up))``:
among the better configurations the differences stay raw, so an objective that is additive
over stages stays additive (which the stage-additive kernel can learn); every worse
configuration sits on one plateau, so objectives spanning orders of magnitude cannot swamp
the GP. The floor (the gap of the best warm-up trial) keeps the raw region from collapsing
once most trials refine the incumbent. The warps tried instead are in ``docs/research.md``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["clipped_gap", "gap_scale", "objective_targets", "warmup_floor"]


def gap_scale(y: Tensor, q: float = 0.5, floor: float = 0.0) -> Tensor:
    """The clipping scale ``s`` of ``clipped_gap`` (a 0-dim tensor, ``> 0``)."""
    return torch.quantile(y.max() - y, q).clamp_min(max(float(floor), 1e-12))


def clipped_gap(y: Tensor, q: float = 0.5, floor: float = 0.0) -> Tensor:
    """``-min(max(y) - y, s)``, ``s`` the ``q``-quantile of the gaps but at least ``floor``.

    Args:
        y: ``n`` signed objective values (larger is better).
        q: the quantile of the gaps to the best that sets ``s``, in (0, 1).
        floor: the least ``s`` (clamped to at least 1e-12, so ``s > 0``).

    Returns:
        ``n`` targets in ``[-s, 0]``, 0 at the best.
    """
    return -(y.max() - y).clamp_max(gap_scale(y, q, floor))


def objective_targets(y: Tensor, n_warmup: int) -> Tensor:
    """The clipped gap of ``y`` (``n``), the median gap floored at the best warm-up trial's.

    Args:
        y: ``n`` signed objective values in trial order, the warm-up trials first.
        n_warmup: how many of the first values are warm-up trials (at least one counts).
    """
    return clipped_gap(y, 0.5, warmup_floor(y, n_warmup))


def warmup_floor(y: Tensor, n_warmup: int) -> float:
    """The floor of the clipping scale: the gap of the best warm-up trial."""
    return float(y.max() - y[: max(1, n_warmup)].max())
