"""Unlearning methods: each starts from the original model and returns new weights.

Every method takes ``(orig, feats, seed, device, **params)`` and returns an ``Unlearned``
whose ``seconds`` is the method's own wall time (model copy + updates) and ``cpu_seconds``
its CPU time (``time.process_time``), the figures compared with retraining's.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.unlearning.features import Features
from pipelines.unlearning.losses import (
    FORGETMI_TERMS,
    Frozen,
    draw_noise,
    forgetmi_losses,
    forgetmi_objective,
    frozen,
    multidelete_losses,
    normalise_weights,
    perturb,
    scrub_kl,
)
from pipelines.unlearning.model import (
    FusionNet,
    TrainedModel,
    build,
    layer_groups,
    resolve_device,
    state_cpu,
)

__all__ = [
    "INFO_KEYS",
    "METHODS",
    "ForgetMIConfig",
    "MultiDeleteConfig",
    "ScrubConfig",
    "Unlearned",
    "forget_mi",
    "multidelete",
    "run_method",
    "scrub",
]


@dataclass
class Unlearned:
    """New weights and what computing them cost: ``seconds`` in wall time, ``cpu_seconds``
    in this process's CPU time (every thread; NaN on results pickled before it was kept)."""

    state: dict[str, Any]
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)
    cpu_seconds: float = math.nan


