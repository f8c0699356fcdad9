"""Reference models and the per-example evaluations built on them.

Two ensembles are trained once per split (in the train stage, so they are cached with it and
shared by every method and trial), with exactly the original model's recipe (architecture,
AdamW, epochs, batch size), many models at once (``torch.func.vmap`` over stacked weights;
AdamW is element-wise, so this is K independent trainings):

* the **retrained ensemble**: ``n_retrains`` models on the retain set with different training
  seeds. It defines the pass bands (mean +- 2 sd per metric), the reference outputs of the
  forgetting score and the divergence of one retraining to another;
* the **LiRA reference models** (Carlini et al., 2022): ``K`` models, in complementary pairs,
  each trained on a random half of the candidate pool (every row of the split), so that every
  row is IN exactly ``K/2`` of them and OUT of the rest.

LiRA. For a model ``f`` and row ``(x, y)``, ``phi = z_y - z_{1-y}`` (the logit margin; for a
two-class softmax it equals ``log(p_y / (1 - p_y))``). Per row, ``mu_in`` / ``mu_out`` = mean of
``phi`` over the IN / OUT reference models; one global variance each (pooled over rows, the
stable choice with fewer than 64 models). Online score = ``log N(phi; mu_in, s_in) - log
N(phi; mu_out, s_out)``; where a compared row has fewer than ``MIN_IN`` IN models, every row
of that comparison gets the offline score ``(phi - mu_out) / s_out`` (a one-sided test against
the OUT Gaussian alone). Reported: ROC AUC and TPR at 1% and 0.1% FPR, forget rows vs test
rows (``lira_forget_*``) and retain rows vs test rows (``lira_retain_*``). On the original
model forget rows are members; a model that never saw them scores about 0.5.

Forgetting score (after the NeurIPS 2023 machine-unlearning challenge). ``N`` runs of the
method (different unlearning seeds, same original model) and the ``E`` retrained models give,
per forget row, two samples of ``phi``. Every threshold (either direction) on them gives a
false-positive rate (retrained output called "unlearned") and a false-negative rate, each
estimated as ``(k + 1/2) / (n + 1)`` so that none is zero;
``eps_x = max_t max(log((1 - delta - FPR) / FNR), log((1 - delta - FNR) / FPR))``, with
``delta = 0.01``. Each row scores ``2 ** -floor(eps_x / 0.5)`` (buckets of width 0.5); the
mean over rows times ``min(1, retain accuracy / retrained's)`` times ``min(1, test accuracy /
retrained's)`` is the score (1 = indistinguishable from retraining). With small ``N`` the
estimate saturates (``eps`` cannot exceed about ``log(2N + 1)``) and even retraining against
retraining scores below 1: compare with the ``retrain`` method's score at the same ``N``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.unlearning.data import Split
from pipelines.unlearning.model import FusionNet, ModelConfig, TrainConfig, resolve_device

__all__ = [
    "LIRA_METRICS",
    "MIN_IN",
    "References",
    "auc_np",
    "band_stats",
    "divergence",
    "forgetting_score",
    "js_divergence",
    "lira_metrics",
    "lira_scores",
    "margins",
    "tpr_at_fpr",
    "train_ensemble",
]

MIN_IN = 4  # fewer IN reference models than this for a compared row -> offline LiRA
_FPRS = ((0.01, "1pct"), (0.001, "01pct"))
LIRA_METRICS: tuple[str, ...] = tuple(
    f"lira_{side}_{m}"
    for side in ("forget", "retain")
    for m in ("auc", *(f"tpr_at_{name}_fpr" for _, name in _FPRS))
)


def margins(p_or_logits: np.ndarray, y: np.ndarray, logits: bool = False) -> np.ndarray:
    """``phi = z_y - z_{1-y}`` per row (from logits, or from probabilities via log-odds)."""
    a = np.asarray(p_or_logits, dtype=np.float64)
    z = a if logits else np.log(np.clip(a, 1e-12, 1.0))
    idx = np.arange(len(y))
    zy = z[idx, y]
    zo = z[idx, 1 - y]
    out: np.ndarray = zy - zo
    return out


def train_ensemble(
    cfg: ModelConfig,
    text: np.ndarray,
    image: np.ndarray,
    y: np.ndarray,
    rows: Sequence[np.ndarray],
    train: TrainConfig,
    seeds: Sequence[int],
    device: str = "cpu",
) -> np.ndarray:
    """Train one model per ``rows[k]`` (all the same length) with seed ``seeds[k]``, all at
    once; return their eval-mode logits on EVERY row, ``K x n x C`` (float32).

    Each model: fresh ``FusionNet(cfg)`` initialised under ``torch.manual_seed(seeds[k])``,
    AdamW(lr, weight decay), ``epochs`` passes over its own rows in its own random order,
    mini-batches of ``batch_size``, dropout active while training: ``train_model``'s recipe.
    """
    from torch.func import functional_call, stack_module_state, vmap

    k = len(rows)
    if k == 0:
        return np.zeros((0, len(y), cfg.n_classes), dtype=np.float32)
    m = len(rows[0])
    if any(len(r) != m for r in rows):
        raise ValueError("every ensemble member needs the same number of rows")
    dev = resolve_device(device)
    models = []
    for s in seeds:
        torch.manual_seed(int(s))
        models.append(FusionNet(cfg).to(dev))
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def call(p: dict[str, Any], b: dict[str, Any], xi: torch.Tensor, xt: torch.Tensor) -> Any:
        return functional_call(base, (p, b), (xi, xt))

    xi_all = torch.as_tensor(image, device=dev)
    xt_all = torch.as_tensor(text, device=dev)
    y_all = torch.as_tensor(y, device=dev)
    idx = torch.as_tensor(np.stack(rows), device=dev)  # K x m
    opt = torch.optim.AdamW(params.values(), lr=train.lr, weight_decay=train.weight_decay)
    gen = torch.Generator().manual_seed(int(seeds[0]) * 7 + 11)
    base.train()
    fwd = vmap(call, randomness="different")
    for _ in range(train.epochs):
        perm = torch.argsort(torch.rand(k, m, generator=gen), dim=1).to(dev)
        order = torch.gather(idx, 1, perm)
        for s in range(0, m, train.batch_size):
            b = order[:, s : s + train.batch_size]  # K x B
            logits = fwd(params, buffers, xi_all[b], xt_all[b])  # K x B x C
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y_all[b].reshape(-1))
            opt.zero_grad()
            (loss * k).backward()  # the sum of the K models' mean losses
            opt.step()
    base.eval()
    with torch.no_grad():
        ev = vmap(call, in_dims=(0, 0, None, None))
        out = ev(params, buffers, xi_all, xt_all)
    return np.asarray(out.detach().cpu().numpy(), dtype=np.float32)


@dataclass
class References:
    """LiRA reference outputs: ``phi`` of every reference model on every row, and membership.

    Attributes:
        phi: ``K x n`` logit margins.
        member: ``K x n`` booleans, True where the row was in that model's training half.
    """

    phi: np.ndarray
    member: np.ndarray

    @classmethod
    def train(
        cls,
        cfg: ModelConfig,
        text: np.ndarray,
        image: np.ndarray,
        y: np.ndarray,
        pool: np.ndarray,
        k: int,
        train: TrainConfig,
        seed: int,
        device: str = "cpu",
    ) -> References:
        """``k`` models (rounded up to even) on complementary random halves of ``pool``."""
        n = len(y)
        pairs = max(1, (k + 1) // 2)
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 65537]))
        half = len(pool) // 2
        rows, member = [], np.zeros((2 * pairs, n), dtype=bool)
        for j in range(pairs):
            perm = rng.permutation(pool)
            a, b = np.sort(perm[:half]), np.sort(perm[half : 2 * half])
            rows += [a, b]
            member[2 * j, a] = True
            member[2 * j + 1, b] = True
        seeds = [int(seed) * 1009 + 50_000 + j for j in range(2 * pairs)]
        logits = train_ensemble(cfg, text, image, y, rows, train, seeds, device)
        phi = np.stack([margins(lg, y, logits=True) for lg in logits])
        return cls(phi=phi.astype(np.float32), member=member)


def _pooled(phi: np.ndarray, mask: np.ndarray, mu: np.ndarray) -> float:
    d = (phi - mu[None, :])[mask]
    v = float(np.mean(d**2)) if d.size else 1.0
    return math.sqrt(max(v, 1e-6))


def lira_scores(target_phi: np.ndarray, ref: References, rows: np.ndarray) -> np.ndarray:
    """Membership scores (higher = member) of ``rows`` for a model with margins ``target_phi``.

    Online likelihood ratio with global variances; offline (OUT Gaussian only) when some row
    has fewer than ``MIN_IN`` IN models (see the module docstring).
    """
    phi, mem = ref.phi[:, rows].astype(np.float64), ref.member[:, rows]
    n_in, n_out = mem.sum(axis=0), (~mem).sum(axis=0)
    if (n_out < 1).any():
        raise ValueError("every compared row needs at least one OUT reference model")
    mu_out = np.where(~mem, phi, 0.0).sum(axis=0) / np.maximum(n_out, 1)
    s_out = _pooled(phi, ~mem, mu_out)
    t = np.asarray(target_phi, dtype=np.float64)[rows]
    if (n_in < MIN_IN).any():
        out: np.ndarray = (t - mu_out) / s_out
        return out
    mu_in = np.where(mem, phi, 0.0).sum(axis=0) / n_in
    s_in = _pooled(phi, mem, mu_in)
    log_in = -0.5 * ((t - mu_in) / s_in) ** 2 - math.log(s_in)
    log_out = -0.5 * ((t - mu_out) / s_out) ** 2 - math.log(s_out)
    res: np.ndarray = log_in - log_out
    return res


def auc_np(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC of scores ``pos`` (label 1) vs ``neg`` (label 0), ties counted half."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    s = np.concatenate([pos, neg])
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    ranks[order] = np.arange(1, len(s) + 1)
    # average ranks of ties
    ss = s[order]
    i = 0
    while i < len(ss):
        j = i
        while j + 1 < len(ss) and ss[j + 1] == ss[i]:
            j += 1
        if j > i:
            ranks[order[i : j + 1]] = (i + j + 2) / 2.0
        i = j + 1
    n_p = len(pos)
    return float((ranks[:n_p].sum() - n_p * (n_p + 1) / 2) / (n_p * len(neg)))


def tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float) -> float:
    """Largest TPR over thresholds whose FPR (fraction of ``neg`` at or above) is <= ``fpr``."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    neg_sorted = np.sort(neg)[::-1]
    k = math.floor(fpr * len(neg))  # at most k negatives may be called members
    thr = neg_sorted[k] if k < len(neg) else -np.inf  # strictly above the (k+1)-th largest
    return float(np.mean(pos > thr))


