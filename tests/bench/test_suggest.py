"""``eeipu bench suggest``: proposal times and the objective GP's held-out fit per size."""

from __future__ import annotations

import json

import pytest

from api.cli import main


def test_suggest_reports_times_and_fit_of_subset_and_exact_gp(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["bench", "suggest", "--sizes", "20", "40", "--repeats", "2", "--holdout", "30"]
    argv += ["--full-gp-max", "40", "--gp-options", '{"max_points": 24}', "--json"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(res["median_seconds"]) == {"20", "40"}
    assert all(len(res["times_seconds"][k]) == 2 for k in ("20", "40"))
    assert res["n_cached_prefixes"]["20"] < res["n_cached_prefixes"]["40"]
    fit = res["fit"]
    assert fit["20"]["points"] == 20 and fit["40"]["points"] == 24  # the subset above 24
    assert fit["40"]["full"]["points"] == 40  # the exact GP on every observation
    for q in (fit["20"], fit["40"], fit["40"]["full"]):
        assert q["rmse"] > 0 and q["log_likelihood"] < 50
        assert q["rmse_raw"] >= 0
        assert q["log_cost_rmse"] > 0 and q["cost_points"] >= 2  # the cost GPs' fit too


@pytest.mark.parametrize(
    "extra",
    [["--sizes", "5"], ["--repeats", "0"], ["--gp-options", "[1]"], ["--holdout", "1"]],
)
def test_suggest_rejects_bad_arguments(
    extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "suggest", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--" in err[0]
