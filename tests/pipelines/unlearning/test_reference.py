"""LiRA, the forgetting score, divergences and bands (pipelines/unlearning/reference.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.unlearning.data import diabetes_fixture, split_patients
from pipelines.unlearning.features import featurize
from pipelines.unlearning.model import ModelConfig, TrainConfig, predict_proba, train_model
from pipelines.unlearning.reference import (
    References,
    auc_np,
    band_stats,
    forgetting_score,
    js_divergence,
    lira_metrics,
    margins,
    tpr_at_fpr,
    train_ensemble,
)


def test_auc_and_tpr_at_low_fpr() -> None:
    assert auc_np(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert auc_np(np.array([1.0]), np.array([1.0])) == 0.5  # ties count half
    neg = np.arange(100, dtype=float)
    pos = np.array([99.5, 98.5, 50.0])
    assert tpr_at_fpr(pos, neg, 0.0) == pytest.approx(1 / 3)  # only 99.5 beats every negative
    assert tpr_at_fpr(pos, neg, 0.01) == pytest.approx(2 / 3)  # one negative (99) may pass


def test_margins_are_log_odds() -> None:
    p = np.array([[0.2, 0.8], [0.9, 0.1]])
    y = np.array([1, 1])
    assert margins(p, y) == pytest.approx([np.log(4.0), np.log(1 / 9)])


def test_forgetting_score_separates_and_saturates() -> None:
    rng = np.random.default_rng(0)
    same = forgetting_score(rng.normal(size=(16, 50)), rng.normal(size=(16, 50)), (1, 1), (1, 1))
    apart = forgetting_score(
        rng.normal(5, 1, size=(16, 50)), rng.normal(size=(16, 50)), (1, 1), (1, 1)
    )
    assert same["forgetting_n"] == 16
    assert same["forgetting_score"] > 2 * apart["forgetting_score"]
    assert apart["forgetting_eps"] <= np.log(2 * 16 + 1) + 1e-9  # capped by N
    worse = forgetting_score(rng.normal(size=(16, 50)), rng.normal(size=(16, 50)), (0.5, 1), (1, 1))
    assert worse["forgetting_score"] < same["forgetting_score"]  # utility scales the score


def test_bands_and_divergence() -> None:
    vals = [{"a": v} for v in (0.70, 0.72, 0.74)]
    b = band_stats(vals, {"a": 0.9}, ["a"])
    assert b["a_band_mean"] == pytest.approx(0.72)
    assert b["a_band_low"] == pytest.approx(0.72 - 2 * 0.02)
    assert b["a_band_power"] == pytest.approx(0.18 / 0.04)
    p = np.array([[0.5, 0.5], [0.9, 0.1]])
    assert js_divergence(p, p) == pytest.approx([0.0, 0.0], abs=1e-12)
    assert (js_divergence(p, p[::-1]) > 0).all()


@pytest.fixture(scope="module")
def overfit() -> dict[str, object]:
    """An overfit model on the fixture, a model that never saw the forget rows, references."""
    d = diabetes_fixture()
    split = split_patients(d.groups, 0.3, 0)
    f = featurize(d, split)
    cfg = ModelConfig(f.text.shape[1], f.image.shape[1], hidden=64, dropout=0.0)
    tc = TrainConfig(5e-3, 40, 1e-6, 64)
    orig = train_model(cfg, f.text, f.image, f.y, split.train, tc, seed=0)
    retr = train_model(cfg, f.text, f.image, f.y, split.retain, tc, seed=0)
    refs = References.train(cfg, f.text, f.image, f.y, np.arange(len(f.y)), 12, tc, seed=0)
    return {"f": f, "cfg": cfg, "orig": orig, "retr": retr, "refs": refs, "tc": tc}


def test_lira_sees_members_of_an_overfit_model_and_not_of_a_model_that_never_saw_them(
    overfit: dict[str, object],
) -> None:
    f, cfg, refs = overfit["f"], overfit["cfg"], overfit["refs"]
    assert isinstance(refs, References)
    assert refs.phi.shape == (12, len(f.y))  # type: ignore[attr-defined]
    assert (refs.member.sum(axis=0) == 6).all()  # every row IN exactly half of them
    out = {}
    for name in ("orig", "retr"):
        st = overfit[name].state  # type: ignore[attr-defined]
        p = predict_proba(cfg, st, f.text, f.image)  # type: ignore[arg-type, attr-defined]
        out[name] = lira_metrics(margins(p, f.y), refs, f.split)  # type: ignore[attr-defined]
    assert out["orig"]["lira_forget_auc"] > 0.65  # members: well above chance
    assert out["orig"]["lira_retain_auc"] > 0.65
    assert abs(out["retr"]["lira_forget_auc"] - 0.5) < 0.1  # never saw them: about chance
    assert out["retr"]["lira_retain_auc"] > 0.65  # but still remembers its own rows


def test_the_ensemble_trains_like_train_model(overfit: dict[str, object]) -> None:
    """Same recipe, many models at once: the ensemble's test AUC matches single training's."""
    from pipelines.unlearning.metrics import classification

    f, cfg, tc = overfit["f"], overfit["cfg"], overfit["tc"]
    sp = f.split  # type: ignore[attr-defined]
    lg = train_ensemble(cfg, f.text, f.image, f.y, [sp.retain] * 4, tc, [1, 2, 3, 4])  # type: ignore[arg-type, attr-defined]
    assert lg.shape == (4, len(f.y), 2)  # type: ignore[attr-defined]
    p = np.exp(lg) / np.exp(lg).sum(axis=2, keepdims=True)
    ens = np.mean([classification(q[sp.test], f.y[sp.test])[0] for q in p])  # type: ignore[attr-defined]
    st = overfit["retr"].state  # type: ignore[attr-defined]
    single = predict_proba(cfg, st, f.text, f.image)  # type: ignore[arg-type, attr-defined]
    ref = classification(single[sp.test], f.y[sp.test])[0]  # type: ignore[attr-defined]
    assert abs(ens - ref) < 0.05
    fit = np.mean([classification(q[sp.retain], f.y[sp.retain])[0] for q in p])  # type: ignore[attr-defined]
    assert fit > 0.95  # it fits its training rows as the single model does