def lira_metrics(target_phi: np.ndarray, ref: References, split: Split) -> dict[str, float]:
    """``lira_{forget,retain}_{auc,tpr_at_1pct_fpr,tpr_at_01pct_fpr}`` of one model."""
    out: dict[str, float] = {}
    for side, rows in (("forget", split.forget), ("retain", split.retain)):
        both = np.concatenate([rows, split.test])
        s = lira_scores(target_phi, ref, both)
        pos, neg = s[: len(rows)], s[len(rows) :]
        out[f"lira_{side}_auc"] = auc_np(pos, neg)
        for fpr, name in _FPRS:
            out[f"lira_{side}_tpr_at_{name}_fpr"] = tpr_at_fpr(pos, neg, fpr)
    return out


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per-row Jensen-Shannon divergence (nats) between probability rows ``p`` and ``q``."""
    p = np.clip(p, 1e-12, 1.0)
    q = np.clip(q, 1e-12, 1.0)
    m = 0.5 * (p + q)
    out: np.ndarray = 0.5 * (p * np.log(p / m)).sum(axis=1) + 0.5 * (q * np.log(q / m)).sum(axis=1)
    return out


def divergence(p: np.ndarray, others: np.ndarray, rows: np.ndarray) -> float:
    """Mean over ``others`` (``E x n x C``) and ``rows`` of JS(p, other)."""
    if len(others) == 0:
        return float("nan")
    return float(np.mean([js_divergence(p[rows], o[rows]).mean() for o in others]))


def band_stats(
    values: Sequence[Mapping[str, float]], original: Mapping[str, float], metrics: Sequence[str]
) -> dict[str, float]:
    """``<m>_band_{low,high,mean,sd,power}`` over an ensemble's metric values (see verdict)."""
    out: dict[str, float] = {}
    for m in metrics:
        v = np.array([float(x.get(m, np.nan)) for x in values], dtype=float)
        v = v[np.isfinite(v)]
        mean = float(v.mean()) if len(v) else float("nan")
        sd = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
        out[f"{m}_band_mean"] = mean
        out[f"{m}_band_sd"] = sd
        out[f"{m}_band_low"] = mean - 2.0 * sd
        out[f"{m}_band_high"] = mean + 2.0 * sd
        og = float(original.get(m, np.nan))
        out[f"{m}_band_power"] = abs(og - mean) / max(2.0 * sd, 1e-12) if sd == sd else math.nan
    return out


