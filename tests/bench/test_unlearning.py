"""``eeipu bench unlearning`` on the fixture: contract keys, files, checks, correlations."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from api.cli import main
from bench.unlearning import aggregate, bootstrap_ci, rank_correlation, tuning_gain
from pipelines.unlearning.pipelines import default_params

ROW_KEYS = (
    "lira_forget_auc",
    "lira_forget_tpr_at_1pct_fpr",
    "lira_retain_auc",
    "forgetting_score",
    "retain_auc",
    "retain_divergence",
    "test_divergence",
)


def test_rank_correlation_and_aggregate() -> None:
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2], [1, 2]) != rank_correlation([1, 2], [1, 2])  # NaN
    runs = [
        {"method": "m", "config": "default", "forget_fraction": 0.1, "seed": s,
         "metrics": {"test_auc": v}}
        for s, v in enumerate([0.6, 0.8])
    ]  # fmt: skip
    (row,) = aggregate(runs)
    assert row["test_auc"] == pytest.approx(0.7)
    assert row["test_auc_std"] == pytest.approx(0.1414, abs=1e-3)


def test_bootstrap_and_tuning_gain() -> None:
    lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0])
    assert 1.0 <= lo < 2.5 < hi <= 4.0
    assert bootstrap_ci([5.0]) == [5.0, 5.0]
    runs = [
        {"method": "m", "config": c, "forget_fraction": 0.1, "seed": s,
         "metrics": {"band_score": v + (0.5 if c == "tuned" else 0.0)}}
        for c in ("default", "tuned") for s, v in enumerate([-1.0, -2.0, -1.5])
    ]  # fmt: skip
    g = tuning_gain(runs)["m@0.1"]
    assert g["mean"] == pytest.approx(0.5) and g["n_seeds"] == 3


def test_bench_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    rc = main(
        ["bench", "unlearning", "--source", "diabetes", "--forget-fraction", "0.1",
         "--seeds", "2", "--methods", "forget-mi", "finetune", "--tune-methods", "forget-mi",
         "--tune-trials", "3", "--tune-splits", "2", "--tune-around", "0.3",
         "--optimizer", "random",
         "--out", str(out), "--json"]
    )  # fmt: skip
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    methods = {r["method"] for r in res["rows"]}
    assert methods == {"forget-mi", "finetune", "retrain"}
    for r in res["rows"]:
        assert r["forget_fraction"] == 0.1 and r["n_seeds"] == 2
        for k in ("test_auc", "test_f1", "forget_auc", "forget_f1", "mia_batch_svc",
                  "mia_sample_svc", "forget_vs_retain_auc", "unlearn_seconds",
                  "retrain_seconds", "test_auc_std"):  # fmt: skip
            assert k in r
    for r in [*res["rows"], *res["tuned_rows"]]:  # the per-row keys
        for k in ROW_KEYS:
            assert k in r, k
        for m in ("test_auc", "forget_auc", "retain_auc", "lira_forget_auc"):
            lo, hi = r[f"{m}_band"]
            assert lo <= hi and 0.0 <= r[f"{m}_pass_rate"] <= 1.0
            assert r[f"{m}_ci"][0] <= r[m] <= r[f"{m}_ci"][1]
        assert 0.0 <= r["forgetting_score"] <= 1.0
    retrain = next(r for r in res["rows"] if r["method"] == "retrain")
    assert retrain["forget_auc_pass_rate"] == 1.0  # a member of its own ensemble
    assert res["forgetting_runs"] == 8
    assert {c["method"] for c in res["band_checks"]} == {"forget-mi", "finetune"}
    assert set(res["tuning_gain"]) == {"forget-mi@0.1"}
    assert res["tuning_gain"]["forget-mi@0.1"]["n_seeds"] == 2
    assert res["modality_ablation"] is None and res["source_agreement"] == {}  # Open-i only
    assert [r["method"] for r in res["tuned_rows"]] == ["forget-mi"]
    assert "forget-mi@0.1" in res["tuned_params"]
    assert {c["method"] for c in res["checks"]} == {"forget-mi", "finetune"}
    assert set(res["rank_correlation"]) == {"default_runs", "tuning_trials", "all_trials"}
    assert res["tune_objective"] == "band_objective"  # tuned on the calibration splits' bands
    assert res["tune_splits"] == 2 and res["tuning_seeds"] == [1000, 1001, 1002, 1003]
    assert res["tune_around"] == 0.3
    assert res["tuned_is_default"]["forget-mi@0.1"] == (
        res["tuned_params"]["forget-mi@0.1"] == default_params("forget-mi")["unlearn"]
    )
    tuned = res["tuned_params"]["forget-mi@0.1"]
    dflt = default_params("forget-mi")["unlearn"]
    for k in ("use_noise", "early_stop", "schedule", "batch_size", "calibrate"):
        assert tuned[k] == dflt[k], k  # categorical choices stay the defaults' around them
    assert os.path.exists(out / "unlearning.md") and os.path.exists(out / "unlearning.csv")


def test_bench_cli_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "unlearning", "--source", "diabetes", "--seeds", "0"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seeds" in err[0]
    for flag, bad in (("--tune-splits", "0"), ("--tune-around", "nan"), ("--tune-around", "2")):
        rc = main(["bench", "unlearning", "--source", "diabetes", flag, bad])
        assert rc == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0], (flag, bad, err)
    with pytest.raises(SystemExit) as e:  # argparse refuses an unknown tuning objective
        main(["bench", "unlearning", "--source", "diabetes", "--tune-objective", "band_score"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--tune-objective" in err and "Traceback" not in err
