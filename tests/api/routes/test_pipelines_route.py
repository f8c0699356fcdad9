"""``/v1/pipelines``: response models with metrics, and names that never become calls.

The app runs in this process (``TestClient``) so a test can see whether resolving a name
called anything: ``os.abort`` / ``os.getpid`` are replaced by recorders, and the allowed
test module records every call of its own functions.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import Settings
from tests.pipelines import resolve_target

MOD = "tests.pipelines.resolve_target"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp: Path = tmp_path_factory.mktemp("pipelines-route")
    settings = Settings(
        home=tmp,
        db_url=f"sqlite:///{tmp / 'db.sqlite'}",
        cache=str(tmp / "cache"),
        workers=0,
        allowed_pipeline_modules=(MOD,),
    )
    with TestClient(create_app(settings, background=False)) as c:
        yield c


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    resolve_target.CALLS.clear()
    real_getpid = os.getpid

    def fake(what: str) -> object:
        def f(*_a: object) -> int:
            caller = sys._getframe(1).f_code.co_filename
            if "logging" not in caller:  # log records ask for the pid: not a resolution
                resolve_target.CALLS.append(what)
            return real_getpid()

        return f

    monkeypatch.setattr(os, "abort", fake("os.abort"))
    monkeypatch.setattr(os, "getpid", fake("os.getpid"))
    yield resolve_target.CALLS
    resolve_target.CALLS.clear()


@pytest.mark.parametrize(
    "attr",
    [
        "os.abort",
        "os.getpid",
        "namespace.record",
        "unmarked",
        "record",
        "Builder",
        "os",
        "getpid",
        "not_a_pipeline",
        "nothing",
    ],
)
def test_names_that_are_not_pipelines_are_404_and_call_nothing(
    client: TestClient, calls: list[str], attr: str
) -> None:
    r = client.get(f"/v1/pipelines/{MOD}:{attr}")
    assert r.status_code == 404, r.text
    assert r.json()["message"]
    assert calls == []


def test_a_pipeline_and_a_marked_factory_resolve(client: TestClient, calls: list[str]) -> None:
    one = client.get(f"/v1/pipelines/{MOD}:pipeline")
    assert one.status_code == 200, one.text
    assert one.json()["name"] == "resolve-target" and one.json()["metrics"] == ["value"]
    assert calls == []
    two = client.get(f"/v1/pipelines/{MOD}:marked")
    assert two.status_code == 200, two.text
    assert two.json()["name"] == "resolve-target-marked"


def test_a_module_outside_the_allow_list_is_403(client: TestClient, calls: list[str]) -> None:
    r = client.get("/v1/pipelines/os:getpid")
    assert r.status_code == 403, r.text
    assert "EEIPU_ALLOWED_PIPELINE_MODULES" in r.json()["message"]
    assert calls == []


def test_malformed_names_are_404(client: TestClient) -> None:
    for name in ("nope", f"{MOD}:a.b.c", "a;b:c", "x" * 250 + ":y"):
        r = client.get(f"/v1/pipelines/{name}")
        assert r.status_code == 404, (name, r.text)


def test_a_factory_that_fails_is_503(client: TestClient, calls: list[str]) -> None:
    r = client.get(f"/v1/pipelines/{MOD}:broken")
    assert r.status_code == 503, r.text
    assert "data missing" in r.json()["message"]


def test_described_pipelines_include_metrics_and_defaults(client: TestClient) -> None:
    one = client.get("/v1/pipelines/synthetic-3stage").json()
    assert one["metrics"] == ["value", "raw_sum"]
    assert one["defaults"] == {}
    assert one["stages"][0]["space"]["x0"] == {
        "type": "float",
        "low": -4.5,
        "high": 4.5,
        "log": False,
        "choices": None,
    }
    listed = client.get("/v1/pipelines").json()
    syn = next(p for p in listed["items"] if p["name"] == "synthetic-3stage")
    assert syn["metrics"] == ["value", "raw_sum"] and syn["error"] is None
    assert listed["allowed_modules"] == [MOD]


def test_responses_are_declared_in_the_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    ok = paths["/v1/pipelines/{name}"]["get"]["responses"]
    assert ok["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/PipelineOut")
    assert {"403", "404"} <= set(ok)
    listing = paths["/v1/pipelines"]["get"]["responses"]["200"]["content"]["application/json"]
    assert listing["schema"]["$ref"].endswith("/PipelineList")