def _eps(u: np.ndarray, r: np.ndarray, delta: float) -> float:
    """Per-example epsilon from ``u`` (unlearned outputs) and ``r`` (retrained outputs)."""
    n_u, n_r = len(u), len(r)
    best = 0.0
    thr = np.unique(np.concatenate([u, r]))
    for sign in (1.0, -1.0):  # call "unlearned" above (or below) the threshold
        uu, rr = sign * u, sign * r
        for t in sign * thr:
            fpr = (np.sum(rr >= t) + 0.5) / (n_r + 1)
            fnr = (np.sum(uu < t) + 0.5) / (n_u + 1)
            for a, b in ((fpr, fnr), (fnr, fpr)):
                num = 1.0 - delta - a
                if num > 0:
                    best = max(best, math.log(num / b))
    return best


def forgetting_score(
    phi_unlearned: np.ndarray,
    phi_retrained: np.ndarray,
    acc_unlearned: tuple[float, float],
    acc_retrained: tuple[float, float],
    delta: float = 0.01,
    bucket: float = 0.5,
) -> dict[str, float]:
    """The challenge-style score (module docstring) from ``N x F`` and ``E x F`` margins.

    ``acc_*`` = (retain accuracy, test accuracy), averaged over the runs / the retrains.
    Returns ``forgetting_score``, ``forgetting_eps`` (mean epsilon), ``forgetting_n``.
    """
    u = np.asarray(phi_unlearned, dtype=np.float64)
    r = np.asarray(phi_retrained, dtype=np.float64)
    eps = np.array([_eps(u[:, j], r[:, j], delta) for j in range(u.shape[1])])
    per = np.power(2.0, -np.floor(eps / bucket))
    ratio = 1.0
    for a, b in zip(acc_unlearned, acc_retrained, strict=True):
        ratio *= min(1.0, a / b) if b > 0 else 1.0
    return {
        "forgetting_score": float(per.mean() * ratio) if len(per) else float("nan"),
        "forgetting_eps": float(eps.mean()) if len(eps) else float("nan"),
        "forgetting_n": float(u.shape[0]),
    }
