"""``api.client.Client`` against a live server: studies, ask/tell, the ``trial`` block, errors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.client import (
    Client,
    ClientError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    ServerUnreachable,
    Study,
    _build,
)
from tests.api._server import LiveServer, free_port, start_server

BODY = {"pipeline": "synthetic-3stage", "optimizer": "random", "budget_seconds": 1000}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("client")
    srv = start_server(tmp, db_url=f"sqlite:///{tmp / 'c.db'}", workers=1)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(live: LiveServer) -> Iterator[Client]:
    with Client(live.url) as c:
        yield c


def _external(c: Client) -> Study:
    return c.create_study(**BODY, mode="external", seed=3)  # type: ignore[arg-type]


def test_create_ask_tell_best(client: Client) -> None:
    st = _external(client)
    assert st.id > 0 and st.state == "running" and st.mode == "external" and st.seed == 3
    assert client.study(st.id).pipeline == "synthetic-3stage"
    assert st.id in [s.id for s in client.studies()]
    assert st.id in [s.id for s in client.studies(state="running")]
    t = client.ask(st.id, "me")
    assert t.state == "RUNNING" and t.worker == "me" and len(t.stage_keys) == 3
    assert set(t.params) == {"s1_beale", "s2_hartmann3", "s3_branin"}
    assert t.reuse is not None and t.reuse["depth"] == 0
    done = client.tell(st.id, t.id, metrics={"value": -3.5}, cost_seconds=2.0, worker="me")
    assert done.state == "COMPLETE" and done.value == -3.5
    best = client.best(st.id)
    assert best.trial_id == t.id and best.value == -3.5 and best.params == t.params
    (only,) = client.trials(st.id, state="COMPLETE")
    assert only.id == t.id
    assert client.trials(st.id, state=["FAILED"]) == []
    assert client.study(st.id).cost_spent == 2.0


def test_trial_block_heartbeats_and_tells_complete(client: Client) -> None:
    st = _external(client)
    with client.trial(st.id, heartbeat_interval=0.05) as run:
        first = client.get_trial(st.id, run.id).heartbeat_at
        deadline = time.monotonic() + 30  # a bound on the wait, not an assertion on speed
        while client.get_trial(st.id, run.id).heartbeat_at == first:
            assert time.monotonic() < deadline, "no heartbeat arrived"
            time.sleep(0.02)
        assert set(run.params) == {"s1_beale", "s2_hartmann3", "s3_branin"}
        run.value = 1.25
        run.metrics = {"other": 2.0}
    assert run.result is not None and run.result.state == "COMPLETE"
    t = client.get_trial(st.id, run.id)
    assert t.state == "COMPLETE" and t.value == 1.25 and t.metrics == {"other": 2.0}


def test_trial_block_tells_failed_and_reraises(client: Client) -> None:
    st = _external(client)
    with pytest.raises(RuntimeError, match="boom"), client.trial(st.id) as run:
        raise RuntimeError("boom: out of memory")
    t = client.get_trial(st.id, run.id)
    assert t.state == "FAILED" and t.error is not None and "boom: out of memory" in t.error
    with pytest.raises(ValueError, match="neither value nor metrics"), client.trial(st.id) as run2:
        pass
    assert client.get_trial(st.id, run2.id).state == "FAILED"


def test_wait_for_a_managed_study(client: Client) -> None:
    st = client.create_study("synthetic-3stage", 15, "random")
    done = client.wait(st.id, timeout=300)
    assert done.state == "completed" and done.n_complete > 0
    assert client.best(done.id).value == done.best_value


def test_stop_resume_delete(client: Client) -> None:
    st = _external(client)
    assert client.stop(st.id).state == "stopped"
    with pytest.raises(ConflictError) as e:
        client.ask(st.id)
    assert e.value.status == 409 and "stopped" in e.value.message
    assert client.wait(st.id, timeout=0).state == "stopped"
    assert client.resume(st.id).state == "running"
    assert client.ask(st.id).state == "RUNNING"
    client.delete(st.id)
    with pytest.raises(NotFoundError) as nf:
        client.study(st.id)
    assert nf.value.status == 404 and nf.value.code == "not_found"
    assert f"study {st.id}" in nf.value.message


def test_errors_carry_the_servers_message(client: Client) -> None:
    with pytest.raises(InvalidRequestError) as e:
        client.create_study("synthetic-3stage", -1, "random")
    assert e.value.status == 422 and "budget_seconds" in e.value.message
    with pytest.raises(ClientError) as e2:
        client.create_study("no-such-pipeline", 10, "random")
    assert e2.value.status in (404, 422) and "no-such-pipeline" in e2.value.message
    assert "no-such-pipeline" in str(e2.value)
    with pytest.raises(NotFoundError):
        client.best(987654)
    dead = Client(f"http://127.0.0.1:{free_port()}", timeout=5)
    with dead, pytest.raises(ServerUnreachable) as u:
        dead.studies()
    assert u.value.status == 0 and "cannot reach" in u.value.message


def test_results_keep_fields_they_do_not_know(tmp_path: Path) -> None:
    st = _build(Study, {"id": 7, "state": "running", "shiny_new_field": [1]})
    assert st.id == 7 and st.extra == {"shiny_new_field": [1]}
    assert st.to_dict()["shiny_new_field"] == [1]
    with pytest.raises(ValueError, match="http"):
        Client(str(tmp_path))


def test_serve_prints_its_url(live: LiveServer) -> None:
    assert f"serving {live.url}" in live.output()
