"""The per-run and per-step shortcuts of Forget-MI and MultiDelete compute what the direct
computations did: the batched noise calibration picks the scale of the former one-draw-per-
grid-point loop, the perturbation draws the former draws, the original's precomputed outputs
equal its per-batch forward passes (up to float rounding), and so do whole runs."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.unlearning import methods as m
from pipelines.unlearning.features import Features
from pipelines.unlearning.losses import forgetmi_losses, frozen, multidelete_losses, perturb
from pipelines.unlearning.model import FusionNet, TrainedModel


def _former_perturb(
    xi: torch.Tensor,
    xt: torch.Tensor,
    noise_mean: float,
    noise_std: float,
    text_drop: float,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The perturbation as it was written before its draws were factored out."""

    def noise(x: torch.Tensor) -> torch.Tensor:
        z = torch.randn(x.shape, generator=gen, device="cpu").to(x.device)
        return x + noise_mean + noise_std * z

    ni = noise(xi)
    nt = noise(xt)
    if text_drop > 0:
        keep = (torch.rand(xt.shape, generator=gen, device="cpu") >= text_drop).to(xt.device)
        nt = nt * keep.to(nt.dtype)
    return ni, nt


@torch.no_grad()
def _former_calibration(
    og: FusionNet, data: Any, noise_mean: float, text_noise: float, target: float
) -> tuple[float, list[float]]:
    """The calibration as it was: one reseeded draw and one forward pass per grid point."""
    gen = torch.Generator().manual_seed(12345)
    xi, xt, y = data.f
    best, best_gap, losses = 1.0, math.inf, []
    for s in np.geomspace(0.01, 10.0, 25):
        gen.manual_seed(12345)
        ni, nt = _former_perturb(xi, xt, noise_mean, float(s), text_noise, gen)
        ce = float(F.cross_entropy(og(ni, nt), y))
        losses.append(ce)
        gap = abs(ce - target)
        if gap < best_gap:
            best, best_gap = float(s), gap
    return best, losses


def _parts(setup: tuple[TrainedModel, Features]) -> tuple[FusionNet, FusionNet, Any]:
    orig, f = setup
    og, ul, dev = m._start(orig, "cpu", 0)
    return og, ul, m._Data(f, dev, 0)


def test_perturb_draws_the_former_draws() -> None:
    g = torch.Generator().manual_seed(0)
    xi, xt = torch.randn(40, 5, generator=g), torch.randn(40, 7, generator=g)
    for mean, std, drop in ((0.0, 1.0, 0.3), (0.2, 0.5, 0.0), (-0.1, 2.0, 0.8)):
        g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        a = perturb(xi, xt, mean, std, drop, g1)
        b = _former_perturb(xi, xt, mean, std, drop, g2)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        # the generator advanced by exactly as many draws
        assert torch.equal(g1.get_state(), g2.get_state())


