"""``GET /v1/studies/{id}/trials.csv`` and ``eeipu studies export``: the same columns, every
trial, ISO 8601 timestamps; bad input is a 4xx or exit code 2 with one line."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.cli import main
from api.config import Settings
from api.store import open_store
from bench.dashboard import STAGES, fill_study
from tests.api._server import start_server

N = 60
TOKEN = "export-token"


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    tmp = tmp_path_factory.mktemp("export")
    url = f"sqlite:///{tmp / 'db.sqlite'}"
    store = open_store(url)
    try:
        sid = fill_study(store, N, seed=3)
    finally:
        store.close()
    return tmp, url, sid


@pytest.fixture(scope="module")
def client(filled: tuple[Path, str, int]) -> Iterator[TestClient]:
    tmp, url, _ = filled
    settings = Settings(home=tmp, db_url=url, cache=str(tmp / "cache"), workers=0, api_token=TOKEN)
    with TestClient(create_app(settings, background=False)) as c:
        yield c


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_has_every_trial_with_params_metrics_costs(
    client: TestClient, filled: tuple[Path, str, int]
) -> None:
    _, url, sid = filled
    r = client.get(f"/v1/studies/{sid}/trials.csv")  # a read: no token needed
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    rows = _rows(r.text)
    assert len(rows) == N
    store = open_store(url)
    try:
        trials = store.list_trials(sid, with_stages=True)
    finally:
        store.close()
    head = list(rows[0])
    for s in STAGES:
        assert f"stage.{s}.cost_seconds" in head and f"stage.{s}.hit" in head
    assert "param.s1_beale.x0" in head and "param.s3_branin.x1" in head
    assert "metric.value" in head and "metric.raw_sum" in head
    for t, row in zip(trials, rows, strict=True):
        assert int(row["number"]) == t.number and row["state"] == t.state.value
        assert int(row["reused_depth"]) == t.reused_depth
        assert int(row["reuse_depth"]) == t.reuse_depth
        assert float(row["param.s2_hartmann3.x1"]) == t.params["s2_hartmann3"]["x1"]
        finished = datetime.fromisoformat(row["finished_at"])
        assert finished.utcoffset() is not None
        assert finished.timestamp() == pytest.approx(t.finished_at, abs=1e-3)
        if t.state.value == "COMPLETE":
            assert float(row["value"]) == t.value
            assert float(row["metric.raw_sum"]) == pytest.approx(-t.value)
            assert t.stages is not None
            for run in t.stages:
                assert float(row[f"stage.{run.stage}.cost_seconds"]) == run.cost_seconds
                assert row[f"stage.{run.stage}.hit"] == ("true" if run.hit else "false")
        else:
            assert row["value"] == "" and row["error"] == "synthetic failure"


def test_csv_is_declared_and_refuses_bad_ids(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    op = doc["paths"]["/v1/studies/{study_id}/trials.csv"]["get"]
    assert "text/csv" in op["responses"]["200"]["content"]
    r = client.get("/v1/studies/9999/trials.csv")
    assert r.status_code == 404 and "9999" in r.json()["message"]
    assert client.get("/v1/studies/0/trials.csv").status_code == 422


def test_cli_export_matches_the_endpoint(
    client: TestClient, filled: tuple[Path, str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    tmp, url, sid = filled
    served = client.get(f"/v1/studies/{sid}/trials.csv").text
    assert main(["studies", "export", str(sid), "--db", url]) == 0
    assert capsys.readouterr().out == served
    out = tmp / "export.json"
    assert (
        main(["studies", "export", str(sid), "--db", url, "--format", "json", "--out", str(out)])
        == 0
    )
    doc = json.loads(out.read_text())
    assert doc["columns"] == list(_rows(served)[0])
    assert len(doc["trials"]) == N and doc["study"]["id"] == sid
    first = doc["trials"][0]
    assert set(first) == set(doc["columns"])
    assert isinstance(first["stage.s1_beale.hit"], bool)
    assert datetime.fromisoformat(first["created_at"]).utcoffset() is not None


@pytest.mark.parametrize(
    "argv",
    [
        ["studies", "export", "424242"],
        ["studies", "export", "x"],
        ["studies", "export", "1", "--format", "xml"],
    ],
)
def test_cli_export_bad_input_is_one_line(
    argv: list[str], filled: tuple[Path, str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    _, url, _ = filled
    try:
        rc = main([*argv, "--db", url])
    except SystemExit as e:  # argparse refuses the usage itself
        rc = int(e.code or 0)
    assert rc == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_export_through_a_server_with_a_token(
    filled: tuple[Path, str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, url, sid = filled
    assert main(["studies", "export", str(sid), "--db", url]) == 0
    local = capsys.readouterr().out
    srv = start_server(tmp_path, db_url=url, workers=0, token=TOKEN)
    try:
        args = ["studies", "export", str(sid), "--server", srv.url, "--token", TOKEN]
        assert main(args) == 0
        assert capsys.readouterr().out == local
        assert srv.client.get(f"/v1/studies/{sid}/trials.csv").text == local
        assert main([*args, "--format", "json"]) == 0
        assert len(json.loads(capsys.readouterr().out)["trials"]) == N
        assert main(["studies", "export", "777", "--server", srv.url]) == 2
        assert "404" in capsys.readouterr().err
    finally:
        srv.stop()


FORMULAS = ['=HYPERLINK("http://x","y")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int]:
    """A study whose failed trials' errors are spreadsheet formulas and CSV-breaking text."""
    from api.store import NewTrial, StudySpec, TrialResult, TrialState

    tmp = tmp_path_factory.mktemp("hostile")
    url = f"sqlite:///{tmp / 'db.sqlite'}"
    store = open_store(url)
    try:
        spec = StudySpec("synthetic-3stage-flat", "random", 100.0, "value", "maximize")
        st = store.create_study(spec, None)
        texts = [*FORMULAS, 'a, "quoted"\r\nline', "plain"]
        news = [NewTrial({"s1_beale": {"x0": -1.5}}) for _ in texts]
        added = store.add_trials(st.id, news, None, st.ask_version)
        assert added is not None
        for t, text in zip(added, texts, strict=True):
            store.claim_trial("w", study_id=st.id)
            store.finish_trial(t.id, "w", TrialResult(TrialState.FAILED, error=text))
        ok = store.add_trials(
            st.id, [NewTrial({"s1_beale": {"x0": 2.0}})], None, st.ask_version + 1
        )
        assert ok is not None
        store.claim_trial("w", study_id=st.id)
        store.finish_trial(ok[0].id, "w", TrialResult(TrialState.COMPLETE, {"=m": -7.0}, -7.0, 1.0))
    finally:
        store.close()
    return url, int(st.id)


