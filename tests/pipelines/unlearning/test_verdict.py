"""``judge``: one check per compared metric, inside / outside the retrained band."""

from __future__ import annotations

import math

from pipelines.unlearning.verdict import BAND_METRICS, Check, band_keys, judge, underpowered


def test_judge_inside_outside_and_missing() -> None:
    m = {
        "forget_auc": 0.70,
        "forget_auc_band_low": 0.65,
        "forget_auc_band_high": 0.75,
        "test_auc": 0.60,
        "test_auc_band_low": 0.68,
        "test_auc_band_high": 0.72,
        "retain_auc": float("nan"),
        "retain_auc_band_low": 0.9,
        "retain_auc_band_high": 0.99,
        "lira_forget_auc": 0.55,  # no band keys
        "time_ratio": 0.3,
    }
    by = {c.name: c for c in judge(m)}
    assert by["forget_auc"] == Check("forget_auc", 0.70, (0.65, 0.75), True)
    assert by["test_auc"].passed is False
    assert by["retain_auc"].value is None and by["retain_auc"].passed is None
    assert by["lira_forget_auc"].band is None and by["lira_forget_auc"].passed is None
    assert by["time_ratio"].passed is False and by["time_ratio"].band == (0.0, 0.2)
    assert "lira_retain_auc" not in by  # absent metrics are not judged
    assert [c.name for c in judge(m)][-1] == "time_ratio"


def test_band_keys_and_power() -> None:
    assert band_keys("test_auc") == ("test_auc_band_low", "test_auc_band_high")
    assert set(BAND_METRICS) >= {"test_auc", "forget_auc", "retain_auc", "lira_forget_auc"}
    m = {
        "forget_auc_band_power": 3.0,
        "test_auc_band_power": 0.4,
        "retain_auc_band_power": math.nan,
    }
    assert underpowered(m) == ["test_auc"]
