"""``eeipu bench workers`` at a tiny size: a live server, its workers, their idle shares."""

from __future__ import annotations

import json

import pytest

from api.cli import main
from bench.workers import idle_shares


def test_idle_shares_count_the_gaps_between_a_workers_trials() -> None:
    trials = [
        {"worker": "a", "started_at": 0.0, "finished_at": 1.0},
        {"worker": "a", "started_at": 1.5, "finished_at": 2.5},  # 0.5 s waiting
        {"worker": "a", "started_at": 2.5, "finished_at": 3.0},
        {"worker": "b", "started_at": 5.0, "finished_at": 6.0},  # its spawn is not counted
        {"worker": None, "started_at": None, "finished_at": None},  # never ran
    ]
    a, b = idle_shares(trials)
    assert (a["worker"], a["trials"], a["idle_seconds"]) == ("a", 3, 0.5)
    assert a["busy_seconds"] == pytest.approx(2.5)
    assert a["idle_share"] == pytest.approx(0.5 / 3, abs=1e-4)
    assert (b["trials"], b["idle_seconds"], b["idle_share"]) == (1, 0.0, 0.0)


@pytest.mark.slow
def test_bench_workers_reports_every_worker(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "workers", "--workers", "2", "--trials", "6", "--seconds", "0.05"]
    argv += ["--optimizer", "random", "--json"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["state"] == "completed" and res["n_complete"] == 6
    rows = res["per_worker"]
    assert 1 <= len(rows) <= 2 and sum(r["trials"] for r in rows) == 6
    assert all(0.0 <= r["idle_share"] <= 1.0 and r["busy_seconds"] > 0 for r in rows)
    assert res["max_idle_share"] == max(r["idle_share"] for r in rows)


def test_bench_workers_rejects_bad_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "workers", "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err
