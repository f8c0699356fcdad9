"""``count_proposal_time`` over HTTP: follows the pipeline by default, settable, validated."""

from __future__ import annotations

from tests.api._server import LiveServer

BODY = {"pipeline": "synthetic-3stage", "optimizer": "random", "budget_seconds": 100}


def test_declared_cost_pipelines_leave_proposal_time_out_by_default(api: LiveServer) -> None:
    st = api.client.post("/v1/studies", json={**BODY, "mode": "external"}).json()
    assert st["count_proposal_time"] is False
    again = api.client.get(f"/v1/studies/{st['id']}").json()
    assert again["count_proposal_time"] is False


def test_the_option_is_stored_as_given(api: LiveServer) -> None:
    r = api.client.post(
        "/v1/studies", json={**BODY, "mode": "external", "count_proposal_time": True}
    )
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert api.client.get(f"/v1/studies/{sid}").json()["count_proposal_time"] is True
    t = api.client.post(f"/v1/studies/{sid}/ask", json={"worker": "w"}).json()
    got = api.client.get(f"/v1/studies/{sid}/trials/{t['id']}").json()
    assert "proposal_seconds" in got


def test_a_non_boolean_is_refused(api: LiveServer) -> None:
    r = api.client.post("/v1/studies", json={**BODY, "count_proposal_time": "sometimes"})
    assert r.status_code == 422
    assert "count_proposal_time" in r.text
