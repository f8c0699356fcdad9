"""Bad input gets a 4xx with a JSON message, never a 500."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api._server import LiveServer

OK = {"pipeline": "synthetic-3stage", "optimizer": "random", "budget_seconds": 10}


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({**OK, "pipeline": "no-such-pipeline"}, 422, "unknown pipeline"),
        ({**OK, "pipeline": "os:system"}, 403, "not in the allowed pipeline modules"),
        ({**OK, "pipeline": "tests.api.gated_pipeline:nope"}, 422, "no attribute"),
        ({**OK, "pipeline": ""}, 422, "pipeline"),
        ({**OK, "optimizer": "nope"}, 422, "unknown optimizer"),
        ({**OK, "budget_seconds": -5}, 422, "budget_seconds"),
        ({**OK, "budget_seconds": 0}, 422, "budget_seconds"),
        ({**OK, "budget_seconds": 1e12}, 422, "budget_seconds"),
        ({**OK, "budget_seconds": 1e8}, 422, "limit"),
        ({**OK, "budget_seconds": "lots"}, 422, "budget_seconds"),
        ({k: v for k, v in OK.items() if k != "budget_seconds"}, 422, "budget_seconds"),
        ({**OK, "max_trials": 0}, 422, "max_trials"),
        ({**OK, "direction": "sideways"}, 422, "direction"),
        ({**OK, "parallelism": 100000}, 422, "parallelism"),
        ({**OK, "fixed_params": {"nostage": {"x": 1}}}, 422, "unknown stage"),
        ({**OK, "fixed_params": {"s1_beale": {"zz": 1}}}, 422, "no parameter"),
        ({**OK, "fixed_params": {"s1_beale": {"x0": 99}}}, 422, "s1_beale.x0"),
        ({**OK, "fixed_params": {"s1_beale": 3}}, 422, "fixed_params"),
        ({**OK, "unknown_key": 1}, 422, "unknown_key"),
        ([1, 2], 422, "body"),
    ],
)
def test_bad_study_requests(api: LiveServer, body: Any, status: int, needle: str) -> None:
    r = api.client.post("/v1/studies", json=body)
    assert r.status_code == status, r.text
    err = r.json()
    assert needle in err["message"] and err["error"]


def test_malformed_json_and_oversized_body(api: LiveServer) -> None:
    r = api.client.post(
        "/v1/studies", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422 and "JSON" in r.json()["message"]
    big = {**OK, "name": "x" * (2 << 20)}
    r = api.client.post("/v1/studies", json=big)
    assert r.status_code == 413 and "exceeds" in r.json()["message"]


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/v1/studies/999999"),
        ("GET", "/v1/studies/999999/trials"),
        ("GET", "/v1/studies/999999/best"),
        ("POST", "/v1/studies/999999/stop"),
        ("POST", "/v1/studies/999999/resume"),
        ("DELETE", "/v1/studies/999999"),
        ("POST", "/v1/studies/999999/ask"),
        ("GET", "/v1/studies/999999/trials/1"),
        ("GET", "/v1/pipelines/nope"),
        ("GET", "/v1/no-such-route"),
    ],
)
def test_unknown_things_are_404(api: LiveServer, method: str, url: str) -> None:
    r = api.client.request(method, url)
    assert r.status_code == 404, r.text
    assert r.json()["message"]


@pytest.mark.parametrize(
    "url",
    [
        "/v1/studies/abc",
        "/v1/studies/0",
        "/v1/studies/99999999999999999999999",
        "/v1/studies?limit=0",
        "/v1/studies?limit=100000",
        "/v1/studies?state=bogus",
        "/v1/studies/1/trials?state=DONE",
        "/v1/studies/1/trials?offset=-1",
    ],
)
def test_bad_paths_and_queries_are_422(api: LiveServer, url: str) -> None:
    r = api.client.get(url)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_request" and r.json()["message"]


def test_state_conflicts_are_409(api: LiveServer) -> None:
    st = api.client.post("/v1/studies", json={**OK, "mode": "external", "max_trials": 1}).json()
    sid = st["id"]
    t = api.client.post(f"/v1/studies/{sid}/ask").json()
    bad_tell = api.client.post(
        f"/v1/studies/{sid}/trials/{t['id']}/tell", json={"metrics": {}, "worker": t["worker"]}
    )
    assert bad_tell.status_code == 422 and "objective" in bad_tell.json()["message"]
    nan = api.client.post(
        f"/v1/studies/{sid}/trials/{t['id']}/tell",
        content=b'{"value": NaN}',
        headers={"Content-Type": "application/json"},
    )
    assert nan.status_code == 422
    ok = api.client.post(
        f"/v1/studies/{sid}/trials/{t['id']}/tell", json={"value": 1.0, "worker": t["worker"]}
    )
    assert ok.status_code == 200
    again = api.client.post(
        f"/v1/studies/{sid}/trials/{t['id']}/tell", json={"value": 2.0, "worker": t["worker"]}
    )
    assert again.status_code == 409 and "COMPLETE" in again.json()["message"]
    more = api.client.post(f"/v1/studies/{sid}/ask")
    assert more.status_code == 409 and "completed" in more.json()["message"]
    assert api.client.get(f"/v1/studies/{sid}").json()["state"] == "completed"
    assert api.client.post(f"/v1/studies/{sid}/stop").status_code == 409
    assert api.client.post(f"/v1/studies/{sid}/resume").status_code == 409
