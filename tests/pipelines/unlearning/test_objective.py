"""The retrain-free objective rewards forgetting, not smoothing (real Open-i data)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from pipelines.unlearning.data import load_data, split_patients
from pipelines.unlearning.features import featurize
from pipelines.unlearning.metrics import classification, forgetting_objective, ks_statistic
from pipelines.unlearning.model import ModelConfig, TrainConfig, predict_proba, train_model
from pipelines.unlearning.reference import margins

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torchxrayvision") is None, reason="Open-i data not installed"
)


def test_ks_statistic() -> None:
    a = np.array([0.0, 1.0, 2.0])
    assert ks_statistic(a, a) == 0.0
    assert ks_statistic(a, a + 10) == 1.0


def test_no_unlearning_and_noise_rank_below_exact_unlearning() -> None:
    """A model trained briefly on ALL rows (forget rows included) looks "unlearned" on the
    forget side, and a noise-damaged original is smoothed: both must score below the model
    retrained without the forget rows, and the original itself below it too."""
    d = load_data("openi")
    sp = split_patients(d.groups, 0.1, 0)
    f = featurize(d, sp)
    cfg = ModelConfig(f.text.shape[1], f.image.shape[1], 64, 0.1)
    tc = TrainConfig(1e-3, 20, 1e-4, 64)
    orig = train_model(cfg, f.text, f.image, f.y, sp.train, tc, 0)
    retr = train_model(cfg, f.text, f.image, f.y, sp.retain, tc, 0)
    brief = train_model(cfg, f.text, f.image, f.y, sp.train, TrainConfig(1e-3, 5, 1e-4, 64), 0)
    p_og = predict_proba(cfg, orig.state, f.text, f.image)
    phi_og_r = margins(p_og, f.y)[sp.retain]
    og_auc = classification(p_og[sp.test], f.y[sp.test])[0]

    def score(p: np.ndarray) -> float:
        phi = margins(p, f.y)
        sides = {"forget": phi[sp.forget], "retain": phi[sp.retain], "test": phi[sp.test]}
        auc = classification(p[sp.test], f.y[sp.test])[0]
        return forgetting_objective(sides, phi_og_r, auc, og_auc, 0.1, 1.0)

    g = torch.Generator().manual_seed(0)
    noisy = {
        k: v + 0.3 * v.std() * torch.randn(v.shape, generator=g) if v.numel() > 1 else v
        for k, v in orig.state.items()
    }
    s_retr = score(predict_proba(cfg, retr.state, f.text, f.image))
    s_brief = score(predict_proba(cfg, brief.state, f.text, f.image))
    s_noise = score(predict_proba(cfg, noisy, f.text, f.image))
    s_orig = score(p_og)
    assert s_retr > s_brief and s_retr > s_noise and s_retr > s_orig
    # the brief model does forget-side "forgetting" as well as retraining: only the retain
    # side tells them apart
    phi_b = margins(predict_proba(cfg, brief.state, f.text, f.image), f.y)
    assert ks_statistic(phi_b[sp.forget], phi_b[sp.test]) < 0.15
    assert ks_statistic(phi_b[sp.retain], phi_og_r) > 0.15
