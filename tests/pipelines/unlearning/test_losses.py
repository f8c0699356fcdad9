"""Each unlearning loss on tiny hand-built tensors, and the perturbation's statistics."""

from __future__ import annotations

import math

import pytest
import torch

from pipelines.unlearning.losses import (
    batch_distance,
    forgetmi_losses,
    forgetmi_objective,
    multidelete_losses,
    normalise_weights,
    perturb,
    scrub_kl,
)
from pipelines.unlearning.model import FusionNet, ModelConfig


def _net(seed: int = 0) -> FusionNet:
    torch.manual_seed(seed)
    m = FusionNet(ModelConfig(d_text=3, d_image=2, hidden=4, dropout=0.0))
    m.eval()
    return m


def _x(n: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g), torch.randn(n, 3, generator=g)


def test_batch_distance_is_mean_row_norm() -> None:
    a = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    b = torch.zeros(2, 2)
    assert batch_distance(a, b).item() == pytest.approx(2.5, abs=1e-5)


def test_normalise_weights() -> None:
    assert normalise_weights({"a": 1, "b": 3}) == {"a": 0.25, "b": 0.75}
    assert normalise_weights({"a": 0, "b": 0}) == {"a": 0.5, "b": 0.5}


def test_forgetmi_objective_signs_weights_and_margin() -> None:
    d = {k: torch.tensor(v) for k, v in {"uu": 2.0, "ur": 1.0, "mu": 3.0, "mr": 4.0}.items()}
    w = {"uu": 1.0, "ur": 1.0, "mu": 1.0, "mr": 1.0}
    # with noise: pull toward the original's noisy embeddings, s = +1
    assert forgetmi_objective(d, w, True, margin=10.0).item() == pytest.approx(2.5)
    # without noise: push away, s = -1, capped at the margin (3 -> 2.5)
    assert forgetmi_objective(d, w, False, margin=2.5).item() == pytest.approx(
        0.25 * (1.0 - 2.0 - 2.5 + 4.0)
    )
    # weights are normalised: scaling them changes nothing
    w10 = {k: 10 * v for k, v in w.items()}
    assert forgetmi_objective(d, w10, True, 10.0).item() == pytest.approx(2.5)


def test_forgetmi_losses_match_hand_computation() -> None:
    ul, og = _net(0), _net(1)
    xi_f, xt_f = _x(3, 2)
    xi_n, xt_n = xi_f + 1.0, xt_f - 1.0
    xi_r, xt_r = _x(5, 3)
    d = forgetmi_losses(ul, og, xi_f, xt_f, xi_n, xt_n, xi_r, xt_r)
    with torch.no_grad():
        zi, zt = ul.encode(xi_f, xt_f)
        oi, ot = og.encode(xi_n, xt_n)
        uu = (torch.cat([zi, zt], 1) - torch.cat([oi, ot], 1)).norm(dim=1).mean()
        mu = (ul.fuse(zi, zt) - og.fuse(oi, ot)).norm(dim=1).mean()
        ri, rt = ul.encode(xi_r, xt_r)
        pi, pt = og.encode(xi_r, xt_r)
        mr = (ul.fuse(ri, rt) - og.fuse(pi, pt)).norm(dim=1).mean()
    assert d["uu"].item() == pytest.approx(uu.item(), rel=1e-5)
    assert d["mu"].item() == pytest.approx(mu.item(), rel=1e-5)
    assert d["mr"].item() == pytest.approx(mr.item(), rel=1e-5)


def test_push_away_from_exact_copy_has_zero_gradient() -> None:
    """The known pitfall: ul == og and no noise -> all distances 0, gradient (near) 0."""
    og = _net(0)
    ul = _net(0)
    xi, xt = _x(4)
    d = forgetmi_losses(ul, og, xi, xt, xi, xt, xi, xt)
    for v in d.values():
        assert v.item() < 1e-5
    loss = forgetmi_objective(d, {"uu": 1, "ur": 1, "mu": 1, "mr": 1}, False, 5.0)
    loss.backward()
    g = sum(float(p.grad.abs().sum()) for p in ul.parameters() if p.grad is not None)
    assert g < 1e-3


