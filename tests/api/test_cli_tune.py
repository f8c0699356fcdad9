"""``eeipu tune ... --json``: the last line of standard output is the run's summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api.cli import main


def test_tune_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = str(tmp_path / "cache")
    argv = ["tune", "synthetic-3stage-flat", "--optimizer", "eeipu", "--budget", "45"]
    argv += ["--n-warmup", "4", "--seed", "3", "--cache", cache, "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out.strip().splitlines()[-1])
    for key in ("best_value", "best_params", "n_trials", "n_trials_reusing_cache", "cost_spent"):
        assert key in out
    assert out["optimizer"] == "eeipu"
    assert set(out["best_params"]) == {"s1_beale", "s2_hartmann3", "s3_branin"}
    assert out["n_trials"] >= 5 and out["cost_spent"] <= 45 + out["overshoot"] + 1e-9
    assert "eeipu" in captured.err  # the progress bar

    # A second run on the same cache reuses what the first computed.
    argv2 = ["tune", "synthetic-3stage-flat", "--optimizer", "random", "--budget", "30"]
    argv2 += ["--max-trials", "2", "--cache", cache, "--json", "--no-progress"]
    assert main(argv2) == 0
    out2 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out2["n_trials"] == 2


def test_tune_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tune", "synthetic-3stage-flat", "--budget", "-1"]) == 2
    assert "budget" in capsys.readouterr().err
    assert main(["tune", "no-such-pipeline", "--budget", "5"]) == 2


def test_progress_bar_survives_an_overshooting_trial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A flat 3-stage run costs 6-9 s: the first trial of a 2 s budget overshoots it.
    argv = ["tune", "synthetic-3stage-flat", "--optimizer", "random", "--budget", "2"]
    argv += ["--max-trials", "3", "--cache", str(tmp_path / "cache"), "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n_trials"] == 1 and out["overshoot"] > 0
