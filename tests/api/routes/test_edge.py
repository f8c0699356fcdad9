"""The HTTP edge: bounded numbers, cache keys, non-finite stored values, Host/Origin/content
type checks, auth before the body, and statuses the OpenAPI document promises."""

from __future__ import annotations

import http.client
import json
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.api._server import LiveServer, start_server
from tests.api.routes.conftest import TOKEN

EXTERNAL = {
    "pipeline": "synthetic-3stage",
    "optimizer": "random",
    "budget_seconds": 100,
    "mode": "external",
}


@pytest.fixture(scope="module")
def open_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server without a token (the loopback default), on a SQLite file the tests edit."""
    tmp = tmp_path_factory.mktemp("edge")
    srv = start_server(tmp, db_url=f"sqlite:///{tmp / 'db.sqlite'}", workers=0)
    try:
        yield srv
    finally:
        srv.stop()


def _db(srv: LiveServer) -> Path:
    return Path(srv.args[srv.args.index("--db") + 1].removeprefix("sqlite:///"))


def _ask(srv: LiveServer, **extra: Any) -> tuple[int, dict[str, Any]]:
    st = srv.client.post("/v1/studies", json={**EXTERNAL, **extra})
    assert st.status_code == 201, st.text
    sid = st.json()["id"]
    t = srv.client.post(f"/v1/studies/{sid}/ask")
    assert t.status_code == 200, t.text
    return sid, t.json()


def test_huge_stage_costs_are_refused_and_nothing_is_committed(open_api: LiveServer) -> None:
    sid, t = _ask(open_api)
    stages = [
        {"stage": "s1_beale", "cost_seconds": 1e308, "load_seconds": 1e308},
    ]
    r = open_api.client.post(
        f"/v1/studies/{sid}/trials/{t['id']}/tell", json={"value": 1.0, "stages": stages}
    )
    assert r.status_code == 422, r.text
    assert "cost_seconds" in r.json()["message"]
    # Each under the bound but together over it: refused too.
    half = [{"stage": "s1_beale", "cost_seconds": 6e8, "load_seconds": 6e8}]
    r = open_api.client.post(
        f"/v1/studies/{sid}/trials/{t['id']}/tell", json={"value": 1.0, "stages": half}
    )
    assert r.status_code == 422 and "total" in r.json()["message"], r.text
    st = open_api.client.get(f"/v1/studies/{sid}").json()
    assert st["cost_spent"] == 0 and st["n_complete"] == 0
    trial = open_api.client.get(f"/v1/studies/{sid}/trials/{t['id']}").json()
    assert trial["state"] == "RUNNING" and trial["stages"] == []


@pytest.mark.parametrize(
    "body",
    [
        {"value": 1e301},
        {"metrics": {"y": -1e301}},
        {"cost_seconds": 2e9},
        {"stages": [{"stage": "s1_beale", "bytes": 2**63}]},
        {"stages": [{"stage": "s1_beale", "key": "../victim/secret"}]},
        {"stages": [{"stage": "s1_beale", "key": "a" * 31 + "\x00"}]},
    ],
)
def test_tell_bounds(open_api: LiveServer, body: dict[str, Any]) -> None:
    sid, t = _ask(open_api)
    r = open_api.client.post(f"/v1/studies/{sid}/trials/{t['id']}/tell", json=body)
    assert r.status_code == 422, r.text
    assert open_api.client.get(f"/v1/studies/{sid}").json()["n_complete"] == 0


def test_stored_infinity_reads_as_null(open_api: LiveServer) -> None:
    sid, t = _ask(open_api)
    r = open_api.client.post(
        f"/v1/studies/{sid}/trials/{t['id']}/tell", json={"value": 1.0, "worker": t["worker"]}
    )
    assert r.status_code == 200, r.text
    with sqlite3.connect(_db(open_api)) as c:
        c.execute(
            "UPDATE studies SET cost_spent = 9e999, budget_seconds = 9e999 WHERE id = ?",
            (sid,),
        )
        c.execute(
            "UPDATE trials SET value = 9e999, cost_seconds = 9e999, predicted_cost = -9e999,"
            " metrics = '{\"y\": Infinity}' WHERE id = ?",
            (t["id"],),
        )
    for url in (
        f"/v1/studies/{sid}",
        f"/v1/studies/{sid}/best",
        "/v1/studies?limit=1000",
        f"/v1/studies/{sid}/trials",
        f"/v1/studies/{sid}/trials?stages=true",
        f"/v1/studies/{sid}/trials/{t['id']}",
    ):
        r = open_api.client.get(url)
        assert r.status_code == 200, (url, r.text)
        bad: list[str] = []
        json.loads(r.text, parse_constant=bad.append)
        assert not bad, (url, r.text)
    st = open_api.client.get(f"/v1/studies/{sid}").json()
    # What a stored infinity reads as is the store's choice (null, or a repaired number).
    for name in ("cost_spent", "budget_seconds", "overshoot_seconds"):
        assert st[name] is None or math.isfinite(st[name]), (name, st[name])
    assert st["overshoot_seconds"] is None or st["overshoot_seconds"] >= 0


def test_cache_keys_are_checked(open_api: LiveServer, tmp_path: Path) -> None:
    cache = Path(open_api.args[open_api.args.index("--cache") + 1])
    victim = cache.parent / "victim"
    victim.mkdir(exist_ok=True)
    (victim / "secret").write_text("keep")
    for keys in (["../victim/secret"], ["a" * 31 + "\x00"], ["A" * 32], ["0" * 33]):
        r = open_api.client.post("/v1/cache/evict", json={"keys": keys})
        assert r.status_code == 422, r.text
        assert "key" in r.json()["message"]
    for path in ("..%2Fvictim%2Fsecret", "%00" * 32, "x" * 32):
        r = open_api.client.delete(f"/v1/cache/entries/{path}")
        assert r.status_code in (404, 422), r.text  # 404: a path the router cannot match
        assert r.status_code != 200
    assert (victim / "secret").read_text() == "keep"
    r = open_api.client.post("/v1/cache/evict", json={"keys": ["0" * 32]})
    assert r.status_code == 200 and r.json() == {"deleted": [], "missing": ["0" * 32]}


def test_study_options_round_trip(open_api: LiveServer) -> None:
    body = {
        "pipeline": "synthetic-3stage",
        "budget_seconds": 50,
        "mode": "external",
        "run_seed": 7,
        "budget_margin": 2.5,
        "max_consecutive_failures": 3,
    }
    r = open_api.client.post("/v1/studies", json=body)
    assert r.status_code == 201, r.text
    st = r.json()
    assert st["optimizer"] == "eeipu"
    assert st["run_seed"] == 7 and st["budget_margin"] == 2.5
    assert st["max_consecutive_failures"] == 3 and st["overshoot_seconds"] == 0
    for bad in ({"budget_margin": -1}, {"max_consecutive_failures": 0}, {"run_seed": -1}):
        assert open_api.client.post("/v1/studies", json={**body, **bad}).status_code == 422


def _raw(srv: LiveServer, method: str, path: str, body: bytes, headers: dict[str, str]) -> Any:
    u = urlsplit(srv.url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host="Host" in headers)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        if body:
            conn.send(body)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_foreign_host_origin_and_content_type(open_api: LiveServer) -> None:
    port = urlsplit(open_api.url).port
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert _raw(open_api, "GET", "/v1/studies", b"", {"Host": host})[0] == 200
    status, _, text = _raw(open_api, "GET", "/v1/studies", b"", {"Host": f"evil.example:{port}"})
    assert status == 400 and b"host" in text
    sid = open_api.client.post("/v1/studies", json=EXTERNAL).json()["id"]
    r = open_api.client.post(f"/v1/studies/{sid}/stop", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403, r.text
    r = open_api.client.post(
        f"/v1/studies/{sid}/stop", headers={"Origin": f"http://localhost:{port}"}
    )
    assert r.status_code == 200, r.text
    r = open_api.client.post(
        "/v1/studies", content=json.dumps(EXTERNAL), headers={"Content-Type": "text/plain"}
    )
    assert r.status_code == 415, r.text
    assert open_api.client.get(f"/v1/studies/{sid}").json()["state"] == "stopped"


def test_statuses_match_the_document(open_api: LiveServer) -> None:
    r = open_api.client.put("/v1/studies")
    assert r.status_code == 405 and "GET" in r.headers["allow"] and "POST" in r.headers["allow"]

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    r = open_api.client.post(
        "/v1/studies", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413, r.text
    doc = open_api.client.get("/openapi.json").json()
    create = doc["paths"]["/v1/studies"]["post"]["responses"]
    assert {"201", "400", "401", "403", "404", "409", "413", "415", "422"} <= set(create)
    limit = doc["components"]["schemas"]["StudyCreate"]["properties"]["budget_seconds"]
    assert limit["maximum"] == 30 * 86400.0
    assert doc["paths"]["/v1/studies/{study_id}/trials"]["get"]["responses"]["200"]


def test_auth_comes_before_the_body(api: LiveServer) -> None:
    for body in (b"{not json", b'{"pipeline": 1}'):
        r = httpx.post(
            api.url + "/v1/studies", content=body, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 401, r.text
    r = httpx.post(
        api.url + "/v1/studies",
        content=b"{not json",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )
    assert r.status_code == 422


def test_readyz_reports_an_unwritable_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    srv = start_server(
        tmp_path, db_url=f"sqlite:///{tmp_path / 'db.sqlite'}", workers=0, cache=str(cache)
    )
    try:
        assert srv.client.get("/readyz").status_code == 200
        # The folder turns into a file: nothing can be written under it any more.
        for p in sorted(cache.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        cache.rmdir()
        cache.write_text("not a folder")
        r = srv.client.get("/readyz")
        assert r.status_code == 503, r.text
        assert r.json()["checks"]["cache"].startswith("not writable")
    finally:
        srv.stop()
