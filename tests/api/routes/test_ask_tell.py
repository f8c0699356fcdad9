"""Ask/tell for clients that run their own stages; trials paging; stop/resume/delete."""

from __future__ import annotations

from tests.api._server import LiveServer

BODY = {"pipeline": "synthetic-3stage", "optimizer": "random", "budget_seconds": 1000}


def test_ask_tell_round_trip(api: LiveServer) -> None:
    st = api.client.post("/v1/studies", json={**BODY, "mode": "external", "seed": 3}).json()
    sid = st["id"]
    a = api.client.post(f"/v1/studies/{sid}/ask", json={"worker": "me"})
    assert a.status_code == 200, a.text
    t = a.json()
    assert (
        t["state"] == "RUNNING"
        and t["worker"] == "me"
        and set(t["params"])
        == {
            "s1_beale",
            "s2_hartmann3",
            "s3_branin",
        }
    )
    assert t["reuse"]["depth"] == 0 and len(t["stage_keys"]) == 3
    hb = api.client.post(f"/v1/studies/{sid}/trials/{t['id']}/heartbeat", json={"worker": "me"})
    assert hb.status_code == 200
    other = api.client.post(
        f"/v1/studies/{sid}/trials/{t['id']}/tell", json={"value": 1.0, "worker": "someone"}
    )
    assert other.status_code == 409  # fenced: only the claimant may tell
    stages = [
        {"stage": "s1_beale", "cost_seconds": 1.0, "hit": False, "key": t["stage_keys"][0]},
        {"stage": "s2_hartmann3", "cost_seconds": 2.0},
        {"stage": "s3_branin", "cost_seconds": 0.5, "bytes": 10},
    ]
    r = api.client.post(
        f"/v1/studies/{sid}/trials/{t['id']}/tell",
        json={"metrics": {"value": -3.5, "other": 2}, "stages": stages, "worker": "me"},
    )
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["state"] == "COMPLETE" and done["value"] == -3.5 and done["cost_seconds"] == 3.5
    assert [s["stage"] for s in done["stages"]] == ["s1_beale", "s2_hartmann3", "s3_branin"]
    # A failed trial reported by the client.
    t2 = api.client.post(f"/v1/studies/{sid}/ask").json()
    f = api.client.post(
        f"/v1/studies/{sid}/trials/{t2['id']}/tell",
        json={"state": "FAILED", "error": "oom", "worker": t2["worker"]},
    )
    assert f.status_code == 200 and f.json()["state"] == "FAILED"
    s = api.client.get(f"/v1/studies/{sid}").json()
    assert s["n_complete"] == 1 and s["n_failed"] == 1 and s["trials_done"] == 2
    assert s["cost_spent"] == 3.5 and s["best_value"] == -3.5
    best = api.client.get(f"/v1/studies/{sid}/best").json()
    assert best["trial_id"] == t["id"] and best["params"] == t["params"]
    page = api.client.get(f"/v1/studies/{sid}/trials", params={"state": "FAILED"}).json()
    assert [x["id"] for x in page["items"]] == [t2["id"]] and page["total"] == 1


def test_paging_stop_resume_delete(api: LiveServer) -> None:
    st = api.client.post("/v1/studies", json={**BODY, "mode": "external"}).json()
    sid = st["id"]
    for _ in range(5):
        assert api.client.post(f"/v1/studies/{sid}/ask").status_code == 200
    p1 = api.client.get(f"/v1/studies/{sid}/trials", params={"limit": 2}).json()
    assert [t["number"] for t in p1["items"]] == [0, 1] and p1["total"] == 5
    assert p1["next_offset"] == 2
    inc = api.client.get(f"/v1/studies/{sid}/trials", params={"after": 2}).json()
    assert [t["number"] for t in inc["items"]] == [3, 4] and inc["total"] == 2
    p3 = api.client.get(f"/v1/studies/{sid}/trials", params={"limit": 2, "offset": 4}).json()
    assert [t["number"] for t in p3["items"]] == [4] and p3["next_offset"] is None
    assert api.client.post(f"/v1/studies/{sid}/stop").json()["state"] == "stopped"
    assert api.client.post(f"/v1/studies/{sid}/ask").status_code == 409
    assert api.client.get("/v1/studies", params={"state": "stopped"}).json()["total"] >= 1
    assert api.client.post(f"/v1/studies/{sid}/resume").json()["state"] == "running"
    assert api.client.delete(f"/v1/studies/{sid}").status_code == 204
    assert api.client.get(f"/v1/studies/{sid}").status_code == 404


def test_pipelines_and_cache(api: LiveServer) -> None:
    items = api.client.get("/v1/pipelines").json()["items"]
    syn = next(p for p in items if p["name"] == "synthetic-3stage")
    assert [s["name"] for s in syn["stages"]] == ["s1_beale", "s2_hartmann3", "s3_branin"]
    assert syn["space"]["s1_beale"]["x0"]["type"]
    one = api.client.get("/v1/pipelines/synthetic-10stage").json()
    assert len(one["stages"]) == 10
    c = api.client.get("/v1/cache").json()
    assert {"entries", "bytes", "hits", "compute_seconds_saved"} <= set(c)
    assert api.client.delete("/v1/cache/entries/" + "0" * 32).status_code == 404
    assert api.client.delete("/v1/cache/entries/deadbeef").status_code == 422
    assert api.client.post("/v1/cache/evict", json={}).status_code == 422
    assert api.client.post("/v1/cache/evict", json={"study_id": 999999}).status_code == 404
