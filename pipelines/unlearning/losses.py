"""Unlearning losses (Forget-MI, MultiDelete, SCRUB) and the forget-input perturbation.

Notation: ``ul`` = model being unlearned, ``og`` = frozen original, ``f`` = forget batch,
``r`` = retain batch, ``f~`` = perturbed copy of ``f``; ``[a; b]`` = concatenation along features;
``G`` = the model's own fusion gate (``FusionNet.fuse``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F

from pipelines.unlearning.model import FusionNet

__all__ = [
    "FORGETMI_TERMS",
    "Frozen",
    "batch_distance",
    "draw_noise",
    "forgetmi_losses",
    "forgetmi_objective",
    "frozen",
    "multidelete_losses",
    "normalise_weights",
    "perturb",
    "scrub_kl",
]

FORGETMI_TERMS = ("uu", "ur", "mu", "mr")


def batch_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``d(a, b) = (1/B) sum_j ||a_j - b_j||_2`` for ``B x h`` tensors (a scalar).

    Computed as ``sqrt(sum_sq + 1e-12)`` so the gradient is finite at ``a == b``; it is (near)
    zero there, which is why a push-away loss started from an exact copy does not move.
    """
    return torch.sqrt(((a - b) ** 2).sum(dim=1) + 1e-12).mean()


