"""``eeipu pipelines [NAME]``: spaces, defaults and metrics; bad names exit 2 with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from api.cli import main
from pipelines import get_pipeline

ROOT = Path(__file__).resolve().parents[2]


def test_listing_names_every_builtin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pipelines"]) == 0
    names = capsys.readouterr().out.split()
    assert "forget-mi" in names and "synthetic-3stage" in names


def test_a_description_shows_spaces_defaults_and_metrics(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["pipelines", "forget-mi"]) == 0
    out = capsys.readouterr().out
    metrics_line = next(x for x in out.splitlines() if x.startswith("metrics"))
    assert metrics_line.startswith("metrics (valid --objective values): ")
    listed = metrics_line.split(": ", 1)[1].split(", ")
    assert "objective" in listed and "retrain_score" in listed and "info_d_mu" in listed
    pipe = get_pipeline("forget-mi")
    lines = out.splitlines()
    for stage in pipe.stages:
        assert f"stage {stage.name} (version {stage.version}):" in out
        for name in stage.space:
            assert any(x.split()[:1] == [name] for x in lines), name
    assert any(
        x.split()[:4] == ["text_encoder", "categorical", "choices", '"tfidf",'] for x in lines
    )


def test_json_description_includes_metrics_and_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["pipelines", "synthetic-3stage", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["metrics"] == ["value", "raw_sum"] and d["defaults"] == {}
    assert d["stages"][0]["space"]["x0"] == {
        "type": "float",
        "low": -4.5,
        "high": 4.5,
        "log": False,
    }


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no-such-pipeline", "unknown pipeline"),
        ("os:getpid", "not a Pipeline or a factory marked"),
        ("os:path.join", "must look like"),
    ],
)
def test_bad_names_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], name: str, message: str
) -> None:
    assert main(["pipelines", name]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_a_reader_that_stops_early_gets_no_traceback() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = f"{sys.executable} -m api.cli pipelines forget-mi | head -1"
    r = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0
    assert r.stdout.startswith("forget-mi: ") and r.stdout.count("\n") == 1
    assert r.stderr == ""