def test_csv_cells_are_safe_in_a_spreadsheet(
    hostile: tuple[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    url, sid = hostile
    assert main(["studies", "export", str(sid), "--db", url]) == 0
    text = capsys.readouterr().out
    rows = _rows(text)
    errors = [r["error"] for r in rows]
    for f in FORMULAS:  # shown as text, never evaluated: a leading apostrophe
        assert "'" + f in errors
    assert 'a, "quoted"\r\nline' in errors and "plain" in errors  # RFC 4180 quoting round-trips
    for r in rows:  # every cell: a spreadsheet formula never starts one
        assert not any(str(v).startswith(("=", "+", "@", "\t", "\r")) for v in r.values()), r
    # numbers stay numbers: a negative parameter or value is not prefixed
    assert {r["param.s1_beale.x0"] for r in rows} == {"-1.5", "2.0"}
    done = next(r for r in rows if r["state"] == "COMPLETE")
    assert done["value"] == "-7.0" and done["metric.=m"] == "-7.0"
    # the JSON export keeps the text as it is
    assert main(["studies", "export", str(sid), "--db", url, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {t["error"] for t in doc["trials"]} >= set(FORMULAS)


def test_exports_read_the_store_a_page_at_a_time(
    filled: tuple[Path, str, int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Memory stays that of a page: no read asks for every trial at once, and the CSV comes
    out in several chunks (not one string of the whole study)."""
    from api.report import export
    from api.store.sql import SQLTrialStore

    _, url, sid = filled
    monkeypatch.setattr(export, "PAGE", 7)
    monkeypatch.setattr(export, "PAGE_HEADER", 11)
    limits: list[int | None] = []
    real_list, real_json = SQLTrialStore.list_trials, SQLTrialStore.trials_json

    def list_trials(self: SQLTrialStore, *a: object, **kw: object) -> object:
        limits.append(kw.get("limit"))  # type: ignore[arg-type]
        return real_list(self, *a, **kw)  # type: ignore[arg-type]

    def trials_json(self: SQLTrialStore, *a: object, **kw: object) -> object:
        limits.append(kw.get("limit"))  # type: ignore[arg-type]
        return real_json(self, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(SQLTrialStore, "list_trials", list_trials)
    monkeypatch.setattr(SQLTrialStore, "trials_json", trials_json)
    for fmt in ("csv", "json"):
        limits.clear()
        assert main(["studies", "export", str(sid), "--db", url, "--format", fmt]) == 0
        out = capsys.readouterr().out
        assert limits and all(n is not None and n <= 11 for n in limits), limits
        assert len(limits) >= N // 7 + N // 11
        if fmt == "csv":
            assert len(_rows(out)) == N
        else:
            assert len(json.loads(out)["trials"]) == N
    store = open_store(url)
    try:
        chunks = list(export.csv_chunks(store, sid, STAGES))
    finally:
        store.close()
    assert len(chunks) == 1 + -(-N // 7)  # the header, then one chunk per page


def test_cli_export_refuses_bad_ids_servers_and_outs(
    filled: tuple[Path, str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2 with one line naming the problem, and no file written (nor a half one)."""
    _, url, sid = filled
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    cases = [
        (["99999999999999999999", "--db", url], "id"),
        (["424242", "--db", url, "--out", str(tmp_path / "a.csv")], "424242"),
        ([str(sid), "--server", "http://127.0.0.1:1", "--out", str(tmp_path / "b.csv")], "reach"),
        ([str(sid), "--db", url, "--out", str(afile / "c.csv")], "file.txt"),
        ([str(sid), "--db", url, "--out", str(tmp_path)], "directory"),
        ([str(sid), "--db", url, "--out", ""], "--out"),
    ]
    for argv, needle in cases:
        try:
            rc = main(["studies", "export", *argv])
        except SystemExit as e:  # argparse refuses the usage itself
            rc = int(e.code or 0)
        assert rc == 2, argv
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err and needle in lines[0], (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_cli_export_out_replaces_a_link_instead_of_following_it(
    filled: tuple[Path, str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, url, sid = filled
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    out = tmp_path / "trials.csv"
    out.symlink_to(outside)
    assert main(["studies", "export", str(sid), "--db", url, "--out", str(out)]) == 0
    assert outside.read_text() == "keep me" and not out.is_symlink()
    assert len(_rows(out.read_text())) == N
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside.txt", "trials.csv"]
    capsys.readouterr()
