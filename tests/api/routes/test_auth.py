"""Bearer-token auth: every mutating endpoint answers 401 without the token."""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.api._server import ROOT, LiveServer
from tests.api.routes.conftest import TOKEN


def _mutating(api: LiveServer) -> list[tuple[str, str]]:
    spec = api.client.get("/openapi.json").json()
    out = []
    for path, ops in spec["paths"].items():
        for method in ops:
            if method in ("post", "put", "patch", "delete"):
                url = path.replace("{study_id}", "1").replace("{trial_id}", "1")
                out.append((method.upper(), url.replace("{key}", "abc")))
    return out


def test_every_mutating_endpoint_needs_the_token(api: LiveServer) -> None:
    endpoints = _mutating(api)
    assert len(endpoints) >= 9  # create, stop, resume, delete, ask, tell, heartbeat, evict, rm
    for method, url in endpoints:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = httpx.request(method, api.url + url, json={}, headers=headers, timeout=30)
            assert r.status_code == 401, (method, url, headers, r.text)
            body = r.json()
            assert body["error"] == "unauthorized" and "token" in body["message"]
            assert r.headers["www-authenticate"] == "Bearer"
    # With the token the same requests get past auth (whatever else they then say).
    for method, url in endpoints:
        r = api.client.request(method, url, json={})
        assert r.status_code != 401, (method, url)


def test_reads_need_no_token(api: LiveServer) -> None:
    for url in (
        "/healthz",
        "/readyz",
        "/v1/studies",
        "/v1/pipelines",
        "/v1/cache",
        "/openapi.json",
    ):
        # As generous as the suite's client: on a loaded machine a first read can take > 5 s.
        assert httpx.get(api.url + url, timeout=30).status_code == 200, url


def test_serve_refuses_a_public_address_without_a_token() -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-m", "api.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 2
    assert "refusing to bind 0.0.0.0" in r.stderr and "EEIPU_API_TOKEN" in r.stderr


def test_serve_rejects_bad_flags() -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    for flags, needle in ((["--port", "0"], "--port"), (["--workers", "-1"], "workers")):
        r = subprocess.run(
            [sys.executable, "-m", "api.cli", "serve", *flags],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
        )
        assert r.returncode == 2 and needle in r.stderr, r.stderr
