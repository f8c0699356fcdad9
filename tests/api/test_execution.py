"""End-to-end over real HTTP against ``eeipu serve`` (uvicorn on loopback, subprocesses).

Every wait is bounded by a generous deadline; no assertion depends on timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api._server import ROOT, LiveServer, restart, start_server

GATED = "tests.api.gated_pipeline:pipeline"


def _create(srv: LiveServer, **body: Any) -> dict[str, Any]:
    r = srv.client.post("/v1/studies", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _trials(srv: LiveServer, study_id: int, **q: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = srv.client.get(
            f"/v1/studies/{study_id}/trials", params={"offset": offset, "limit": 100, **q}
        ).json()
        out += page["items"]
        if page["next_offset"] is None:
            return out
        offset = page["next_offset"]


def _wait(cond: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_study_completes_with_two_workers_and_next_study_reuses_cache(
    server: LiveServer,
) -> None:
    st = _create(server, pipeline="synthetic-3stage-flat", optimizer="random", budget_seconds=40)
    assert st["state"] == "running" and st["parallelism"] == 2
    done = server.wait_study(st["id"])
    assert done["state"] == "completed", done
    trials = _trials(server, st["id"])
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    assert complete and done["n_complete"] == len(complete)
    assert done["trials_done"] == len([t for t in trials if t["state"] in ("COMPLETE", "FAILED")])
    assert done["cost_spent"] == pytest.approx(sum(t["cost_seconds"] or 0 for t in trials))
    best = server.client.get(f"/v1/studies/{st['id']}/best").json()
    assert done["best"] == {"value": best["value"], "trial_id": best["trial_id"]}
    top = max(complete, key=lambda t: t["value"])
    assert best["value"] == top["value"] and best["trial_id"] == top["id"]
    assert best["params"] == top["params"]
    assert {t["number"] for t in trials} == set(range(len(trials)))
    assert len(workers := {t["worker"] for t in complete}) >= 1 and all(workers)

    # Same seed and optimizer: the second study proposes the same configurations and finds
    # their stages in the cache the first study filled.
    st2 = _create(
        server,
        pipeline="synthetic-3stage-flat",
        optimizer="random",
        budget_seconds=40,
        max_trials=3,
    )
    done2 = server.wait_study(st2["id"])
    assert done2["state"] == "completed"
    t2 = _trials(server, st2["id"], stages=True)
    reused = [t for t in t2 if (t["reused_depth"] or 0) > 0]
    assert reused, t2
    assert all(s["hit"] for t in reused for s in t["stages"][: t["reused_depth"]])
    assert done2["cost_spent"] < sum(t["cost_seconds"] for t in complete[:3])
    cache = server.client.get("/v1/cache", params={"pipeline": "synthetic-3stage-flat"}).json()
    assert cache["hits"] > 0 and cache["compute_seconds_saved"] > 0 and cache["bytes"] > 0
    # Eviction by study: the entries the first study computed go, over HTTP.
    ev = server.client.post("/v1/cache/evict", json={"study_id": st["id"]}).json()
    assert ev["deleted"] and not ev["missing"]
    after = server.client.get("/v1/cache", params={"pipeline": "synthetic-3stage-flat"}).json()
    assert after["count"] == cache["count"] - len(ev["deleted"])


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    return tmp_path / "gate-open"


def _gated_server(tmp_path: Path, db_url: str, gate: Path, workers: int = 2) -> LiveServer:
    return start_server(
        tmp_path,
        db_url=db_url,
        workers=workers,
        extra_env={
            "EEIPU_ALLOWED_PIPELINE_MODULES": "tests.api.gated_pipeline",
            "EEIPU_TEST_GATE": str(gate),
        },
    )


def test_killed_worker_trial_is_retried(tmp_path: Path, sqlite_url: str, gate: Path) -> None:
    srv = _gated_server(tmp_path, sqlite_url, gate)
    try:
        st = _create(srv, pipeline=GATED, optimizer="random", budget_seconds=1000, max_trials=3)
        running = _wait(lambda: _trials(srv, st["id"], state="RUNNING"), "a trial to start", 60)
        victim = running[0]
        pid = int(victim["worker"].split(":")[1])
        os.kill(pid, signal.SIGKILL)  # mid-trial: it is blocked at the gate
        # The supervisor notices the death, gives the trial back and starts a new worker.
        _wait(
            lambda: (
                srv.client.get(f"/v1/studies/{st['id']}/trials/{victim['id']}").json()["attempts"]
                >= 2
            ),
            "the trial to be retried",
        )
        gate.touch()
        done = srv.wait_study(st["id"])
        assert done["state"] == "completed" and done["n_complete"] == 3 and done["n_failed"] == 0
        t = srv.client.get(f"/v1/studies/{st['id']}/trials/{victim['id']}").json()
        assert t["state"] == "COMPLETE" and t["attempts"] == 2
        trials = _trials(srv, st["id"])  # nothing counted twice: one result per trial
        assert [x["number"] for x in trials] == [0, 1, 2]
        assert done["cost_spent"] == pytest.approx(sum(x["cost_seconds"] for x in trials))
        assert t["failures"][0]["worker"] == victim["worker"] and t["worker"] != victim["worker"]
        # The trial may be handed back (heartbeat reaper) before the supervisor's next poll
        # replaces the dead worker: wait for the replacement rather than race it.
        w = _wait(
            lambda: (lambda w: w if w["replaced"] >= 1 else None)(
                srv.client.get("/v1/workers").json()
            ),
            "the dead worker to be replaced",
        )
        assert all(p["alive"] for p in w["workers"])
    finally:
        srv.stop()


def test_server_killed_and_restarted_resumes_without_loss_or_duplicates(
    tmp_path: Path, sqlite_url: str, gate: Path
) -> None:
    """kill -9 the server AND its workers mid-study (a crashed machine), then restart."""
    from eeipu import make_optimizer
    from tests.api.gated_pipeline import pipeline

    srv = _gated_server(tmp_path, sqlite_url, gate)
    n = 6
    st = _create(srv, pipeline=GATED, optimizer="random", budget_seconds=1000, max_trials=n, seed=7)
    _wait(lambda: len(_trials(srv, st["id"], state="RUNNING")) == 2, "2 running trials")
    pids = [p["pid"] for p in srv.client.get("/v1/workers").json()["workers"]]
    srv.kill()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    srv2 = restart(srv)
    try:
        gate.touch()
        # The dead workers' trials have no heartbeat: the new server's reaper gives them back.
        done = srv2.wait_study(st["id"], timeout=120)
        assert done["state"] == "completed", done
        trials = _trials(srv2, st["id"])
        assert [t["number"] for t in trials] == list(range(n))  # nothing lost
        assert all(t["state"] == "COMPLETE" for t in trials)
        assert done["n_complete"] == n and done["trials_done"] == n
        assert done["cost_spent"] == pytest.approx(sum(t["cost_seconds"] for t in trials))
        retried = [t for t in trials if t["attempts"] > 1]
        assert len(retried) == 2 and all(
            "no heartbeat" in t["failures"][0]["reason"] for t in retried
        )
        # The proposals are exactly the optimizer's sequence: none repeated, none skipped.
        opt = make_optimizer("random", pipeline.space, "maximize", seed=7)
        expected = [opt.ask(1, [])[0].params for _ in range(n)]
        assert [t["params"] for t in trials] == [pipeline.canonical(p) for p in expected]
    finally:
        srv2.stop()


def test_dask_cluster_runs_a_study(tmp_path: Path, sqlite_url: str) -> None:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        worker_dashboard_address=None,
    ) as cluster:
        srv = start_server(
            tmp_path, db_url=sqlite_url, workers=0, extra_args=["--dask", cluster.scheduler_address]
        )
        try:
            w = srv.client.get("/v1/workers").json()
            assert w["kind"] == "dask" and len(w["workers"]) == 2
            st = _create(
                srv, pipeline="synthetic-3stage-flat", optimizer="random", budget_seconds=30
            )
            done = srv.wait_study(st["id"])
            assert done["state"] == "completed" and done["n_complete"] >= 1
            trials = _trials(srv, st["id"], stages=True)
            assert all(":dask-" in t["worker"] for t in trials if t["state"] == "COMPLETE")
            assert srv.client.get("/v1/cache").json()["count"] > 0  # the shared cache
        finally:
            srv.stop()


@pytest.mark.postgres
def test_eight_workers_claim_200_trials_on_postgresql(tmp_path: Path, pg_server_url: str) -> None:
    """8 ``eeipu worker`` processes on PostgreSQL: 200 trials, each claimed exactly once."""
    srv = start_server(tmp_path, db_url=pg_server_url, workers=0)
    try:
        st = _create(
            srv,
            pipeline="synthetic-3stage-flat",
            optimizer="random",
            budget_seconds=1e6,
            max_trials=200,
            parallelism=200,
        )
        _wait(
            lambda: srv.client.get(f"/v1/studies/{st['id']}").json()["n_trials"] == 200,
            "200 proposals",
        )
        env = dict(srv.env)
        args = [
            sys.executable,
            "-m",
            "api.cli",
            "worker",
            "--db",
            pg_server_url,
            "--cache",
            str(tmp_path / "cache"),
            "--study",
            str(st["id"]),
            "--idle-exit",
            "2",
            "--json",
        ]
        procs = [
            subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE) for _ in range(8)
        ]
        outs = [
            json.loads(p.communicate(timeout=180)[0].decode().strip().splitlines()[-1])
            for p in procs
        ]
        assert sum(o["trials"] for o in outs) == 200
        done = srv.wait_study(st["id"])
        assert done["state"] == "completed" and done["n_complete"] == 200
        trials = _trials(srv, st["id"])
        assert len(trials) == 200 and all(t["attempts"] == 1 for t in trials)
        by_worker: dict[str, int] = {}
        for t in trials:
            by_worker[t["worker"]] = by_worker.get(t["worker"], 0) + 1
        assert by_worker == {o["worker"]: o["trials"] for o in outs if o["trials"]}
    finally:
        srv.stop()


def test_eeipu_optimizer_study_plans_and_gets_cache_reuse(server: LiveServer) -> None:
    import eeipu

    if "eeipu" not in eeipu.optimizer_names():
        pytest.skip("the eeipu optimizer is not available")
    st = _create(server, pipeline="synthetic-3stage-flat", optimizer="eeipu", budget_seconds=120)
    done = server.wait_study(st["id"], timeout=180)
    assert done["state"] == "completed", done
    trials = _trials(server, st["id"])
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    assert done["n_complete"] == len(complete) > 0
    best = server.client.get(f"/v1/studies/{st['id']}/best").json()
    assert best["value"] == max(t["value"] for t in complete)
    # Whatever prefix the optimizer planned to reuse was in the cache, or a trial pending at
    # the time was going to produce it: created earlier, and not finished when this one
    # started (the two then race for the stages' compute locks; either may compute a stage
    # while the other loads it).
    stages = list(complete[0]["params"])
    planned = [t for t in complete if t["reuse_depth"] > 0]
    assert planned, "EEIPU planned no reuse at all"
    for t in complete:
        if t["reused_depth"] >= t["reuse_depth"]:
            continue
        prefix = [t["params"][s] for s in stages[: t["reuse_depth"]]]
        producers = [
            o
            for o in complete
            if o["id"] != t["id"]
            and [o["params"][s] for s in stages[: t["reuse_depth"]]] == prefix
            and o["created_at"] <= t["created_at"]
            and o["finished_at"] >= t["started_at"]
        ]
        assert producers, f"trial {t['number']} planned a prefix nobody held or produced"


def test_several_http_processes_elect_one_leader(tmp_path: Path, sqlite_url: str) -> None:
    """``--http-workers 2``: both processes answer; one runs the workers and the scheduler."""
    srv = start_server(tmp_path, db_url=sqlite_url, workers=2, extra_args=["--http-workers", "2"])
    try:
        st = _create(srv, pipeline="synthetic-3stage-flat", optimizer="random", budget_seconds=30)
        done = srv.wait_study(st["id"])
        assert done["state"] == "completed" and done["n_complete"] >= 1
        kinds = set()
        for _ in range(20):  # fresh connections land on either process
            with httpx.Client(base_url=srv.url) as c:
                kinds.add(c.get("/v1/workers").json()["kind"])
        assert "local" in kinds
        trials = _trials(srv, st["id"])
        assert [t["number"] for t in trials] == list(range(len(trials)))
    finally:
        srv.stop()
    assert "leads: workers and scheduler run here" in srv.output()
    assert srv.output().count("leads: workers and scheduler run here") == 1


def test_a_clock_jump_of_the_reaper_loses_and_duplicates_no_trial(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduler's clock jumps an hour ahead while two live workers hold trials: both
    trials are handed back, the late results of their first attempts are refused (fenced),
    and each trial ends COMPLETE exactly once, its cost counted once."""
    from api.config import Settings
    from api.execution.runner import execute_trial, resolve_pipeline
    from api.service import StudyRequest, StudyService
    from api.store import StaleClaim, TrialState, open_store

    svc = StudyService(open_store(sqlite_url), Settings(db_url=sqlite_url), cache=None)
    req = StudyRequest("synthetic-3stage", "random", 1e5, max_trials=4, parallelism=2)
    st = svc.create_study(req)
    svc.fill(st.id)
    held = [svc.store.claim_trial(w, study_id=st.id) for w in ("wa", "wb")]
    assert all(held)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600.0)
    assert svc.reap() == 2  # injected once: both live workers look dead
    monkeypatch.undo()
    pipe = resolve_pipeline("synthetic-3stage", ())
    for t, w in zip(held, ("wa", "wb"), strict=True):
        assert t is not None
        with pytest.raises(StaleClaim):  # the first attempt's result arrives late
            svc.store.finish_trial(t.id, w, execute_trial(pipe, t.params, None, "value"))
    while svc.get_study(st.id).state.value == "running":
        svc.settle(st.id)
        svc.fill(st.id)
        t = svc.store.claim_trial("wc", study_id=st.id)
        if t is not None:
            svc.store.finish_trial(t.id, "wc", execute_trial(pipe, t.params, None, "value"))
    s = svc.get_study(st.id)
    trials = svc.store.list_trials(st.id)
    assert s.state.value == "completed" and [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert [t.attempts for t in trials[:2]] == [2, 2] and s.n_complete == 4
    assert s.cost_spent == pytest.approx(sum(t.cost_seconds or 0.0 for t in trials))
