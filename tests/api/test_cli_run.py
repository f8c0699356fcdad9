"""`eeipu run`, `eeipu cache`, `eeipu bench cache` through the real console entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from api.cli import main

CFG = {
    "s1_beale": {"x0": 1.0, "x1": 0.5},
    "s2_hartmann3": {"x0": 0.1, "x1": 0.5, "x2": 0.8},
    "s3_branin": {"x0": 3.0, "x1": 2.0},
}


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_run_prints_a_record_and_reuses_the_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = str(tmp_path / "c")
    assert (
        main(["run", "synthetic-3stage", "--params", json.dumps(CFG), "--cache", cache, "--json"])
        == 0
    )
    r1 = _last_json(capsys.readouterr().out)
    assert [s["hit"] for s in r1["stages"]] == [False, False, False]
    assert set(r1["stages"][0]) >= {"key", "hit", "cost_seconds", "load_seconds", "bytes"}
    cfg2 = {**CFG, "s3_branin": {"x0": 1.0, "x1": 2.0}}
    assert (
        main(["run", "synthetic-3stage", "--params", json.dumps(cfg2), "--cache", cache, "--json"])
        == 0
    )
    r2 = _last_json(capsys.readouterr().out)
    assert r2["reused_depth"] == 2 and r2["stages"][1]["hit"]
    assert r2["total_cost_seconds"] < r1["total_cost_seconds"]

    assert main(["cache", "ls", "--cache", cache, "--json"]) == 0
    ls = _last_json(capsys.readouterr().out)
    assert len(ls["entries"]) == 4 and ls["hits"] >= 1
    assert main(["cache", "gc", "--cache", cache, "--json", "--verify"]) == 0
    assert _last_json(capsys.readouterr().out)["corrupt"] == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "no-such-pipeline", "--params", "{}"],
        ["run", "synthetic-3stage", "--params", "{not json"],
        ["run", "synthetic-3stage", "--params", '{"s1_beale": {"x0": 99}}'],
        ["run", "synthetic-3stage"],
        ["run"],
        ["cache", "gc", "--tmp-grace", "-1"],
        ["bench", "cache", "--size-mb", "0"],
    ],
)
def test_bad_input_exits_2_with_one_line(argv: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "api.cli",
            *argv,
            *(["--cache", str(tmp_path / "c")] if argv[:1] == ["run"] and len(argv) > 1 else []),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0]
    assert not (tmp_path / "c" / "objects").exists()  # nothing stored


def test_bench_cache_prints_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "cache", "--size-mb", "2", "--repeats", "3", "--json"]) == 0
    res = _last_json(capsys.readouterr().out)
    assert res["hit_over_numpy_load_ratio"] > 0 and res["key_seconds"] > 0