def draw_noise(
    shape_i: torch.Size,
    shape_t: torch.Size,
    text_drop: float,
    gen: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The random part of ``perturb``, on the CPU and in its order: standard normal draws
    ``(z_i, z_t)`` of the two shapes, then (``text_drop > 0``) the text side's keep mask
    (``U(0, 1) >= text_drop``, else ``None``)."""
    zi = torch.randn(shape_i, generator=gen, device="cpu")
    zt = torch.randn(shape_t, generator=gen, device="cpu")
    keep = torch.rand(shape_t, generator=gen, device="cpu") >= text_drop if text_drop > 0 else None
    return zi, zt, keep


def perturb(
    xi: torch.Tensor,
    xt: torch.Tensor,
    noise_mean: float,
    noise_std: float,
    text_drop: float,
    gen: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forget-MI's input perturbation, for feature-vector modalities.

    Image side: ``x~_i = x_i + N(mean, std^2)`` (features are standardised, so ``std`` is in
    units of a feature's training spread). Text side: the same Gaussian noise, then each
    feature is zeroed (= set to its training mean, the analogue of keyword masking / word
    deletion) with probability ``text_drop``. The draws are ``draw_noise``'s.
    """
    dev = xi.device
    zi, zt, keep = draw_noise(xi.shape, xt.shape, text_drop, gen)
    ni = xi + noise_mean + noise_std * zi.to(dev)
    nt = xt + noise_mean + noise_std * zt.to(dev)
    if keep is not None:
        nt = nt * keep.to(dev).to(nt.dtype)
    return ni, nt


class Frozen(NamedTuple):
    """The frozen original's unimodal embeddings ``(zi, zt)`` and fused representation ``h`` of
    a set of rows (``frozen``); ``rows(idx)`` selects rows. The original never changes during
    unlearning and is run in eval mode, so its outputs on a fixed row can be computed once and
    indexed per step instead of recomputed in every step's forward pass."""

    zi: torch.Tensor
    zt: torch.Tensor
    h: torch.Tensor

    def rows(self, idx: torch.Tensor) -> Frozen:
        return Frozen(
            self.zi.index_select(0, idx), self.zt.index_select(0, idx), self.h.index_select(0, idx)
        )


@torch.no_grad()
def frozen(og: FusionNet, xi: torch.Tensor, xt: torch.Tensor) -> Frozen:
    """``og``'s ``Frozen`` outputs on rows ``(xi, xt)`` (``og`` should be in eval mode)."""
    zi, zt = og.encode(xi, xt)
    return Frozen(zi, zt, og.fuse(zi, zt))


def normalise_weights(w: Mapping[str, float]) -> dict[str, float]:
    """Weights divided by their sum (all zero -> equal weights)."""
    tot = sum(max(0.0, float(v)) for v in w.values())
    if tot <= 0:
        return {k: 1.0 / len(w) for k in w}
    return {k: max(0.0, float(v)) / tot for k, v in w.items()}


def _encode_split(
    m: FusionNet, xi_a: torch.Tensor, xt_a: torch.Tensor, xi_b: torch.Tensor, xt_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``m.encode`` of rows ``a`` and ``b`` in one forward pass: ``(zi_a, zt_a, zi_b, zt_b)``."""
    n = xi_a.shape[0]
    zi, zt = m.encode(torch.cat([xi_a, xi_b]), torch.cat([xt_a, xt_b]))
    return zi[:n], zt[:n], zi[n:], zt[n:]


def forgetmi_losses(
    ul: FusionNet,
    og: FusionNet,
    xi_f: torch.Tensor,
    xt_f: torch.Tensor,
    xi_fn: torch.Tensor,
    xt_fn: torch.Tensor,
    xi_r: torch.Tensor,
    xt_r: torch.Tensor,
    keep: dict[str, torch.Tensor] | None = None,
    og_r: Frozen | None = None,
) -> dict[str, torch.Tensor]:
    """The four Forget-MI distances (unsigned):

    * ``uu`` = d([F_ul(I_f); F_ul(T_f)], [F_og(I~_f); F_og(T~_f)])
    * ``mu`` = d(G_ul(F_ul(I_f), F_ul(T_f)), G_og(F_og(I~_f), F_og(T~_f)))
    * ``ur`` = d([F_ul(I_r); F_ul(T_r)], [F_og(I_r); F_og(T_r)])
    * ``mr`` = d(G_ul(F_ul(I_r), F_ul(T_r)), G_og(F_og(I_r), F_og(T_r)))

    Without noise pass ``xi_fn = xi_f`` and ``xt_fn = xt_f``. ``keep``, if given, receives
    ``h_r`` = G_ul(F_ul(I_r), F_ul(T_r)), ``h_f`` = G_ul(F_ul(I_f), F_ul(T_f)), both stacked as
    ``h`` = ``[h_f; h_r]`` (rows), and ``og_h_r`` = G_og(F_og(I_r), F_og(T_r)) (so a caller
    can add head losses without a second forward pass).
    ``og_r``, if given, is ``og``'s ``Frozen`` outputs on the retain rows (computed once for
    the whole retain set and indexed), so ``og`` runs only on the perturbed forget rows.
    """
    nf = xi_f.shape[0]
    # one pass over forget + retain rows per model (eval mode: rows are independent)
    zi, zt = ul.encode(torch.cat([xi_f, xi_r]), torch.cat([xt_f, xt_r]))
    zi_f, zt_f, zi_r, zt_r = zi[:nf], zt[:nf], zi[nf:], zt[nf:]
    with torch.no_grad():
        if og_r is None:
            oi_f, ot_f, oi_r, ot_r = _encode_split(og, xi_fn, xt_fn, xi_r, xt_r)
            oh = og.fuse(torch.cat([oi_f, oi_r]), torch.cat([ot_f, ot_r]))
            oh_f, oh_r = oh[:nf], oh[nf:]
        else:
            oi_f, ot_f, oh_f = frozen(og, xi_fn, xt_fn)
            oi_r, ot_r, oh_r = og_r
    h = ul.fuse(zi, zt)
    h_f, h_r = h[:nf], h[nf:]
    if keep is not None:
        keep["h"], keep["h_r"], keep["h_f"] = h, h_r, h_f
        keep["og_h_r"] = oh_r
    return {
        "uu": batch_distance(torch.cat([zi_f, zt_f], 1), torch.cat([oi_f, ot_f], 1)),
        "mu": batch_distance(h_f, oh_f),
        "ur": batch_distance(torch.cat([zi_r, zt_r], 1), torch.cat([oi_r, ot_r], 1)),
        "mr": batch_distance(h_r, oh_r),
    }


def forgetmi_objective(
    d: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    use_noise: bool,
    margin: float,
    normalised: bool = False,
) -> torch.Tensor:
    """``L = a*L_UR + b*L_UU + th*L_MU + g*L_MR`` with normalised weights (``normalised``:
    ``weights`` already are ``normalise_weights``' output, computed once per run).

    ``L_UU = s * d_uu`` and ``L_MU = s * d_mu`` with ``s = +1`` with noise (pull toward the
    original's embeddings of perturbed inputs) and ``s = -1`` without (push away). The push-away
    distances are capped by the margin ``m``: ``L_UU = -min(d_uu, m)``, so the objective is
    bounded below and the retention terms ``L_UR = d_ur``, ``L_MR = d_mr`` keep the rest of the
    model in place once the forget embeddings are ``m`` away.
    """
    w = (
        weights
        if normalised
        else normalise_weights({k: weights.get(k, 0.0) for k in FORGETMI_TERMS})
    )
    if use_noise:
        uu, mu = d["uu"], d["mu"]
    else:
        uu = -torch.clamp(d["uu"], max=margin)
        mu = -torch.clamp(d["mu"], max=margin)
    return w["ur"] * d["ur"] + w["uu"] * uu + w["mu"] * mu + w["mr"] * d["mr"]


def multidelete_losses(
    ul: FusionNet,
    og: FusionNet,
    xi_f: torch.Tensor,
    xt_f: torch.Tensor,
    xi_r: torch.Tensor,
    xt_r: torch.Tensor,
    unimodal: str = "both",
    decouple: str = "text",
    keep: dict[str, torch.Tensor] | None = None,
    og_fr: tuple[Frozen | None, Frozen | None] = (None, None),
) -> dict[str, torch.Tensor]:
    """MultiDelete's three losses (``h`` = fused representation, ``pi`` = roll of the batch):

    * ``md``  = MSE(h_ul(I_f, T_f), h_og(I_f, T_pi(f)))   modality decoupling (``decouple =
      "text"``, the paper's: texts shuffled); ``"image"`` shuffles the image side instead,
      ``MSE(h_ul(I_f, T_f), h_og(I_pi(f), T_f))``; ``"both"`` averages the two. Where the image
      side carries most of the signal (as on Open-i, age and acquisition metadata), a pair
      with the same image and another text is still recognised, so the paper's target leaves
      the image side's memorisation in place.
    * ``mkr`` = MSE(h_ul(I_r, T_r), h_og(I_r, T_r))       multimodal knowledge retention
    * ``ukr`` = MSE(enc_ul(X_f), enc_og(X_f))             unimodal knowledge retention, on the
      image side, the text side or both (``unimodal``)

    Rolling by one (rather than a random shuffle) guarantees every forget pair is mismatched.
    ``keep``, if given, receives ``h_r`` = h_ul(I_r, T_r), ``h_f`` = h_ul(I_f, T_f), both
    stacked as ``h`` = ``[h_f; h_r]``, and ``og_h_r`` = h_og(I_r, T_r). ``og_fr`` = ``(og_f,
    og_r)``: ``og``'s ``Frozen`` outputs on the forget / retain rows where given (computed once
    per run and indexed), in place of a forward pass of ``og`` over them.
    """
    if decouple not in ("text", "image", "both"):
        raise ValueError(f"decouple must be 'text', 'image' or 'both', got {decouple!r}")
    b = xi_f.shape[0]
    perm = torch.roll(torch.arange(b, device=xi_f.device), 1) if b > 1 else None
    zi, zt = ul.encode(torch.cat([xi_f, xi_r]), torch.cat([xt_f, xt_r]))
    zi_f, zt_f = zi[:b], zt[:b]
    og_f, og_r = og_fr
    with torch.no_grad():
        if og_f is None and og_r is None:  # one pass over forget + retain rows
            oi_f, ot_f, oi_r, ot_r = _encode_split(og, xi_f, xt_f, xi_r, xt_r)
            oh_r = og.fuse(oi_r, ot_r)
        else:
            oi_f, ot_f, _ = og_f if og_f is not None else frozen(og, xi_f, xt_f)
            oi_r, ot_r, oh_r = og_r if og_r is not None else frozen(og, xi_r, xt_r)
        targets = []
        if decouple in ("text", "both"):
            ot_mis = ot_f[perm] if perm is not None else torch.zeros_like(ot_f)
            targets.append(og.fuse(oi_f, ot_mis))
        if decouple in ("image", "both"):
            oi_mis = oi_f[perm] if perm is not None else torch.zeros_like(oi_f)
            targets.append(og.fuse(oi_mis, ot_f))
    ukr_terms = []
    if unimodal in ("image", "both"):
        ukr_terms.append(F.mse_loss(zi_f, oi_f))
    if unimodal in ("text", "both"):
        ukr_terms.append(F.mse_loss(zt_f, ot_f))
    if not ukr_terms:
        raise ValueError(f"unimodal must be 'image', 'text' or 'both', got {unimodal!r}")
    h = ul.fuse(zi, zt)
    h_f, h_r = h[:b], h[b:]
    if keep is not None:
        keep["h"], keep["h_r"], keep["h_f"] = h, h_r, h_f
        keep["og_h_r"] = oh_r
    return {
        "md": torch.stack([F.mse_loss(h_f, t) for t in targets]).mean(),
        "mkr": F.mse_loss(h_r, oh_r),
        "ukr": torch.stack(ukr_terms).mean(),
    }


def scrub_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float) -> torch.Tensor:
    """``KL(p_teacher || p_student)`` at temperature ``t`` (batch mean), as SCRUB uses it."""
    log_ps = F.log_softmax(student_logits / t, dim=1)
    log_pt = F.log_softmax(teacher_logits / t, dim=1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean()
