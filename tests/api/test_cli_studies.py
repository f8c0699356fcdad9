"""``eeipu tune --db`` records into the store; ``eeipu studies`` reads it (store or server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api.cli import main
from tests.api._server import start_server


def _json(capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    return dict(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))


def test_tune_db_is_listed_by_studies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'tune.db'}"
    cache = str(tmp_path / "cache")
    args = ["tune", "synthetic-3stage", "--optimizer", "random", "--budget", "30"]
    assert main([*args, "--db", db, "--cache", cache, "--no-progress", "--json"]) == 0
    out = _json(capsys)
    sid = out["db"]["study_id"]
    assert main(["studies", "list", "--db", db, "--json"]) == 0
    (st,) = _json(capsys)["items"]
    assert st["id"] == sid and st["state"] == "completed"
    assert st["n_complete"] == out["n_trials"] - out["n_failed"]
    assert st["best_value"] == pytest.approx(out["best_value"])
    assert main(["studies", "show", str(sid), "--db", db, "--json"]) == 0
    shown = _json(capsys)
    assert len(shown["trials"]) == out["n_trials"]
    assert main(["studies", "best", str(sid), "--db", db, "--json"]) == 0
    best = _json(capsys)
    assert best["params"] == out["best_params"]
    assert main(["studies", "show", "999", "--db", db]) == 2
    assert "not found" in capsys.readouterr().err


def test_studies_through_the_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    srv = start_server(tmp_path, db_url=f"sqlite:///{tmp_path / 's.db'}", workers=1)
    try:
        sid = srv.api_client.create_study("synthetic-3stage", 20, "random").id
        srv.wait_study(sid)
        assert main(["studies", "list", "--server", srv.url]) == 0
        assert "completed" in capsys.readouterr().out
        assert main(["studies", "best", str(sid), "--server", srv.url, "--json"]) == 0
        best = _json(capsys)
        assert best["value"] == srv.api_client.study(sid).best_value
        assert main(["studies", "best", "12345", "--server", srv.url]) == 2
        err = capsys.readouterr().err
        assert "404" in err and "study 12345" in err and len(err.splitlines()) == 1
        assert main(["studies", "show", str(sid), "--server", srv.url, "--json"]) == 0
        shown = _json(capsys)
        assert shown["id"] == sid and len(shown["trials"]) == shown["n_trials"] > 0
    finally:
        srv.stop()


def test_cache_rm_by_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'tune.db'}"
    cache = str(tmp_path / "cache")
    args = ["tune", "synthetic-3stage", "--optimizer", "random", "--budget", "20"]
    assert main([*args, "--db", db, "--cache", cache, "--no-progress", "--json"]) == 0
    sid = _json(capsys)["db"]["study_id"]
    assert main(["cache", "ls", "--cache", cache, "--json"]) == 0
    before = len(_json(capsys)["entries"])
    assert before > 0
    assert main(["cache", "rm", "--study", str(sid), "--db", db, "--cache", cache]) == 0
    assert f"evicted {before} entries" in capsys.readouterr().out
    assert main(["cache", "rm", "--study", "99", "--db", db, "--cache", cache]) == 2
    assert main(["cache", "rm", "--cache", cache]) == 2
