"""``eeipu bench optimizers`` end to end on a tiny budget (files and the paper's metrics)."""

from __future__ import annotations

import csv
import inspect
import json
from pathlib import Path

import pytest

from api.cli import main


def test_bench_optimizers_writes_csv_table_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    argv = ["bench", "optimizers", "--pipeline", "synthetic-3stage-flat", "--seeds", "2"]
    argv += ["--budget", "22", "--optimizers", "random,eeipu", "--no-tpe", "--n-warmup", "3"]
    argv += ["--out", str(out), "--json"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    p = res["pipelines"]["synthetic-3stage-flat"]
    assert set(p["optimizers"]) == {"random", "eeipu"}
    assert "more_candidates_pct" in p["eeipu_vs"]["random"]
    assert (out / "trials.csv").read_text().count("\n") > 8
    assert "| eeipu |" in (out / "summary.md").read_text()
    assert (out / "synthetic-3stage-flat.png").stat().st_size > 1000
    assert len((out / "runs.jsonl").read_text().splitlines()) == 4


def test_bench_optimizers_rejects_unknown_optimizer(tmp_path: Path) -> None:
    argv = ["bench", "optimizers", "--optimizers", "nope", "--out", str(tmp_path)]
    assert main(argv) == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ('{"foo": 1}', "has no option 'foo'"),
        ('{"warmup": "sobol"}', "warmup must be"),
        ('{"objective_noise": -1}', "objective_noise must be"),
        ("[1]", "must be a JSON object"),
    ],
)
def test_bench_optimizers_rejects_bad_gp_options_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: str, message: str
) -> None:
    out = tmp_path / "report"
    argv = ["bench", "optimizers", "--pipeline", "synthetic-3stage", "--seeds", "1"]
    argv += ["--optimizers", "random,eeipu", "--no-tpe", "--out", str(out)]
    assert main([*argv, "--gp-options", options]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (out / "runs.jsonl").exists()  # nothing ran


def test_bench_optimizers_resume_keeps_finished_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r"
    base = ["bench", "optimizers", "--pipeline", "synthetic-3stage-flat", "--seeds", "2"]
    base += ["--budget", "20", "--no-tpe", "--out", str(out), "--json"]
    assert main([*base, "--optimizers", "random"]) == 0
    first = (out / "runs.jsonl").read_text().splitlines()
    assert main([*base, "--optimizers", "random,ei", "--n-warmup", "3", "--resume"]) == 0
    lines = (out / "runs.jsonl").read_text().splitlines()
    assert lines[:2] == first and len(lines) == 4
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(res["pipelines"]["synthetic-3stage-flat"]["optimizers"]) == {"random", "ei"}


def test_bench_optimizers_max_trials_caps_every_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cap"
    argv = ["bench", "optimizers", "--pipeline", "synthetic-3stage", "--seeds", "1"]
    argv += ["--optimizers", "random", "--no-tpe", "--max-trials", "4", "--out", str(out)]
    assert main([*argv, "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["max_trials"] == 4
    rand = res["pipelines"]["synthetic-3stage"]["optimizers"]["random"]
    assert rand["n_trials"]["mean"] == 4 and rand["capped_runs"] == 1
    assert "at most 4 trials" in (out / "summary.md").read_text()
    # Resuming with another cap does not keep the capped run.
    assert main([*argv[:-4], "--max-trials", "5", "--out", str(out), "--resume", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["pipelines"]["synthetic-3stage"]["optimizers"]["random"]["n_trials"]["mean"] == 5
    assert main([*argv[:-2], "--max-trials", "-1", "--out", str(out)]) == 2
    # 0 lifts the cap (the default is 600).
    assert main([*argv[:-4], "--max-trials", "0", "--out", str(out / "nocap"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["max_trials"] is None
    assert res["pipelines"]["synthetic-3stage"]["optimizers"]["random"]["capped_runs"] == 0


def test_bench_optimizers_real_pipeline_flags_at_tiny_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--fix (a whole stage: computed once, every run tunes the stages after it, fed its
    output), --warm-cache (the second pipeline also tuned in the first one's cache),
    --holdout-seeds (on the whole pipeline), --report."""
    out = tmp_path / "real"
    report = tmp_path / "benchmarks.md"
    report.write_text("# Benchmarks\n\n## Real pipelines\n\nold\n\n## Other\n\nkept\n")
    argv = ["bench", "optimizers", "--pipeline", "synthetic-3stage-flat"]
    argv += ["--pipeline", "synthetic-3stage", "--seeds", "1", "--budget", "15"]
    argv += ["--optimizers", "random,eeipu", "--no-tpe", "--n-warmup", "2"]
    argv += ["--fix", "s1_beale.x0=1.0", "--fix", "s1_beale.x1=0.5", "--warm-cache"]
    argv += ["--holdout-seeds", "2", "--holdout-metric", "value", "--count-proposal-time"]
    argv += ["--out", str(out), "--report", str(report), "--json"]
    code = main(argv)
    captured = capsys.readouterr()
    from api.tuning import tune

    if "count_proposal_time" not in inspect.signature(tune).parameters:
        assert code == 2 and "cannot count proposal time" in captured.err
        assert main([a for a in argv if a != "--count-proposal-time"]) == 0
        captured = capsys.readouterr()
    else:
        assert code == 0
    res = json.loads(captured.out.strip().splitlines()[-1])
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    # 2 optimizers x (flat cold, 3stage warm after flat, 3stage cold)
    assert sorted((r["pipeline"], r["scenario"]) for r in runs) == sorted(
        [("synthetic-3stage-flat", "cold"), ("synthetic-3stage", "warm")] * 2
        + [("synthetic-3stage", "cold")] * 2
    )
    for r in runs:
        assert {row["n_stages"] for row in r["rows"]} == {2}  # s1_beale is fixed: not tuned
        assert len(r["load_start"]) == 3 and r["wall_seconds"] > 0
        assert r["holdout"]["metric"] == "value" and len(r["holdout"]["values"]) == 2
        assert 0.0 <= r["cache_share"] <= 1.0
    p = res["pipelines"]["synthetic-3stage"]
    assert set(p["warm"]["optimizers"]) == {"random", "eeipu"}
    assert "equal_wall" in p and "reach_fraction" in p["eeipu_vs"]["random"]
    for kind in ("best", "candidates", "cache"):
        assert Path(p["plots"][kind]).stat().st_size > 1000
    text = report.read_text()
    assert text.count("## Real pipelines") == 1 and "\nold\n" not in text
    assert text.endswith("## Other\n\nkept\n")
    assert "`eeipu bench optimizers --pipeline synthetic-3stage-flat" in text
    assert "--fix s1_beale.x0=1.0" in text and "Where EEIPU does not win:" in text
    assert "load average" in text and "(img/real-synthetic-3stage-cache.png)" in text
    assert (tmp_path / "img" / "real-synthetic-3stage.png").exists()
    header = (out / "trials.csv").read_text().splitlines()[0]
    assert "wall_elapsed" in header and "scenario" in header


def test_bench_optimizers_fix_and_holdout_errors_exit_2(tmp_path: Path) -> None:
    base = ["bench", "optimizers", "--pipeline", "synthetic-3stage-flat", "--seeds", "1"]
    base += ["--optimizers", "random", "--no-tpe", "--out", str(tmp_path)]
    assert main([*base, "--fix", "nope.x=1"]) == 2
    assert main([*base, "--holdout-seeds", "-1"]) == 2
    assert main([*base, "--pipeline", "synthetic-3stage-flat"]) == 2


def test_bench_optimizers_jobs_spawn_workers_with_the_same_results(tmp_path: Path) -> None:
    """--jobs runs in spawned processes (a forked child of a parent that ran torch can hang
    in its first torch call); declared costs make the runs identical to --jobs 1."""
    base = ["bench", "optimizers", "--pipeline", "synthetic-3stage", "--seeds", "2"]
    base += ["--budget", "400", "--optimizers", "random", "--no-tpe", "--n-warmup", "2"]
    values = []
    for jobs in ("1", "2"):
        out = tmp_path / jobs
        assert main([*base, "--jobs", jobs, "--out", str(out)]) == 0
        runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
        values.append(sorted((r["seed"], [row["value"] for row in r["rows"]]) for r in runs))
        # checkpointed as each run finishes, reported in task order (seed-major)
        with open(out / "trials.csv") as fh:
            seeds = [int(row["seed"]) for row in csv.DictReader(fh)]
        assert seeds == sorted(seeds) and set(seeds) == {0, 1}
    assert len(values[0]) == 2 and all(len(v) > 1 for _, v in values[0])
    assert values[0] == values[1]


def test_bench_train_sizes_build_the_unlearning_pipeline_and_reject_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.optimizers import RealOptions, bench_pipeline

    pipe = bench_pipeline("multidelete", RealOptions(retrains=2, references=4))
    assert pipe.stages[1].name == "train" and pipe.stages[1].version.endswith(".e2.k4")
    assert bench_pipeline("multidelete", RealOptions()).stages[1].version.endswith(".e8.k32")
    base = ["bench", "optimizers", "--seeds", "1", "--optimizers", "random", "--no-tpe"]
    base += ["--out", str(tmp_path)]
    assert main([*base, "--pipeline", "synthetic-3stage", "--retrains", "2"]) == 2
    assert "apply to unlearning pipelines" in capsys.readouterr().err
    assert main([*base, "--pipeline", "multidelete", "--references", "1"]) == 2
    assert "n_references must be >= 2" in capsys.readouterr().err
