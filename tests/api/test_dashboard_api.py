"""``/v1/dashboard``: the page's data. Every trial arrives once through ``?after=N``, the
per-stage totals and the cache's saving agree with the stage runs, importance is a ranking
that sums to 1, a running study's new and finished trials show up, and reads (SQLite in WAL)
never block a writer."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import Settings
from api.store import StageRun, TrialResult, TrialState, open_store
from bench.dashboard import STAGES, fill_study

N = 600
TOKEN = "dash-api-token"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str, int]]:
    tmp: Path = tmp_path_factory.mktemp("dash-api")
    url = f"sqlite:///{tmp / 'db.sqlite'}"
    store = open_store(url)
    try:
        sid = fill_study(store, N, seed=4)
    finally:
        store.close()
    settings = Settings(home=tmp, db_url=url, cache=str(tmp / "cache"), workers=0, api_token=TOKEN)
    with TestClient(create_app(settings, background=False)) as c:
        yield c, url, sid


def _fetch_all(c: TestClient, sid: int, limit: int = 250) -> tuple[dict[int, Any], dict[str, Any]]:
    rows: dict[int, Any] = {}
    after = -1
    for _ in range(100):
        r = c.get(f"/v1/dashboard/studies/{sid}", params={"after": after, "limit": limit})
        assert r.status_code == 200, r.text
        v = r.json()
        for row in v["trials"]:
            rows[row["number"]] = row
        after = v["next_after"]
        if v["complete"] and not v["more"]:
            return rows, v
    raise AssertionError("the digest never completed")


def test_every_trial_once_with_totals_matching_the_stage_runs(
    setup: tuple[TestClient, str, int],
) -> None:
    c, url, sid = setup
    rows, view = _fetch_all(c, sid)
    assert sorted(rows) == list(range(N)) and view["loaded"] == N
    assert view["settled"] == N - 1 and view["study"]["id"] == sid
    store = open_store(url)
    try:
        trials = store.list_trials(sid, with_stages=True)
        st = store.get_study(sid)
    finally:
        store.close()
    assert st is not None
    for t in trials:
        row = rows[t.number]
        assert row["state"] == t.state.value and row["value"] == t.value
        assert row["reused"] == t.reused_depth
        assert row["params"]["s1_beale.x0"] == t.params["s1_beale"]["x0"]
    by_stage = {s["stage"]: s for s in view["stages"]}
    assert list(by_stage) == list(STAGES)
    for name in STAGES:
        runs = [r for t in trials for r in t.stages or () if r.stage == name]
        got = by_stage[name]
        assert got["runs"] == len(runs) and got["hits"] == sum(r.hit for r in runs)
        paid = sum(r.cost_seconds for r in runs if not r.hit)
        saved = sum(r.original_cost_seconds - r.load_seconds for r in runs if r.hit)
        assert got["compute_seconds"] == pytest.approx(paid)
        assert got["saved_seconds"] == pytest.approx(saved)
    total = sum(s["saved_seconds"] for s in view["stages"])
    assert view["saved_seconds"] == pytest.approx(total)
    paid_all = sum(s["compute_seconds"] + s["load_seconds"] for s in view["stages"])
    assert view["cache_share"] == pytest.approx(total / (total + paid_all))
    best = max(r["value"] for r in rows.values() if r["value"] is not None)
    assert best == st.best_value
    # a poll of a finished study from its settled number brings nothing new
    again = c.get(f"/v1/dashboard/studies/{sid}", params={"after": view["settled"]}).json()
    assert again["trials"] == [] and again["next_after"] == N - 1


def test_study_list_has_best_trials_spent_and_saving(setup: tuple[TestClient, str, int]) -> None:
    c, _, sid = setup
    _fetch_all(c, sid)
    items = c.get("/v1/dashboard/studies").json()["items"]
    (item,) = [i for i in items if i["study"]["id"] == sid]
    view = c.get(f"/v1/dashboard/studies/{sid}", params={"limit": 1}).json()
    assert item["complete"] and item["saved_seconds"] == pytest.approx(view["saved_seconds"])
    assert item["study"]["trials_done"] == N and item["study"]["best_value"] is not None
    assert item["study"]["cost_spent"] > 0


def test_importance_ranks_every_parameter(setup: tuple[TestClient, str, int]) -> None:
    c, _, sid = setup
    _fetch_all(c, sid)
    imp = c.get(f"/v1/dashboard/studies/{sid}/importance").json()
    names = {i["param"] for i in imp["items"]}
    assert names == {
        "s1_beale.x0",
        "s1_beale.x1",
        "s2_hartmann3.x0",
        "s2_hartmann3.x1",
        "s2_hartmann3.x2",
        "s3_branin.x0",
        "s3_branin.x1",
    }
    assert sum(i["importance"] for i in imp["items"]) == pytest.approx(1.0)
    scores = [i["importance"] for i in imp["items"]]
    assert scores == sorted(scores, reverse=True)
    assert imp["n_trials"] == N - N // 50 and imp["complete"]


def test_a_running_study_is_followed(setup: tuple[TestClient, str, int]) -> None:
    c, _, _ = setup
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = {
        "pipeline": "synthetic-3stage-flat",
        "budget_seconds": 100,
        "mode": "external",
        "optimizer": "random",
    }
    sid = c.post("/v1/studies", json=body, headers=auth).json()["id"]
    view = c.get(f"/v1/dashboard/studies/{sid}").json()
    assert view["trials"] == [] and view["next_after"] == -1
    t = c.post(f"/v1/studies/{sid}/ask", json={"worker": "w"}, headers=auth).json()
    view = c.get(f"/v1/dashboard/studies/{sid}", params={"after": view["next_after"]}).json()
    assert [(r["number"], r["state"]) for r in view["trials"]] == [(0, "RUNNING")]
    assert view["next_after"] == -1  # trial 0 is not finished: it is asked for again
    stages = [{"stage": s, "cost_seconds": 1.0} for s in STAGES]
    tell = {"worker": "w", "state": "COMPLETE", "value": 2.5, "stages": stages}
    assert (
        c.post(f"/v1/studies/{sid}/trials/{t['id']}/tell", json=tell, headers=auth).status_code
        == 200
    )
    view = c.get(f"/v1/dashboard/studies/{sid}", params={"after": view["next_after"]}).json()
    assert [(r["number"], r["state"], r["value"]) for r in view["trials"]] == [(0, "COMPLETE", 2.5)]
    assert view["next_after"] == 0 and view["study"]["best_value"] == 2.5
    assert [s["compute_seconds"] for s in view["stages"]] == [1.0, 1.0, 1.0]


def test_bad_requests_are_4xx_and_the_schemas_are_declared(
    setup: tuple[TestClient, str, int],
) -> None:
    c, _, _ = setup
    assert c.get("/v1/dashboard/studies/424242").status_code == 404
    assert c.get("/v1/dashboard/studies/424242/importance").status_code == 404
    assert c.get("/v1/dashboard/studies/1", params={"after": -2}).status_code == 422
    assert c.get("/v1/dashboard/studies/1", params={"limit": 0}).status_code == 422
    doc = c.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert {
        "DashboardStudyView",
        "DashboardStudyList",
        "DashboardImportance",
        "DashboardTrial",
        "StageCostOut",
    } <= set(schemas)
    view = doc["paths"]["/v1/dashboard/studies/{study_id}"]["get"]["responses"]["200"]
    assert view["content"]["application/json"]["schema"]["$ref"].endswith("/DashboardStudyView")


@pytest.mark.parametrize(
    ("path", "params", "needle"),
    [
        ("/v1/dashboard/studies/1", {"after": "abc"}, "after"),
        ("/v1/dashboard/studies/1", {"after": "1e3"}, "after"),
        ("/v1/dashboard/studies/1", {"after": 2**31}, "after"),
        ("/v1/dashboard/studies/1", {"limit": 10001}, "limit"),
        ("/v1/dashboard/studies/1", {"limit": -5}, "limit"),
        ("/v1/dashboard/studies/0", {}, "study_id"),
        ("/v1/dashboard/studies/99999999999", {}, "study_id"),
        ("/v1/dashboard/studies/x/importance", {}, "study_id"),
        ("/v1/studies/99999999999/trials.csv", {}, "study_id"),
    ],
)
def test_out_of_bounds_inputs_are_422_with_a_message_and_declared(
    setup: tuple[TestClient, str, int], path: str, params: dict[str, Any], needle: str
) -> None:
    c, _, _ = setup
    r = c.get(path, params=params)
    assert r.status_code == 422 and needle in r.json()["message"], r.text
    doc = c.get("/openapi.json").json()
    op = doc["paths"]["/v1/dashboard/studies/{study_id}"]["get"]
    bounds = {p["name"]: p["schema"] for p in op["parameters"]}
    assert (bounds["after"]["minimum"], bounds["after"]["maximum"]) == (-1, 2**31 - 1)
    assert (bounds["limit"]["minimum"], bounds["limit"]["maximum"]) == (1, 10000)
    assert (bounds["study_id"]["minimum"], bounds["study_id"]["maximum"]) == (1, 2**31 - 1)
    assert "422" in op["responses"] and "404" in op["responses"]


def test_an_open_read_never_blocks_a_write(setup: tuple[TestClient, str, int]) -> None:
    _, url, _ = setup
    path = url.removeprefix("sqlite:///")
    store = open_store(url)
    reader = sqlite3.connect(path, timeout=0.1)
    try:
        sid = fill_study(store, 2, seed=9, complete=False)
        st = store.get_study(sid)
        assert st is not None
        assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        reader.execute("BEGIN")
        n = reader.execute("SELECT count(*) FROM trials").fetchone()[0]  # a read snapshot
        from api.store import NewTrial

        added = store.add_trials(sid, [NewTrial({})], None, st.ask_version)
        assert added is not None
        claimed = store.claim_trial("w", study_id=sid)
        assert claimed is not None
        run = StageRun("s1_beale", 0, cost_seconds=1.0)
        done = store.finish_trial(
            claimed.id, "w", TrialResult(TrialState.COMPLETE, {"value": 1.0}, 1.0, 1.0, 0, [run])
        )
        assert done.state == TrialState.COMPLETE  # committed while the read is open
        assert reader.execute("SELECT count(*) FROM trials").fetchone()[0] == n  # its snapshot
        reader.execute("COMMIT")
        assert reader.execute("SELECT count(*) FROM trials").fetchone()[0] == n + 1
    finally:
        reader.close()
        store.close()
