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

__all__ = ["clipped_gap", "objective_targets"]


def clipped_gap(y: Tensor, q: float = 0.5, floor: float = 0.0) -> Tensor:
    """``-min(max(y) - y, s)``, ``s`` the ``q``-quantile of the gaps but at least ``floor``.

    Args:
        y: ``n`` signed objective values (larger is better).
        q: the quantile of the gaps to the best that sets ``s``, in (0, 1).
        floor: the least ``s`` (clamped to at least 1e-12, so ``s > 0``).

    Returns:
        ``n`` targets in ``[-s, 0]``, 0 at the best.
    """
    gap = y.max() - y
    scale = torch.quantile(gap, q).clamp_min(max(float(floor), 1e-12))
    return -gap.clamp_max(scale)


def objective_targets(y: Tensor, n_warmup: int) -> Tensor:
    """The clipped gap of ``y`` (``n``), the median gap floored at the best warm-up trial's.

    Args:
        y: ``n`` signed objective values in trial order, the warm-up trials first.
        n_warmup: how many of the first values are warm-up trials (at least one counts).
    """
    warmup = y[: max(1, n_warmup)]
    return clipped_gap(y, 0.5, float(y.max() - warmup.max()))