class _Data:
    """Forget / retain tensors on the device, and seeded batch iterators."""

    def __init__(self, feats: Features, dev: torch.device, seed: int) -> None:
        s = feats.split

        def t(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return (
                torch.as_tensor(feats.image[idx], device=dev),
                torch.as_tensor(feats.text[idx], device=dev),
                torch.as_tensor(feats.y[idx], device=dev),
            )

        self.f = t(s.forget)
        self.r = t(s.retain)
        # held-out data a user has (validation split; never the evaluation test set)
        self.v = t(s.val if len(s.val) else s.retain[:0])
        self.gen = torch.Generator().manual_seed(seed)
        self.dev = dev

    def batch_indices(self, part: tuple[torch.Tensor, ...], bs: int) -> Iterator[torch.Tensor]:
        """The row indices of one seeded pass over ``part`` in batches of ``bs``."""
        n = part[0].shape[0]
        perm = torch.randperm(n, generator=self.gen).to(self.dev)
        for s in range(0, n, bs):
            yield perm[s : s + bs]

    def batches(
        self, part: tuple[torch.Tensor, ...], bs: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for b in self.batch_indices(part, bs):
            yield _rows(part, b)

    def sample_indices(self, part: tuple[torch.Tensor, ...], bs: int) -> torch.Tensor:
        """The row indices of a seeded random batch of ``part`` (with replacement)."""
        n = part[0].shape[0]
        return torch.randint(0, n, (min(bs, n),), generator=self.gen).to(self.dev)

    def sample(
        self, part: tuple[torch.Tensor, ...], bs: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _rows(part, self.sample_indices(part, bs))


def _rows(
    part: tuple[torch.Tensor, ...], b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows ``b`` of each tensor of ``part`` (``index_select``: the values of ``part[k][b]``,
    at a fraction of advanced indexing's per-call cost on small tensors)."""
    return part[0].index_select(0, b), part[1].index_select(0, b), part[2].index_select(0, b)


def _start(orig: TrainedModel, device: str, seed: int) -> tuple[FusionNet, FusionNet, torch.device]:
    torch.manual_seed(seed)
    dev = resolve_device(device)
    og = build(orig.cfg, orig.state, device=device)
    og.eval()
    for p in og.parameters():
        p.requires_grad_(False)
    ul = copy.deepcopy(og)
    for p in ul.parameters():
        p.requires_grad_(True)
    return og, ul, dev


@torch.no_grad()
def _mean_ce(model: FusionNet, part: tuple[torch.Tensor, ...]) -> float:
    return float(F.cross_entropy(_eval_logits(model, part), part[2]))


def _eval_logits(model: FusionNet, part: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Logits in eval mode (no dropout), leaving the model's mode as it was."""
    was = model.training
    if was:
        model.eval()
    with torch.no_grad():
        out: torch.Tensor = model(part[0], part[1])
    if was:
        model.train(True)
    return out


def _reference_loss(og: FusionNet, data: _Data) -> float:
    """The original model's loss on held-out (validation) data: what unseen data looks like
    (``Stopper.target_loss``, which computes it from logits it keeps)."""
    if data.v[0].shape[0] == 0:
        raise ValueError("calibration / early stopping need a validation split")
    return _mean_ce(og, data.v)


def auc_t(scores: torch.Tensor, y: torch.Tensor) -> float:
    """ROC AUC of ``scores`` for binary labels ``y`` (Mann-Whitney on ranks; NaN if one class).

    Ties are broken by order, which is immaterial for continuous model scores.
    """
    pos = y == 1
    n_pos, n = int(pos.sum()), int(y.numel())
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = torch.empty(n, dtype=torch.float64, device=scores.device)
    ranks[torch.argsort(scores)] = torch.arange(1, n + 1, dtype=torch.float64, device=scores.device)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@torch.no_grad()
def _model_auc(model: FusionNet, part: tuple[torch.Tensor, ...]) -> float:
    logits = _eval_logits(model, part)
    return auc_t(logits[:, 1] - logits[:, 0], part[2])


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


STOP_MODES = ("none", "loss", "auc", "best")


class Stopper:
    """Retrain-free early stopping, checked after every optimizer step.

    ``mode``: ``"loss"`` stops once the forget set's loss reaches the original model's loss on
    held-out (validation) data; ``"auc"`` stops once the forget set's AUC falls to the original
    model's held-out AUC plus ``auc_gap`` (the forget set is then ranked like data the model
    never saw); ``"none"`` never stops (``True`` / ``False`` mean ``"loss"`` / ``"none"``).
    ``"best"`` keeps the step (checkpoint) with the best retrain-free trade-off

        score = -|forget AUC - (held-out AUC_og + auc_gap)| - val_weight * max(0, val AUC drop)

    (as both papers pick the epoch they keep) and stops once the forget AUC reaches the target
    or ``patience`` steps bring no better score.

    ``max_val_drop`` (any mode) is a guard on utility: a step that drops the validation AUC
    more than this below the original model's is undone and ends the run, so one unlucky seed
    cannot wreck test performance. Nothing here needs the retrained model or the test set.
    """

    def __init__(
        self,
        mode: str | bool,
        og: FusionNet,
        data: _Data,
        auc_gap: float = 0.0,
        max_val_drop: float = 1.0,
        val_weight: float = 3.0,
        patience: int = 10,
    ) -> None:
        if isinstance(mode, bool):
            mode = "loss" if mode else "none"
        if mode not in STOP_MODES:
            raise ValueError(f"early_stop must be one of {STOP_MODES}, got {mode!r}")
        self.mode = mode
        self.data = data
        if data.v[0].shape[0] == 0:
            raise ValueError("calibration / early stopping need a validation split")
        # the original's held-out logits, computed once: its held-out loss (the reference
        # loss), its held-out AUC and (``unseen_margins``) the unseen rows' margins
        self.og_val_logits = _eval_logits(og, data.v)
        self.target_loss = float(F.cross_entropy(self.og_val_logits, data.v[2]))
        z = self.og_val_logits
        self.val_auc = auc_t(z[:, 1] - z[:, 0], data.v[2])
        self.target_auc = self.val_auc + auc_gap
        self.max_val_drop = max_val_drop
        self.guarded = max_val_drop < 1.0
        self.reason = ""
        self.val_weight = val_weight
        self.patience = patience
        # forget and validation rows in one batch: one forward per check (mode "best")
        self._fv = (
            tuple(torch.cat([a, b]) for a, b in zip(data.f, data.v, strict=True))
            if mode == "best"
            else ()
        )
        self._snap: dict[str, torch.Tensor] | None = None
        self._best: dict[str, torch.Tensor] | None = None
        self.best_score = -math.inf
        self.best_step = 0
        self._steps = 0

    def score(self, ul: FusionNet) -> tuple[float, float]:
        """(trade-off score, forget AUC) of the current weights (mode ``"best"``)."""
        logits = _eval_logits(ul, self._fv)
        s = logits[:, 1] - logits[:, 0]
        n_f = self.data.f[0].shape[0]
        fa = auc_t(s[:n_f], self._fv[2][:n_f])
        drop = max(0.0, self.val_auc - auc_t(s[n_f:], self._fv[2][n_f:]))
        return -abs(fa - self.target_auc) - self.val_weight * drop, fa

    def start(self, ul: FusionNet) -> bool:
        """Check the starting weights; True = nothing to do."""
        if self.mode == "best":
            self.best_score, _ = self.score(ul)
            self._best = _snapshot(ul)
            return False
        return self.reached(ul)

    def finish(self, ul: FusionNet) -> None:
        """Mode ``"best"``: load the kept checkpoint."""
        if self.mode == "best" and self._best is not None:
            ul.load_state_dict(self._best)

    def reached(self, ul: FusionNet) -> bool:
        """True once the forget set looks unseen by the chosen criterion."""
        if self.mode == "loss":
            return _mean_ce(ul, self.data.f) >= self.target_loss
        if self.mode == "auc":
            a = _model_auc(ul, self.data.f)
            return not math.isfinite(a) or a <= self.target_auc
        return False

    def step(
        self,
        ul: FusionNet,
        loss: torch.Tensor,
        opt: torch.optim.Optimizer,
        sched: torch.optim.lr_scheduler.LRScheduler,
    ) -> bool:
        """One optimizer step of ``loss`` between the checks; True = stop now."""
        self.before_step(ul)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        return self.after_step(ul)

    def before_step(self, ul: FusionNet) -> None:
        if self.guarded:
            self._snap = _snapshot(ul)

    def after_step(self, ul: FusionNet) -> bool:
        """Check after a step; True = stop now (the guard may have undone the step)."""
        if (
            self.guarded
            and self._snap is not None
            and _model_auc(ul, self.data.v) < self.val_auc - self.max_val_drop
        ):
            ul.load_state_dict(self._snap)
            self.reason = "guard"
            return True
        self._steps += 1
        if self.mode == "best":
            sc, fa = self.score(ul)
            if sc > self.best_score:
                self.best_score, self.best_step, self._best = sc, self._steps, _snapshot(ul)
            if not math.isfinite(fa) or fa <= self.target_auc:
                self.reason = "best"
                return True
            if self._steps - self.best_step >= self.patience:
                self.reason = "patience"
                return True
            return False
        if self.reached(ul):
            self.reason = self.mode
            return True
        return False


CALIBRATION_GRID = np.geomspace(0.01, 10.0, 25)  # Forget-MI's candidate noise stds
_CALIBRATION_ROWS = 1 << 16  # perturbed rows per forward pass of the calibration


@torch.no_grad()
def calibrate_noise(
    og: FusionNet, data: _Data, noise_mean: float, text_noise: float, target: float
) -> float:
    """Forget-MI's calibration: the noise std whose perturbed forget set gets the original
    model's held-out loss, ``argmin_s |CE_og(f~_s) - target|`` over a log grid in [0.01, 10]
    (``CALIBRATION_GRID``; one fixed noise draw, so the choice is deterministic; the first
    grid point wins a tie, 1.0 when every loss is NaN).

    Every grid point uses the same draw ``z`` (``perturb``'s, from a generator seeded with
    12345), so ``f~_s = f + mean + s * z`` is one draw scaled, and the perturbed copies of
    all the grid points go through ``og`` together (``_CALIBRATION_ROWS`` rows per pass)
    instead of one draw and one forward pass per grid point."""
    xi, xt, y = data.f
    n = xi.shape[0]
    if n == 0:
        return 1.0
    dev = xi.device
    zi, zt, keep = draw_noise(xi.shape, xt.shape, text_noise, torch.Generator().manual_seed(12345))
    zi, zt = zi.to(dev), zt.to(dev)
    base_i, base_t = xi + noise_mean, xt + noise_mean
    mask = keep.to(dev).to(xt.dtype) if keep is not None else None
    grid = torch.as_tensor(CALIBRATION_GRID, dtype=xi.dtype, device=dev)[:, None, None]
    per = max(1, _CALIBRATION_ROWS // n)
    losses: list[float] = []
    for a in range(0, grid.shape[0], per):
        s = grid[a : a + per]
        k = s.shape[0]
        ni = base_i + s * zi  # k x n x d: each grid point's perturbed copy
        nt = base_t + s * zt
        if mask is not None:
            nt = nt * mask
        logits = og(ni.reshape(k * n, -1), nt.reshape(k * n, -1))
        ce = F.cross_entropy(logits, y.repeat(k), reduction="none").reshape(k, n).mean(dim=1)
        losses.extend(ce.tolist())
    best, best_gap = 1.0, math.inf
    for sd, ce_s in zip(CALIBRATION_GRID, losses, strict=True):
        gap = abs(ce_s - target)
        if gap < best_gap:
            best, best_gap = float(sd), gap
    return best


def _clock() -> tuple[float, float]:
    """(wall, process CPU) clock readings at a method's start, for ``_done``."""
    return time.perf_counter(), time.process_time()


def _done(ul: FusionNet, t0: tuple[float, float], dev: torch.device, **info: Any) -> Unlearned:
    if dev.type == "cuda":
        torch.cuda.synchronize()
    state = state_cpu(ul)
    wall, cpu = time.perf_counter() - t0[0], time.process_time() - t0[1]
    return Unlearned(state, wall, dict(info), cpu)


def _adamw(params: Any, lr: float, wd: float = 0.01) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd, foreach=True)


def _plan(data: _Data, batch_size: int, epochs: int, steps: int) -> tuple[int, int]:
    """(epochs to iterate, optimizer steps planned): ``steps > 0`` overrides ``epochs`` with a
    fixed number of steps (cycling through the forget set), so the cost does not grow with the
    forget set's size."""
    per_epoch = max(1, math.ceil(data.f[0].shape[0] / batch_size))
    if steps > 0:
        return math.ceil(steps / per_epoch), steps
    return epochs, epochs * per_epoch


TRAIN_BATCH = 64  # the original model's mini-batch size (the train stage's)


def _budget(orig: TrainedModel, data: _Data, steps: int, step_share: float) -> int:
    """The step budget: ``steps``, capped (when ``step_share > 0``) at ``step_share`` times the
    optimizer steps that retraining takes (its epochs x retain batches), at least one step.
    The cap scales the cost with the data, so unlearning stays a fixed share of retraining's
    cost on a small data set as on a large one."""
    if step_share <= 0:
        return steps
    n_r = data.r[0].shape[0]
    cap = max(1, math.floor(step_share * len(orig.history) * math.ceil(n_r / TRAIN_BATCH)))
    return min(steps, cap) if steps > 0 else cap


def _forget_batch(data: _Data, batch_size: int, steps: int, passes: float) -> int:
    """The forget batch size: ``batch_size``, or (``passes > 0`` with a step budget) large
    enough that the ``steps`` planned cover the forget set ``passes`` times,
    ``min(n_f, max(batch_size, ceil(passes * n_f / steps)))``.

    The step budget is fixed (``_budget``), so with a fixed batch each row of a forget set
    three times larger is visited a third as often. Scaling the batch with the forget set
    keeps the visits per row at ``passes`` at 3% and at 10% (and averages the batch-mean
    terms over more rows, a less noisy gradient); ``_row_weight`` keeps each visit's
    margin-matching push per row the same. The retain batch stays ``retain_ratio *
    batch_size``: the added cost is forward-backward rows, not optimizer steps."""
    n_f = data.f[0].shape[0]
    if passes <= 0 or steps <= 0 or n_f == 0:
        return batch_size
    return max(1, min(n_f, max(batch_size, math.ceil(passes * n_f / steps))))


def _row_weight(w: float, rows: int, batch_size: int, passes: float) -> float:
    """The weight of the margin-matching term (a mean over the forget batch): ``w``, or
    (``passes > 0``) ``w * rows / batch_size``, i.e. ``w`` times a sum over the batch's rows
    per ``batch_size`` rows.

    With a batch mean, a batch ``k`` times larger gives each row ``1/k`` of the gradient, so
    ``passes`` visits of the scaled batch of ``_forget_batch`` would push each row exactly as
    far in total as the fixed batch's fewer visits did (``steps / n_f`` batch means). The
    factor gives every forget row the same push per visit whatever the batch size, so the
    total push per row is ``passes`` visits' worth at any forget-set size. Only this term is
    scaled: the papers' forget losses keep their batch means."""
    return w * rows / batch_size if passes > 0 else w


@torch.no_grad()
def unseen_margins(og: FusionNet, data: _Data, logits: torch.Tensor | None = None) -> torch.Tensor:
    """The original model's logit margins ``z_y - z_other`` on held-out (validation) rows,
    sorted: what the margins of rows the model never saw look like. ``logits``: ``og``'s
    eval-mode logits on those rows when already computed (``Stopper.og_val_logits``)."""
    if data.v[0].shape[0] == 0:
        return torch.zeros(0)
    z = logits if logits is not None else _eval_logits(og, data.v)
    return torch.sort(_margin(z, data.v[2])).values


def _margin(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    zy = z.gather(1, y[:, None])[:, 0]
    other = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).max(dim=1).values
    return zy - other


def margin_targets(unseen: torch.Tensor, b: int, dtype: torch.dtype) -> torch.Tensor:
    """The targets of ``margin_match`` for a batch of ``b`` rows: ``Q((i - 1/2) / b)``, the
    empirical quantile function of the sorted margins ``unseen`` (non-empty) at the batch's
    plotting positions. They depend only on ``b``, so a run computes them once per size."""
    pos = ((torch.arange(b, dtype=torch.float64) + 0.5) / b * unseen.numel()).long()
    return unseen[pos.clamp(max=unseen.numel() - 1).to(unseen.device)].to(dtype)


class _MarginTargets:
    """``margin_targets`` of one run's ``unseen`` margins, memoised by batch size."""

    def __init__(self, unseen: torch.Tensor) -> None:
        self.unseen = unseen
        self._by_size: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    def __call__(self, b: int, dtype: torch.dtype) -> torch.Tensor | None:
        if self.unseen.numel() == 0:
            return None
        key = (b, dtype)
        if key not in self._by_size:
            self._by_size[key] = margin_targets(self.unseen, b, dtype)
        return self._by_size[key]


def margin_match(
    z_f: torch.Tensor, y_f: torch.Tensor, unseen: torch.Tensor, tgt: torch.Tensor | None = None
) -> torch.Tensor:
    """Forget-side matching (an extension): the squared 1-D optimal-transport distance between
    the forget batch's logit margins and the sorted margins ``unseen`` of held-out rows,
    ``mean_i (phi_(i) - Q((i - 1/2) / B))^2`` over the sorted batch margins ``phi_(i)`` and
    the empirical quantile function ``Q`` of ``unseen``. Zero when the forget rows' margins are
    distributed as unseen rows' are; it lowers memorised margins without pushing them past
    what unseen data shows (unlike gradient ascent). ``tgt``: the targets
    ``margin_targets(unseen, len(z_f), z_f.dtype)`` when already computed."""
    if unseen.numel() == 0:
        return z_f.sum() * 0.0
    phi = torch.sort(_margin(z_f, y_f)).values
    if tgt is None:
        tgt = margin_targets(unseen, phi.shape[0], phi.dtype)
    return ((phi - tgt) ** 2).mean()


def _head_logits(
    ul: FusionNet, keep: Mapping[str, torch.Tensor], forget: bool, retain: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``ul``'s logits ``(z_f, z_r)`` on a step's forget and retain rows from the fused
    representations the losses kept (``ul`` in eval mode: ``head(h_r)`` is exactly
    ``ul(xi_r, xt_r)``), each only where wanted (else ``None``); both from one head pass over
    the stacked ``h = [h_f; h_r]``."""
    if forget and retain:
        z = ul.head(keep["h"])
        nf = keep["h_f"].shape[0]
        return z[:nf], z[nf:]
    return (
        ul.head(keep["h_f"]) if forget else None,
        ul.head(keep["h_r"]) if retain else None,
    )


def _retain_kl(z_r: torch.Tensor, og_logp_r: torch.Tensor) -> torch.Tensor:
    """``KL(p_og || p_ul)`` on a retain batch (``z_r``: ``ul``'s logits, ``og_logp_r``: ``og``'s
    log-probabilities, both models in eval mode): keeps the retain rows' outputs where the
    original had them."""
    return F.kl_div(F.log_softmax(z_r, dim=1), og_logp_r, log_target=True, reduction="batchmean")


@torch.no_grad()
def _og_logp(og: FusionNet, og_h: torch.Tensor) -> torch.Tensor:
    """``og``'s log-probabilities from its fused representations ``og_h`` (eval mode)."""
    return F.log_softmax(og.head(og_h), dim=1)


def _frozen_part(og: FusionNet, part: tuple[torch.Tensor, ...], visits: int) -> Frozen | None:
    """``og``'s ``Frozen`` outputs on every row of ``part``, computed once, when a run's batches
    look at at least as many rows (``visits``) as ``part`` holds; ``None`` otherwise (then
    ``og`` runs on each batch, which costs fewer rows). ``og`` is frozen and in eval mode, so a
    row's outputs are the same in every step (up to the float rounding of the batch size)."""
    n = part[0].shape[0]
    if n == 0 or visits < n:
        return None
    return frozen(og, part[0], part[1])


class _Extensions:
    """The three extension terms of Forget-MI and MultiDelete in one step,

        ``w_ce * CE(z_r, y_r) + w_kl * KL(p_og || p_ul) on the retain rows
        + _row_weight(w_fm, ...) * margin_match(z_f, y_f, unseen)``,

    from the fused representations the losses kept. What does not change within a run is
    computed once: ``og``'s retain log-probabilities (from ``og_r``, when the run precomputed
    ``og``'s retain outputs) and the margin targets per forget-batch size. ``ul`` is in eval
    mode, so ``head(h)`` is exactly ``ul``'s output; one head pass over the stacked
    ``[h_f; h_r]`` gives both sides' logits, and one ``z_r`` serves the cross-entropy and the
    distillation."""

    def __init__(
        self,
        og: FusionNet,
        og_r: Frozen | None,
        unseen: torch.Tensor,
        w_ce: float,
        w_kl: float,
        w_fm: float,
        batch_size: int,
        forget_passes: float,
    ) -> None:
        self.og = og
        self.og_lp_r = _og_logp(og, og_r.h) if og_r is not None and w_kl > 0 else None
        self.unseen = unseen
        self.tgt = _MarginTargets(unseen)
        self.w_ce, self.w_kl, self.w_fm = w_ce, w_kl, w_fm
        self.batch_size, self.forget_passes = batch_size, forget_passes

    def add(
        self,
        loss: torch.Tensor,
        ul: FusionNet,
        keep: Mapping[str, torch.Tensor],
        rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """``loss`` plus the step's extension terms (in the order above; ``loss`` itself when
        every weight is 0). ``rows``: the forget labels, the retain labels and the retain
        batch's row indices."""
        y_f, y_r, b_r = rows
        z_f, z_r = _head_logits(ul, keep, self.w_fm > 0, self.w_ce > 0 or self.w_kl > 0)
        out = loss
        if z_r is not None and self.w_ce > 0:
            out = out + self.w_ce * F.cross_entropy(z_r, y_r)
        if z_r is not None and self.w_kl > 0:
            lp = (
                self.og_lp_r.index_select(0, b_r)
                if self.og_lp_r is not None
                else _og_logp(self.og, keep["og_h_r"])
            )
            out = out + self.w_kl * _retain_kl(z_r, lp)
        if z_f is not None:
            b = z_f.shape[0]
            fm = margin_match(z_f, y_f, self.unseen, self.tgt(b, z_f.dtype))
            out = out + _row_weight(self.w_fm, b, self.batch_size, self.forget_passes) * fm
        return out


def _schedule(
    opt: torch.optim.Optimizer, kind: str, n_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """``"cosine"``: anneal to 0 over ``n_steps``; ``"constant"``: keep the learning rate."""
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, n_steps))
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)
    raise ValueError(f"schedule must be 'cosine' or 'constant', got {kind!r}")


def _check_params(config: type, method: str, params: Mapping[str, Any]) -> None:
    """A ``TypeError`` naming the ``params`` that are not fields of the dataclass ``config``."""
    known = {f.name for f in fields(config)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise TypeError(f"{method} got unknown parameters {unknown}; known: {sorted(known)}")


# ---------------------------------------------------------------- Forget-MI
@dataclass(frozen=True)
class ForgetMIConfig:
    """Forget-MI's hyperparameters (the unlearn stage's parameters, plus method options).

    The field names are the stage's parameter names, so a configuration maps one to one onto
    the cache key; the defaults are the method's own (not the tuned pipeline defaults).
    """

    lr: float = 1e-3
    epochs: int = 5
    batch_size: int = 32
    w_uu: float = 0.1
    w_ur: float = 0.1
    w_mu: float = 0.4
    w_mr: float = 0.4
    use_noise: bool = False
    noise_mean: float = 0.0
    noise_std: float = 1.0
    text_noise: float = 0.3
    margin: float = 5.0
    init_noise: float = 1e-2
    retain_ratio: int = 2
    calibrate: bool = True
    early_stop: str | bool = True
    auc_gap: float = 0.0
    max_val_drop: float = 1.0
    w_ce: float = 0.0
    val_weight: float = 3.0
    patience: int = 10
    schedule: str = "cosine"
    steps: int = 0
    w_kl: float = 0.0
    step_share: float = 0.0
    w_fm: float = 0.0
    forget_passes: float = 0.0

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ForgetMIConfig:
        """A configuration from stage parameters (``TypeError`` naming unknown ones)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise TypeError(f"forget_mi got unknown parameters {unknown}; known: {sorted(known)}")
        return cls(**params)

    @property
    def weights(self) -> dict[str, float]:
        return {"uu": self.w_uu, "ur": self.w_ur, "mu": self.w_mu, "mr": self.w_mr}


def forget_mi(
    orig: TrainedModel,
    feats: Features,
    seed: int,
    device: str,
    config: ForgetMIConfig | None = None,
) -> Unlearned:
    """Forget-MI: four embedding-distance losses, AdamW, one optimizer step per forget batch.

    Each step pairs a forget batch with a random retain batch ``retain_ratio`` times larger.
    Because the push-away distances are zero (and so is their gradient) when ``ul`` is an
    exact copy of ``og``, the copy's weights first get Gaussian noise of std ``init_noise`` x
    each tensor's own std (symmetry breaking; 0 disables it).

    ``config`` (default ``ForgetMIConfig()``) holds the hyperparameters:
    ``calibrate`` (with ``use_noise``): the noise std is set so that the original model's loss
    on the perturbed forget set equals its loss on held-out data (as Forget-MI calibrates it),
    instead of ``noise_std``. ``early_stop`` / ``auc_gap`` / ``max_val_drop``: retrain-free
    stopping and a utility guard, checked after every step (see ``Stopper``). ``w_ce`` (an
    extension; 0 = the paper's losses only): adds ``w_ce * CE(retain batch)``, task retention
    on the labels as NegGrad+'s and SCRUB's retain steps do, to the four-term loss.
    ``schedule``: ``"cosine"`` anneals the learning rate to 0 over the planned steps (the public
    code creates a scheduler but never steps it), ``"constant"`` keeps it. ``steps > 0``:
    that many optimizer steps instead of ``epochs`` passes over the forget set.
    """
    c = config if config is not None else ForgetMIConfig()
    t0 = _clock()
    og, ul, dev = _start(orig, device, seed)
    data = _Data(feats, dev, seed)
    stop = Stopper(c.early_stop, og, data, c.auc_gap, c.max_val_drop, c.val_weight, c.patience)
    unseen = unseen_margins(og, data, stop.og_val_logits)
    target = stop.target_loss
    noise_std = c.noise_std
    if c.use_noise and c.calibrate:
        noise_std = calibrate_noise(og, data, c.noise_mean, c.text_noise, target)
    if c.init_noise > 0:
        with torch.no_grad():
            for p in ul.parameters():
                p.add_(
                    c.init_noise * (float(p.std()) if p.numel() > 1 else 1.0) * torch.randn_like(p)
                )
    weights = normalise_weights({k: c.weights.get(k, 0.0) for k in FORGETMI_TERMS})
    opt = _adamw(ul.parameters(), c.lr)
    budget = _budget(orig, data, c.steps, c.step_share)
    bf = _forget_batch(data, c.batch_size, budget, c.forget_passes)
    epochs, planned = _plan(data, bf, c.epochs, budget)
    sched = _schedule(opt, c.schedule, planned)
    ul.eval()  # no dropout: the distances compare deterministic embeddings
    rb = c.retain_ratio * c.batch_size
    # the original's retain-side outputs (and log-probabilities) once for the whole retain
    # set; its forget-side targets are of fresh noisy inputs (or, without noise, of clean
    # forget rows) and are computed per batch
    og_r = _frozen_part(og, data.r, planned * rb)
    ext = _Extensions(og, og_r, unseen, c.w_ce, c.w_kl, c.w_fm, c.batch_size, c.forget_passes)
    last: dict[str, torch.Tensor] = {}
    steps = 0
    stopped = stop.start(ul)
    for _ in range(epochs):
        if stopped:
            break
        for b_f in data.batch_indices(data.f, bf):
            if steps >= planned:
                stopped = True
                break
            steps += 1
            xi_f, xt_f, y_f = _rows(data.f, b_f)
            b_r = data.sample_indices(data.r, rb)
            xi_r, xt_r, y_r = _rows(data.r, b_r)
            if c.use_noise:
                xi_n, xt_n = perturb(xi_f, xt_f, c.noise_mean, noise_std, c.text_noise, data.gen)
            else:
                xi_n, xt_n = xi_f, xt_f
            keep: dict[str, torch.Tensor] = {}
            og_rb = og_r.rows(b_r) if og_r is not None else None
            d = forgetmi_losses(ul, og, xi_f, xt_f, xi_n, xt_n, xi_r, xt_r, keep, og_rb)
            loss = forgetmi_objective(d, weights, c.use_noise, c.margin, normalised=True)
            loss = ext.add(loss, ul, keep, (y_f, y_r, b_r))
            last = {k: v.detach() for k, v in d.items()}
            if stopped := stop.step(ul, loss, opt, sched):
                break
    stop.finish(ul)
    info = {f"d_{k}": float(v) for k, v in last.items()}
    return _done(
        ul,
        t0,
        dev,
        steps=steps,
        noise_std=noise_std,
        target_loss=target,
        target_auc=stop.target_auc,
        guard_stop=float(stop.reason == "guard"),
        kept_step=stop.best_step if stop.mode == "best" else steps,
        **info,
    )


def _forget_mi_params(
    orig: TrainedModel, feats: Features, seed: int, device: str, **params: Any
) -> Unlearned:
    """``forget_mi`` called with stage parameters (as every method in ``METHODS`` is)."""
    return forget_mi(orig, feats, seed, device, ForgetMIConfig.from_params(params))


# ---------------------------------------------------------------- MultiDelete
@dataclass(frozen=True)
class MultiDeleteConfig:
    """MultiDelete's hyperparameters (the unlearn stage's parameters, as for Forget-MI).

    The field names are the stage's parameter names; the defaults are the method's own.
    """

    lr: float = 1e-3
    epochs: int = 5
    batch_size: int = 32
    alpha: float = 1.0
    beta: float = 1.0
    unimodal: str = "both"
    retain_ratio: int = 2
    early_stop: str | bool = False
    auc_gap: float = 0.0
    max_val_drop: float = 1.0
    w_ce: float = 0.0
    decouple: str = "text"
    val_weight: float = 3.0
    patience: int = 10
    steps: int = 0
    w_kl: float = 0.0
    step_share: float = 0.0
    w_fm: float = 0.0
    forget_passes: float = 0.0

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> MultiDeleteConfig:
        """A configuration from stage parameters (``TypeError`` naming unknown ones)."""
        _check_params(cls, "multidelete", params)
        return cls(**params)


def multidelete(
    orig: TrainedModel,
    feats: Features,
    seed: int,
    device: str,
    config: MultiDeleteConfig | None = None,
) -> Unlearned:
    """MultiDelete: ``L = L_MD + alpha * L_MKR + beta * L_UKR``, AdamW + cosine schedule.

    One step per forget batch, paired with a random retain batch ``retain_ratio`` times larger.
    ``early_stop`` / ``auc_gap`` / ``max_val_drop`` / ``w_ce`` as in ``forget_mi``;
    ``decouple`` picks which side is shuffled in the decoupling target (see
    ``multidelete_losses``; ``"text"`` is the paper's). ``steps`` as in ``forget_mi``.
    ``config`` (default ``MultiDeleteConfig()``) holds the hyperparameters.
    """
    c = config if config is not None else MultiDeleteConfig()
    t0 = _clock()
    og, ul, dev = _start(orig, device, seed)
    data = _Data(feats, dev, seed)
    stop = Stopper(c.early_stop, og, data, c.auc_gap, c.max_val_drop, c.val_weight, c.patience)
    unseen = unseen_margins(og, data, stop.og_val_logits)
    opt = _adamw(ul.parameters(), c.lr)
    budget = _budget(orig, data, c.steps, c.step_share)
    bf = _forget_batch(data, c.batch_size, budget, c.forget_passes)
    epochs, planned = _plan(data, bf, c.epochs, budget)
    sched = _schedule(opt, "cosine", planned)
    ul.eval()
    rb = c.retain_ratio * c.batch_size
    # the original's outputs on clean forget and retain rows never change: once per run
    og_f = _frozen_part(og, data.f, planned * bf)
    og_r = _frozen_part(og, data.r, planned * rb)
    ext = _Extensions(og, og_r, unseen, c.w_ce, c.w_kl, c.w_fm, c.batch_size, c.forget_passes)
    last: dict[str, torch.Tensor] = {}
    steps = 0
    stopped = stop.start(ul)
    for _ in range(epochs):
        if stopped:
            break
        for b_f in data.batch_indices(data.f, bf):
            if steps >= planned:
                stopped = True
                break
            steps += 1
            xi_f, xt_f, y_f = _rows(data.f, b_f)
            b_r = data.sample_indices(data.r, rb)
            xi_r, xt_r, y_r = _rows(data.r, b_r)
            keep: dict[str, torch.Tensor] = {}
            d = multidelete_losses(
                ul,
                og,
                xi_f,
                xt_f,
                xi_r,
                xt_r,
                c.unimodal,
                c.decouple,
                keep,
                (
                    og_f.rows(b_f) if og_f is not None else None,
                    og_r.rows(b_r) if og_r is not None else None,
                ),
            )
            loss = d["md"] + c.alpha * d["mkr"] + c.beta * d["ukr"]
            loss = ext.add(loss, ul, keep, (y_f, y_r, b_r))
            last = {k: v.detach() for k, v in d.items()}
            if stopped := stop.step(ul, loss, opt, sched):
                break
    stop.finish(ul)
    info = {f"loss_{k}": float(v) for k, v in last.items()}
    return _done(
        ul,
        t0,
        dev,
        steps=steps,
        target_loss=stop.target_loss,
        target_auc=stop.target_auc,
        guard_stop=float(stop.reason == "guard"),
        kept_step=stop.best_step if stop.mode == "best" else steps,
        **info,
    )


def _multidelete_params(
    orig: TrainedModel, feats: Features, seed: int, device: str, **params: Any
) -> Unlearned:
    """``multidelete`` called with stage parameters (as every method in ``METHODS`` is)."""
    return multidelete(orig, feats, seed, device, MultiDeleteConfig.from_params(params))


# ---------------------------------------------------------------- baselines
def _finetune_on_retain(
    ul: FusionNet, data: _Data, params: list[torch.nn.Parameter], lr: float, epochs: int, bs: int
) -> None:
    opt = _adamw(params, lr)
    ul.train()
    for _ in range(epochs):
        for xi, xt, y in data.batches(data.r, bs):
            loss = F.cross_entropy(ul(xi, xt), y)
            opt.zero_grad()
            loss.backward()
            opt.step()


def finetune(
    orig: TrainedModel,
    feats: Features,
    seed: int,
    device: str,
    lr: float = 1e-3,
    epochs: int = 2,
    batch_size: int = 64,
) -> Unlearned:
    """Fine-tune: continue training on D_r only (catastrophic forgetting of D_f)."""
    t0 = _clock()
    _og, ul, dev = _start(orig, device, seed)
    data = _Data(feats, dev, seed)
    _finetune_on_retain(ul, data, list(ul.parameters()), lr, epochs, batch_size)
    return _done(ul, t0, dev)


def neggrad_plus(
    orig: TrainedModel,
    feats: Features,
    seed: int,
    device: str,
    lr: float = 1e-3,
    epochs: int = 5,
    batch_size: int = 32,
    forget_weight: float = 0.3,
    ascent_cap: float = 3.0,
    retain_ratio: int = 2,
) -> Unlearned:
    """NegGrad+: ``L = (1 - w) * CE(D_r) - w * min(CE(D_f), cap)``, per forget batch.

    The cap keeps gradient ascent from running away once the forget loss is already high.
    """
    t0 = _clock()
    _og, ul, dev = _start(orig, device, seed)
    data = _Data(feats, dev, seed)
    opt = _adamw(ul.parameters(), lr)
    ul.train()
    for _ in range(epochs):
        for xi_f, xt_f, y_f in data.batches(data.f, batch_size):
            xi_r, xt_r, y_r = data.sample(data.r, retain_ratio * batch_size)
            lf = torch.clamp(F.cross_entropy(ul(xi_f, xt_f), y_f), max=ascent_cap)
            lr_ = F.cross_entropy(ul(xi_r, xt_r), y_r)
            loss = (1.0 - forget_weight) * lr_ - forget_weight * lf
            opt.zero_grad()
            loss.backward()
            opt.step()
    return _done(ul, t0, dev)


@dataclass(frozen=True)
class ScrubConfig:
    """SCRUB's hyperparameters (the unlearn stage's parameters, as for Forget-MI).

    The field names are the stage's parameter names; the defaults are the method's own.
    """

    lr: float = 5e-4
    epochs: int = 3
    max_steps: int = 2
    batch_size: int = 64
    alpha: float = 1.0
    gamma: float = 1.0
    temperature: float = 2.0

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ScrubConfig:
        """A configuration from stage parameters (``TypeError`` naming unknown ones)."""
        _check_params(cls, "scrub", params)
        return cls(**params)


def scrub(
    orig: TrainedModel,
    feats: Features,
    seed: int,
    device: str,
    config: ScrubConfig | None = None,
) -> Unlearned:
    """SCRUB: the student (copy) moves away from the teacher (original) on D_f and stays close
    on D_r.

    Max step (first ``max_steps`` epochs): ``L = -KL(p_og || p_ul)`` on forget batches.
    Min step (every epoch): ``L = alpha * KL(p_og || p_ul) + gamma * CE`` on retain batches.
    ``config`` (default ``ScrubConfig()``) holds the hyperparameters.
    """
    c = config if config is not None else ScrubConfig()
    t0 = _clock()
    og, ul, dev = _start(orig, device, seed)
    data = _Data(feats, dev, seed)
    opt = _adamw(ul.parameters(), c.lr)
    ul.train()
    for ep in range(c.epochs):
        if ep < c.max_steps:
            for xi, xt, _y in data.batches(data.f, c.batch_size):
                with torch.no_grad():
                    tl = og(xi, xt)
                loss = -scrub_kl(ul(xi, xt), tl, c.temperature)
                opt.zero_grad()
                loss.backward()
                opt.step()
        for xi, xt, y in data.batches(data.r, c.batch_size):
            with torch.no_grad():
                tl = og(xi, xt)
            sl = ul(xi, xt)
            loss = c.alpha * scrub_kl(sl, tl, c.temperature) + c.gamma * F.cross_entropy(sl, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return _done(ul, t0, dev)


def _scrub_params(
    orig: TrainedModel, feats: Features, seed: int, device: str, **params: Any
) -> Unlearned:
    """``scrub`` called with stage parameters (as every method in ``METHODS`` is)."""
    return scrub(orig, feats, seed, device, ScrubConfig.from_params(params))


def _last_k_params(ul: FusionNet, k: int) -> list[torch.nn.Parameter]:
    groups = layer_groups(ul)
    if not 1 <= k <= len(groups):
        raise ValueError(f"k must be in [1, {len(groups)}], got {k}")
    return [p for g in groups[:k] for m in g for p in m.parameters()]


def cf_k(
    orig: TrainedModel,
    feats: Features,
    seed: int,
    device: str,
    k: int = 2,
    lr: float = 1e-3,
    epochs: int = 2,
    batch_size: int = 64,
) -> Unlearned:
    """CF-k (catastrophic forgetting of the last k layer groups): fine-tune only them on D_r."""
    t0 = _clock()
    _og, ul, dev = _start(orig, device, seed)
    data = _Data(feats, dev, seed)
    params = _last_k_params(ul, k)
    _finetune_on_retain(ul, data, params, lr, epochs, batch_size)
    return _done(ul, t0, dev)


def eu_k(
    orig: TrainedModel,
    feats: Features,
    seed: int,
    device: str,
    k: int = 2,
    lr: float = 1e-3,
    epochs: int = 4,
    batch_size: int = 64,
) -> Unlearned:
    """EU-k (exact unlearning of the last k layer groups): re-initialise them, retrain on D_r."""
    t0 = _clock()
    _og, ul, dev = _start(orig, device, seed)
    data = _Data(feats, dev, seed)
    params = _last_k_params(ul, k)
    for g in layer_groups(ul)[:k]:
        for m in g:
            if isinstance(m, torch.nn.Linear):
                m.reset_parameters()
    _finetune_on_retain(ul, data, params, lr, epochs, batch_size)
    return _done(ul, t0, dev)


METHODS: dict[str, Callable[..., Unlearned]] = {
    "forget-mi": _forget_mi_params,
    "multidelete": _multidelete_params,
    "finetune": finetune,
    "neggrad-plus": neggrad_plus,
    "scrub": _scrub_params,
    "cf-k": cf_k,
    "eu-k": eu_k,
}


_STOPPED_INFO = ("steps", "target_loss", "target_auc", "guard_stop", "kept_step")
# the numeric ``Unlearned.info`` keys each method reports (the evaluate stage reports each as
# ``info_<key>``): Forget-MI's and MultiDelete's last-step loss terms, their stopping figures
INFO_KEYS: dict[str, tuple[str, ...]] = {
    "forget-mi": (
        *_STOPPED_INFO[:1],
        "noise_std",
        *_STOPPED_INFO[1:],
        *(f"d_{k}" for k in FORGETMI_TERMS),
    ),
    "multidelete": (*_STOPPED_INFO, "loss_md", "loss_mkr", "loss_ukr"),
    "finetune": (),
    "neggrad-plus": (),
    "scrub": (),
    "cf-k": (),
    "eu-k": (),
    "retrain": (),
}


def run_method(
    method: str, orig: TrainedModel, feats: Features, seed: int, device: str, **params: Any
) -> Unlearned:
    if method not in METHODS:
        raise ValueError(f"unknown unlearning method {method!r}; choose one of {sorted(METHODS)}")
    return METHODS[method](orig, feats, seed, device, **params)
