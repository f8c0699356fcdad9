"""``eeipu bench api`` end to end on SQLite at a tiny scale: every workload, level and check."""

from __future__ import annotations

import json
import os

import pytest

from api.cli import main
from bench.api_load import rss_mb


def test_rss_of_a_live_process_and_of_none() -> None:
    mine = rss_mb(os.getpid())
    assert mine is not None and mine > 1.0
    assert rss_mb(2**22 + 12345) is None  # above Linux's pid_max: no such process


@pytest.mark.slow
def test_bench_api_json_covers_every_workload_and_level(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["bench", "api", "--db", "sqlite", "--clients", "2", "3", "--requests", "20"]
    argv += ["--tells", "5", "--trials", "100", "--json"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["clients"] == [2, 3] and res["requests"] == 20
    assert [(r["db"], r["clients"]) for r in res["results"]] == [("sqlite", 2), ("sqlite", 3)]
    for r in res["results"]:
        for w, n in (("study", 20), ("trials_page", 20), ("tell", 5), ("ask_tell", 20)):
            assert r[w]["requests"] == n and r[w]["errors"] == 0, (w, r[w])
            assert r[w]["p50_ms"] <= r[w]["p99_ms"]
        assert r["ask_tell"]["completed_cycles"] == 10
        assert r["rss_mb"]["before"] > 0 and r["rss_mb"]["after"] > 0
        assert r["check"]["n_complete"] == r["check"]["expected"]
    assert res["results"][1]["check"]["expected"] == 100 + 2 * (5 + 10)


def test_bench_api_rejects_bad_clients(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "api", "--clients", "8", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--clients" in err[0]