def test_multidelete_losses() -> None:
    og = _net(0)
    ul = _net(0)
    xi_f, xt_f = _x(3, 5)
    xi_r, xt_r = _x(4, 6)
    d = multidelete_losses(ul, og, xi_f, xt_f, xi_r, xt_r, "both")
    assert d["mkr"].item() == pytest.approx(0.0, abs=1e-10)
    assert d["ukr"].item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        zi, zt = og.encode(xi_f, xt_f)
        target = og.fuse(zi, zt[torch.tensor([2, 0, 1])])  # roll by one: every pair mismatched
        md = ((og.fuse(zi, zt) - target) ** 2).mean()
    assert d["md"].item() == pytest.approx(md.item(), rel=1e-5)
    assert d["md"].item() > 0
    ul2 = _net(3)
    d_img = multidelete_losses(ul2, og, xi_f, xt_f, xi_r, xt_r, "image")
    with torch.no_grad():
        expect = ((ul2.enc_img(xi_f) - og.enc_img(xi_f)) ** 2).mean()
    assert d_img["ukr"].item() == pytest.approx(expect.item(), rel=1e-5)
    with pytest.raises(ValueError):
        multidelete_losses(ul, og, xi_f, xt_f, xi_r, xt_r, "neither")


def test_scrub_kl() -> None:
    t = torch.tensor([[math.log(3.0), 0.0]])
    s = torch.zeros(1, 2)
    expect = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert scrub_kl(s, t, 1.0).item() == pytest.approx(expect, rel=1e-5)
    assert scrub_kl(t, t, 2.0).item() == pytest.approx(0.0, abs=1e-7)


def test_perturbation_statistics() -> None:
    g = torch.Generator().manual_seed(0)
    xi = torch.zeros(4000, 20)
    xt = torch.zeros(4000, 20)
    ni, nt = perturb(xi, xt, noise_mean=0.1, noise_std=0.5, text_drop=0.3, gen=g)
    assert ni.mean().item() == pytest.approx(0.1, abs=0.01)
    assert ni.std().item() == pytest.approx(0.5, abs=0.01)
    dropped = (nt == 0).float().mean().item()
    assert dropped == pytest.approx(0.3, abs=0.01)
    kept = nt[nt != 0]
    assert kept.std().item() == pytest.approx(0.5, abs=0.01)
    assert kept.mean().item() == pytest.approx(0.1, abs=0.01)
    # no noise, no drop: identity
    ni0, nt0 = perturb(xi, xt, 0.0, 0.0, 0.0, g)
    assert torch.equal(ni0, xi) and torch.equal(nt0, xt)


def test_multidelete_decoupling_sides() -> None:
    og = _net(0)
    ul = _net(0)
    xi_f, xt_f = _x(3, 5)
    xi_r, xt_r = _x(4, 6)
    roll = torch.tensor([2, 0, 1])
    with torch.no_grad():
        zi, zt = og.encode(xi_f, xt_f)
        h = og.fuse(zi, zt)
        md_text = ((h - og.fuse(zi, zt[roll])) ** 2).mean()
        md_image = ((h - og.fuse(zi[roll], zt)) ** 2).mean()
    d_t = multidelete_losses(ul, og, xi_f, xt_f, xi_r, xt_r, decouple="text")
    d_i = multidelete_losses(ul, og, xi_f, xt_f, xi_r, xt_r, decouple="image")
    d_b = multidelete_losses(ul, og, xi_f, xt_f, xi_r, xt_r, decouple="both")
    assert d_t["md"].item() == pytest.approx(md_text.item(), rel=1e-5)
    assert d_i["md"].item() == pytest.approx(md_image.item(), rel=1e-5)
    assert d_b["md"].item() == pytest.approx((md_text + md_image).item() / 2, rel=1e-5)
    with pytest.raises(ValueError):
        multidelete_losses(ul, og, xi_f, xt_f, xi_r, xt_r, decouple="audio")


def test_losses_hand_back_the_fused_retain_representation() -> None:
    og = _net(0)
    ul = _net(2)
    xi_f, xt_f = _x(3, 5)
    xi_r, xt_r = _x(4, 6)
    with torch.no_grad():
        expect = ul.fuse(*ul.encode(xi_r, xt_r))
        logits = ul(xi_r, xt_r)
    keep: dict[str, torch.Tensor] = {}
    forgetmi_losses(ul, og, xi_f, xt_f, xi_f, xt_f, xi_r, xt_r, keep)
    assert torch.allclose(keep["h_r"], expect)
    assert torch.allclose(ul.head(keep["h_r"]), logits)  # eval mode: the head gives the logits
    keep2: dict[str, torch.Tensor] = {}
    multidelete_losses(ul, og, xi_f, xt_f, xi_r, xt_r, keep=keep2)
    assert torch.allclose(keep2["h_r"], expect)