@pytest.mark.parametrize(("noise_mean", "text_noise"), [(0.0, 0.3), (0.0, 0.0), (0.2, 0.5)])
def test_the_batched_calibration_picks_the_former_loops_scale(
    setup: tuple[TrainedModel, Features],
    noise_mean: float,
    text_noise: float,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    og, _ul, data = _parts(setup)
    base = m._reference_loss(og, data)
    _s, losses = _former_calibration(og, data, noise_mean, text_noise, base)
    # targets at the held-out loss, between grid points' losses (a third of the way, away
    # from a tie that float rounding could break either way) and beyond the grid's range
    thirds = [(2 * a + b) / 3 for a, b in itertools.pairwise(losses)]
    targets = [base, base + 5.0, base - 5.0, *thirds[::4]]
    for target in targets:
        want, _ = _former_calibration(og, data, noise_mean, text_noise, target)
        assert m.calibrate_noise(og, data, noise_mean, text_noise, target) == want
    # one grid point per forward pass (the memory bound) changes nothing
    monkeypatch.setattr(m, "_CALIBRATION_ROWS", 1)
    for target in targets[:3]:
        want, _ = _former_calibration(og, data, noise_mean, text_noise, target)
        assert m.calibrate_noise(og, data, noise_mean, text_noise, target) == want


def test_the_stopper_keeps_the_reference_figures(setup: tuple[TrainedModel, Features]) -> None:
    og, _ul, data = _parts(setup)
    stop = m.Stopper("none", og, data)
    assert stop.target_loss == m._reference_loss(og, data)
    assert stop.val_auc == m._model_auc(og, data.v)
    assert torch.equal(m.unseen_margins(og, data, stop.og_val_logits), m.unseen_margins(og, data))


def test_precomputed_original_outputs_match_its_forward_pass(
    setup: tuple[TrainedModel, Features],
) -> None:
    og, ul, data = _parts(setup)
    with torch.no_grad():  # move ul off og, so that every distance is nonzero
        for p in ul.parameters():
            p.add_(0.05 * torch.randn_like(p))
    og_f, og_r = frozen(og, *data.f[:2]), frozen(og, *data.r[:2])
    b_f, b_r = torch.arange(0, data.f[0].shape[0], 2), data.sample_indices(data.r, 24)
    xi_f, xt_f, _ = m._rows(data.f, b_f)
    xi_r, xt_r, _ = m._rows(data.r, b_r)
    xi_n, xt_n = perturb(xi_f, xt_f, 0.0, 0.7, 0.3, torch.Generator().manual_seed(1))
    k1: dict[str, torch.Tensor] = {}
    k2: dict[str, torch.Tensor] = {}
    a = forgetmi_losses(ul, og, xi_f, xt_f, xi_n, xt_n, xi_r, xt_r, k1)
    b = forgetmi_losses(ul, og, xi_f, xt_f, xi_n, xt_n, xi_r, xt_r, k2, og_r.rows(b_r))
    for k in a:
        assert float(a[k].detach()) > 0
        assert float(b[k].detach()) == pytest.approx(float(a[k].detach()), rel=1e-5)
    for k in ("h", "h_f", "h_r", "og_h_r"):
        torch.testing.assert_close(k1[k], k2[k], rtol=1e-5, atol=1e-6)
    assert torch.equal(k1["h"], torch.cat([k1["h_f"], k1["h_r"]]))
    for fr in ((og_f.rows(b_f), og_r.rows(b_r)), (og_f.rows(b_f), None), (None, og_r.rows(b_r))):
        c = multidelete_losses(ul, og, xi_f, xt_f, xi_r, xt_r, "both", "both")
        d = multidelete_losses(ul, og, xi_f, xt_f, xi_r, xt_r, "both", "both", None, fr)
        for k in c:
            assert float(c[k].detach()) > 0
            assert float(d[k].detach()) == pytest.approx(float(c[k].detach()), rel=1e-5)


def test_the_original_is_precomputed_only_when_it_saves_rows(
    setup: tuple[TrainedModel, Features],
) -> None:
    og, _ul, data = _parts(setup)
    n_r = data.r[0].shape[0]
    assert m._frozen_part(og, data.r, n_r - 1) is None
    fr = m._frozen_part(og, data.r, n_r)
    assert fr is not None and fr.h.shape[0] == n_r
    torch.testing.assert_close(fr.h, frozen(og, data.r[0], data.r[1]).h)


def test_one_head_pass_and_cached_margin_targets(setup: tuple[TrainedModel, Features]) -> None:
    og, ul, data = _parts(setup)
    keep: dict[str, torch.Tensor] = {}
    xi_f, xt_f, y_f = data.f
    xi_r, xt_r, _ = data.sample(data.r, 16)
    forgetmi_losses(ul, og, xi_f, xt_f, xi_f, xt_f, xi_r, xt_r, keep)
    z_f, z_r = m._head_logits(ul, keep, True, True)
    assert z_f is not None and z_r is not None
    torch.testing.assert_close(z_f, ul.head(keep["h_f"]))
    torch.testing.assert_close(z_r, ul.head(keep["h_r"]))
    assert m._head_logits(ul, keep, False, True)[0] is None
    assert m._head_logits(ul, keep, True, False)[1] is None
    unseen = m.unseen_margins(og, data)
    tgt = m._MarginTargets(unseen)
    t = tgt(z_f.shape[0], z_f.dtype)
    assert t is not None and tgt(z_f.shape[0], z_f.dtype) is t  # memoised per batch size
    assert torch.equal(m.margin_match(z_f, y_f, unseen, t), m.margin_match(z_f, y_f, unseen))
    assert m._MarginTargets(torch.zeros(0))(4, torch.float32) is None


@pytest.mark.parametrize("method", ["forget-mi", "multidelete"])
def test_whole_runs_match_runs_without_the_precomputed_original(
    method: str, setup: tuple[TrainedModel, Features], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The defaults' shape (noise, the three extensions, a step budget, scaled forget
    batches): precomputing the original's outputs moves the result by float rounding only."""
    orig, f = setup
    params: dict[str, Any] = {"steps": 12, "w_ce": 2.0, "w_kl": 5.0, "w_fm": 1.0}
    params["forget_passes"] = 3.0
    params["early_stop"] = "none"
    if method == "forget-mi":
        params |= {"use_noise": True, "calibrate": True, "init_noise": 0.0, "lr": 2e-3}
    made: list[bool] = []
    frozen_part = m._frozen_part

    def spy(og: FusionNet, part: Any, visits: int) -> Any:
        out = frozen_part(og, part, visits)
        made.append(out is not None)
        return out

    monkeypatch.setattr(m, "_frozen_part", spy)
    a = m.run_method(method, orig, f, 0, "cpu", **params)
    assert all(made) and made  # this run did precompute the original's outputs
    monkeypatch.setattr(m, "_frozen_part", lambda og, part, visits: None)
    b = m.run_method(method, orig, f, 0, "cpu", **params)
    assert a.info["steps"] == b.info["steps"] == 12
    assert a.info.get("noise_std") == b.info.get("noise_std")
    for k in a.state:
        torch.testing.assert_close(a.state[k], b.state[k], rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(a.state[k], orig.state[k]) for k in a.state)
