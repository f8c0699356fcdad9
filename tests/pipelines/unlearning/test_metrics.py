"""Attacks and metrics: members of an overfitted model are found; an unseen model gives ~0.5."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.unlearning.data import Split
from pipelines.unlearning.metrics import (
    batch_svc_attack,
    classification,
    compare,
    forget_vs_retain_auc,
    loss_threshold_attack,
    model_metrics,
    retrain_free_objective,
    sample_features,
    sample_svc_attack,
)
from pipelines.unlearning.model import ModelConfig, TrainConfig, predict_proba, train_model


@pytest.fixture(scope="module")
def memorised() -> dict[str, np.ndarray]:
    """Random features and random labels: whatever a model learns about A is memorisation."""
    rng = np.random.default_rng(0)
    n = 600
    text = rng.normal(size=(n, 16)).astype(np.float32)
    image = rng.normal(size=(n, 8)).astype(np.float32)
    y = rng.integers(0, 2, size=n)
    a, b, c = np.arange(0, 200), np.arange(200, 400), np.arange(400, 600)
    cfg = ModelConfig(16, 8, hidden=128, dropout=0.0)
    train = TrainConfig(lr=3e-3, epochs=150, weight_decay=0.0, batch_size=50)
    over = train_model(cfg, text, image, y, a, train, seed=0)
    return {
        "y": y,
        "a": a,
        "b": b,
        "c": c,
        "p": predict_proba(cfg, over.state, text, image),
    }


def test_attacks_find_members_of_an_overfitted_model(memorised: dict[str, np.ndarray]) -> None:
    p, y, a, b = memorised["p"], memorised["y"], memorised["a"], memorised["b"]
    f = sample_features(p, y)
    rng = np.random.default_rng(0)
    s = sample_svc_attack(f[a], f[b], f[a[:50]], rng)
    assert s["strength"] > 0.8
    assert s["rate"] > 0.8  # forget = members
    lt = loss_threshold_attack(f[a, 0], f[b, 0], f[a[:50], 0])
    assert lt["strength"] > 0.8 and lt["auc"] > 0.8
    bt = batch_svc_attack(f[a, 0], f[b, 0], f[a[:48], 0], rng, batch_size=8)
    assert bt["strength"] > 0.8


def test_attacks_find_nothing_on_a_model_that_never_saw_the_data(
    memorised: dict[str, np.ndarray],
) -> None:
    p, y, b, c = memorised["p"], memorised["y"], memorised["b"], memorised["c"]
    f = sample_features(p, y)  # the model never saw b or c
    strengths = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        strengths.append(sample_svc_attack(f[b], f[c], f[b[:50]], rng)["strength"])
    assert abs(float(np.mean(strengths)) - 0.5) < 0.1
    lt = loss_threshold_attack(f[b, 0], f[c, 0], f[b[:50], 0])
    assert abs(lt["strength"] - 0.5) < 0.1


def test_classification_and_knowledge_gap() -> None:
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 0, 1])
    auc, f1 = classification(p, y)
    assert auc == 1.0 and f1 == 1.0
    # forget confidences all below the retain chunks' -> AUC 1; equal -> 0.5
    assert forget_vs_retain_auc(np.full(3, 0.2), np.full(9, 0.9)) == 1.0
    assert forget_vs_retain_auc(np.full(3, 0.5), np.full(9, 0.5)) == 0.5


def _split() -> Split:
    idx = np.arange(200)
    return Split(train=idx[:150], test=idx[150:], forget=idx[:20], retain=idx[20:150])


def test_model_metrics_compare_and_objective() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    p1 = np.clip(0.5 + 0.3 * (2 * y - 1) + 0.2 * rng.normal(size=200), 0.01, 0.99)
    p = np.stack([1 - p1, p1], axis=1)
    sp = _split()
    m = model_metrics(p, y, sp, seed=0)
    for k in ("test_auc", "forget_auc", "mia_sample_svc", "mia_batch_svc",
              "forget_vs_retain_auc", "mia_sample_svc_strength", "mia_loss_auc"):  # fmt: skip
        assert k in m
    c = compare(m, m, p, p, sp)
    assert c["retrain_score"] == 0.0
    assert c["kl_forget"] == pytest.approx(0.0, abs=1e-9)
    assert all(c[f"gap_{k}"] == 0.0 for k in ("test_auc", "forget_auc", "mia_sample_svc"))
    # the objective needs no retrained model; slower than 1/5 of training is penalised
    fast = retrain_free_objective(m, m, unlearn_seconds=0.1, original_train_seconds=1.0)
    slow = retrain_free_objective(m, m, unlearn_seconds=1.0, original_train_seconds=1.0)
    assert fast - slow == pytest.approx(2 * (1.0 - 0.15))
    # a test-AUC drop against the original costs 1 + 3 per unit, and 10 more past 0.01
    orig = dict(m)
    for drop, cost in ((0.005, 4 * 0.005), (0.03, 4 * 0.03 + 10 * 0.02)):
        worse = {**m, "test_auc": m["test_auc"] - drop, "forget_auc": m["forget_auc"] - drop}
        got = retrain_free_objective(worse, orig, 0.1, 1.0)
        assert fast - got == pytest.approx(cost)


def test_band_objective_charges_time_above_the_hinge() -> None:
    from pipelines.unlearning.metrics import band_objective

    assert band_objective({"band_score": -0.5, "time_ratio": 0.10}) == pytest.approx(-0.5)
    assert band_objective({"band_score": -0.5, "time_ratio": 0.15}) == pytest.approx(-0.5)
    # 5 per unit of ratio above 0.15: at the 1/5 limit a quarter band half-width
    assert band_objective({"band_score": -0.5, "time_ratio": 0.20}) == pytest.approx(-0.75)
    fast_far = band_objective({"band_score": -1.2, "time_ratio": 0.05})
    slow_near = band_objective({"band_score": -0.4, "time_ratio": 0.40})
    assert slow_near < fast_far  # over twice the time limit loses to a worse but cheap run
    assert np.isnan(band_objective({"band_score": float("nan"), "time_ratio": 0.1}))
    assert np.isnan(band_objective({"time_ratio": 0.1}))
