"""``eeipu tune ... --json``: the last line of standard output is the run's summary."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from api.cli import main
from api.cli.tune import Progress
from api.store import TrialState
from pipelines import Cost, Float, Pipeline, Stage

# A small pipeline shaped like the unlearning ones: reference models' values (retrained_*,
# original_*) and pass bands (<m>_band_low/high) for the verdict; declared costs.
BANDED_METRICS = (
    "objective",
    "test_auc",
    "forget_auc",
    "time_ratio",
    *(f"{r}_{m}" for r in ("retrained", "original") for m in ("test_auc", "forget_auc")),
    *(f"{m}_band_{e}" for m in ("test_auc", "forget_auc") for e in ("low", "high")),
)


def _prep(parent: Any, a: float) -> Cost:
    return Cost({"a": a}, seconds=1.0)


def _judge(parent: Any, b: float) -> Cost:
    forget = 0.5 + 0.5 * b  # b = 0.4 lands inside the forget band [0.65, 0.75]
    return Cost(
        {
            "objective": -abs(b - 0.4) - abs(parent["a"] - 0.5),
            "test_auc": 0.7,
            "forget_auc": forget,
            "time_ratio": 0.1,
            "retrained_test_auc": 0.71,
            "retrained_forget_auc": 0.7,
            "original_test_auc": 0.72,
            "original_forget_auc": 0.95,
            "test_auc_band_low": 0.68,
            "test_auc_band_high": 0.74,
            "forget_auc_band_low": 0.65,
            "forget_auc_band_high": 0.75,
        },
        seconds=0.5,
    )


banded = Pipeline(
    "banded",
    [Stage("prep", _prep, {"a": Float(0.0, 1.0)}), Stage("judge", _judge, {"b": Float(0.0, 1.0)})],
    objective="objective",
    metrics=BANDED_METRICS,
    defaults={"prep": {"a": 0.5}, "judge": {"b": 0.4}},
    fingerprint="banded-test",
)
BANDED = "tests.api.test_cli_tune:banded"


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


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupted_tune_stops_the_study_and_prints_the_best_so_far(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    """A real ``eeipu tune --db`` process, signalled while a trial is blocked mid-stage."""
    from api.store import open_store
    from tests.api._server import ROOT

    gate = tmp_path / "gate"
    gate.touch()  # open: the first trials run through
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    env = dict(os.environ, EEIPU_TEST_GATE=str(gate), EEIPU_HOME=str(tmp_path / "home"))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    args = [sys.executable, "-m", "api.cli", "tune", "tests.api.gated_pipeline:pipeline"]
    args += ["--optimizer", "random", "--budget", "100000", "--max-trials", "100000"]
    args += ["--db", url, "--cache", str(tmp_path / "cache"), "--json", "--no-progress"]
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store = open_store(url)
    try:

        def study() -> Any:
            studies = store.list_studies()
            return studies[0] if studies else None

        _wait(lambda: (s := study()) is not None and s.n_complete >= 2, proc)
        gate.unlink()  # closed: the next trial blocks in its last stage
        # wait for a trial blocked at the gate (one already past it may still be finishing)
        _wait(lambda: (tmp_path / "gate.blocked").exists(), proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err.decode()
        summary = json.loads(out.decode().strip().splitlines()[-1])
        st = study()
        assert st.state.value == "stopped"  # resumable
        assert summary["db"]["state"] == "stopped" and summary["best_value"] is not None
        assert summary["n_trials"] == st.n_complete >= 2
        counts = store.trial_counts(st.id)
        assert counts[TrialState.RUNNING] == 0 and counts[TrialState.WAITING] == 1
        assert counts[TrialState.FAILED] == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        store.close()


def _wait(cond: Any, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    """Poll ``cond`` (a bound, not a timing assertion); fail early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"eeipu tune exited with {proc.returncode}")
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_tune_fix_keeps_a_stage_at_its_defaults_and_every_later_trial_reuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["tune", BANDED, "--budget", "12", "--n-warmup", "3", "--fix", "prep"]
    argv += ["--optimizer", "random", "--cache", str(tmp_path / "c"), "--json", "--no-progress"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    n = out["n_trials"]
    assert n >= 5 and out["best_params"]["prep"] == {"a": 0.5}
    assert out["n_trials_reusing_cache"] == n - 1  # only the first computes prep
    # prep declares 1 s: the cache saved it on every trial but the first
    assert out["cache"]["saved_seconds"] == pytest.approx(n - 1)
    assert out["cache"]["stage_seconds_without_cache"] == pytest.approx(1.5 * n)
    checks = {c["name"]: c for c in out["verdict"]["checks"]}
    assert set(checks) == {"test_auc", "forget_auc", "time_ratio"}
    assert checks["test_auc"]["band"] == [0.68, 0.74] and checks["test_auc"]["passed"] is True
    forget = out["best_metrics"]["forget_auc"]
    assert checks["forget_auc"]["passed"] is (0.65 <= forget <= 0.75)
    assert out["verdict"]["passed"] is all(c["passed"] for c in checks.values())


def test_tune_prints_a_verdict_with_references_bands_and_cache_savings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["tune", BANDED, "--budget", "8", "--max-trials", "4", "--optimizer", "random"]
    argv += ["--fix", "prep.a=0.5", "--fix", "judge.b=0.9", "--cache", str(tmp_path / "c")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "metrics of the best trial next to the retrained and original model's:" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("forget_auc"))
    # the best trial's value, the retrained and original models', the band and the outcome
    assert row.split()[1:] == ["0.9500", "0.7000", "0.9500", "[0.650,", "0.750]", "FAIL"]
    assert "verdict: the best configuration FAILS the retrain criteria" in out
    assert "outside the band: forget_auc" in out
    assert "cache: 3 of 4 trials reused cached stages, saving 4.5s of stage compute" in out
    wall = next(line for line in out.splitlines() if line.startswith("wall "))
    assert "stages " in wall and "proposals " in wall  # wall time next to what it paid for
    # the progress display names the trial and the stage in hand, and the reuse count
    err = captured.err
    assert "trial 1: prep..." in err and "trial 1: judge done" in err
    # trials 2-4 are whole-run cache hits: no stage runs, the count of reusing trials grows
    assert "trial 4: proposing, best=-0.5, reused cache=2" in err
    assert "reused cache=3" in err


def test_progress_moves_stage_by_stage_and_settles_on_the_trial_cost() -> None:
    from api.tuning import TrialSummary

    buf = io.StringIO()
    prog = Progress(10.0, "eeipu", file=buf)
    prog.stage("start", "prep", None)
    prog.stage("end", "prep", 2.0)
    assert prog.bar.n == pytest.approx(2.0)
    prog.stage("start", "fit", None)
    prog.stage("end", "fit", 3.0)
    t = TrialSummary(0, {}, 1.0, {}, 0, 0, [2.0, 3.0], 5.5, None, 5.5, 1.0, "warmup", 0.0)
    prog.trial_done(t)  # the trial paid 5.5 s (load time, ...): the bar settles to it
    assert prog.bar.n == pytest.approx(5.5)
    t2 = TrialSummary(1, {}, 2.0, {}, 1, 1, [2.0, 3.0], 9.0, None, 14.5, 2.0, "model", 0.0)
    prog.trial_done(t2)  # an overshooting trial fills the bar, no more
    assert prog.bar.n == pytest.approx(10.0)
    prog.close()
    text = buf.getvalue()
    assert "trial 1: prep..." in text and "trial 1: fit done" in text
    assert "trial 3: proposing, best=2, reused cache=1" in text


@pytest.mark.parametrize(
    ("fix", "message"),
    [
        ("nope", "unknown stage 'nope'"),
        ("prep.z=1", "has no parameter 'z'"),
        ("prep.a=7", "--fix 'prep.a=7'"),
        ("prep.a", "give STAGE or STAGE.PARAM=VALUE"),
    ],
)
def test_tune_bad_fix_exits_2_with_one_line(
    fix: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tune", BANDED, "--budget", "5", "--fix", fix]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_tune_fix_stage_needs_pipeline_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tune", "synthetic-3stage-flat", "--budget", "5", "--fix", "s1_beale"]) == 2
    assert "has no defaults" in capsys.readouterr().err
