"""``eeipu tune ... --json``: the last line of standard output is the run's summary."""

from __future__ import annotations

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
from api.store import TrialState


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
        _wait(lambda: store.trial_counts(study().id)[TrialState.RUNNING] == 1, proc)
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
