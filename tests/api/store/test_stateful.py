"""The trial store as a state machine (hypothesis): random sequences of create, ask (add and
claim), tell, heartbeat, release, reap and cancel, checked against a plain model after every
step. Small on SQLite and in memory (seconds); the same machine on PostgreSQL (``postgres``)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule

from api.store import (
    FINISHED,
    NewTrial,
    StaleClaim,
    StudySpec,
    TrialResult,
    TrialState,
    TrialStore,
    open_store,
)

WORKERS = ("w0", "w1", "w2")
MAX_ATTEMPTS = 2


class StoreMachine(RuleBasedStateMachine):
    url = "memory://"

    def __init__(self) -> None:
        super().__init__()
        self.store: TrialStore = open_store(self.url)
        if self.url.startswith("postgres"):
            with self.store.engine.begin() as c:  # type: ignore[attr-defined]
                from sqlalchemy import text

                c.execute(text("DELETE FROM stage_runs; DELETE FROM trials; DELETE FROM studies"))
        # the model: trial id -> (study, state, worker, attempts)
        self.trials: dict[int, dict[str, Any]] = {}
        self.studies: dict[int, dict[str, Any]] = {}

    studies_b = Bundle("studies")

    def teardown(self) -> None:
        self.store.close()

    # ---------------------------------------------------------------- rules
    @rule(target=studies_b)
    def create(self) -> int:
        s = self.store.create_study(
            StudySpec("p", "random", 100.0, "v", "maximize", max_consecutive_failures=3), None
        )
        self.studies[s.id] = {"n": 0, "complete": 0, "failed": 0, "cost": 0.0}
        return s.id

    @rule(sid=studies_b, n=st.integers(1, 3))
    def add(self, sid: int, n: int) -> None:
        v = self.store.get_study(sid)
        assert v is not None
        out = self.store.add_trials(
            sid, [NewTrial({"a": {"x": i}}) for i in range(n)], None, v.ask_version
        )
        assert out is not None
        assert [t.number for t in out] == list(
            range(self.studies[sid]["n"], self.studies[sid]["n"] + n)
        )
        self.studies[sid]["n"] += n
        for t in out:
            assert t.id not in self.trials
            self.trials[t.id] = {
                "study": sid,
                "state": TrialState.WAITING,
                "worker": None,
                "att": 0,
            }

    @rule(worker=st.sampled_from(WORKERS))
    def claim(self, worker: str) -> None:
        t = self.store.claim_trial(worker)
        waiting = sorted(i for i, m in self.trials.items() if m["state"] == TrialState.WAITING)
        if not waiting:
            assert t is None
            return
        assert t is not None and t.id == waiting[0]  # FIFO over running studies
        m = self.trials[t.id]
        m.update(state=TrialState.RUNNING, worker=worker, att=m["att"] + 1)
        assert t.attempts == m["att"]

    @rule(
        data=st.data(),
        worker=st.sampled_from((*WORKERS, None)),
        ok=st.booleans(),
        cost=st.floats(0.0, 10.0),
    )
    def tell(self, data: st.DataObject, worker: str | None, ok: bool, cost: float) -> None:
        if not self.trials:
            return
        tid = data.draw(st.sampled_from(sorted(self.trials)))
        m = self.trials[tid]
        res = TrialResult(
            TrialState.COMPLETE if ok else TrialState.FAILED,
            {"v": 1.0} if ok else {},
            1.0 if ok else None,
            cost_seconds=cost,
        )
        allowed = m["state"] == TrialState.RUNNING and worker is not None and m["worker"] == worker
        if not allowed:
            with pytest.raises(StaleClaim):
                self.store.finish_trial(tid, worker, res)
            return
        done = self.store.finish_trial(tid, worker, res)
        assert done.state == res.state
        m["state"] = res.state
        s = self.studies[m["study"]]
        s["complete" if ok else "failed"] += 1
        s["cost"] += cost

    @rule(data=st.data(), worker=st.sampled_from((*WORKERS, None)))
    def heartbeat(self, data: st.DataObject, worker: str | None) -> None:
        if not self.trials:
            return
        tid = data.draw(st.sampled_from(sorted(self.trials)))
        m = self.trials[tid]
        if worker is None:
            with pytest.raises(StaleClaim):
                self.store.heartbeat(tid, worker)
            return
        got = self.store.heartbeat(tid, worker)
        assert got == (m["state"] == TrialState.RUNNING and m["worker"] == worker)

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        if not self.trials:
            return
        tid = data.draw(st.sampled_from(sorted(self.trials)))
        m = self.trials[tid]
        r = self.store.release_trial(tid, m["worker"], "died", MAX_ATTEMPTS)
        if m["state"] != TrialState.RUNNING:
            assert r is None
            return
        assert r is not None
        if m["att"] >= MAX_ATTEMPTS:
            m.update(state=TrialState.FAILED)
            self.studies[m["study"]]["failed"] += 1
        else:
            m.update(state=TrialState.WAITING, worker=None)
        assert r.state == m["state"]

    @precondition(lambda self: any(m["state"] == TrialState.RUNNING for m in self.trials.values()))
    @rule()
    def reap(self) -> None:
        stale = self.store.stale_trials(time.time() + 60)
        running = {i for i, m in self.trials.items() if m["state"] == TrialState.RUNNING}
        assert {t.id for t in stale} == running
        for t in stale:
            m = self.trials[t.id]
            r = self.store.release_trial(t.id, None, "stale", MAX_ATTEMPTS)
            assert r is not None
            if m["att"] >= MAX_ATTEMPTS:
                m.update(state=TrialState.FAILED)
                self.studies[m["study"]]["failed"] += 1
            else:
                m.update(state=TrialState.WAITING, worker=None)

    @rule(sid=studies_b)
    def cancel(self, sid: int) -> None:
        n = self.store.cancel_waiting(sid, "not needed")
        mine = [
            m
            for m in self.trials.values()
            if m["study"] == sid and m["state"] == TrialState.WAITING
        ]
        assert n == len(mine)
        for m in mine:
            m["state"] = TrialState.FAILED
        self.studies[sid]["failed"] += n

    # ---------------------------------------------------------------- invariants
    @invariant()
    def matches_model(self) -> None:
        for sid, s in self.studies.items():
            got = self.store.list_trials(sid)
            nums = [t.number for t in got]
            assert nums == list(range(s["n"]))  # none lost, none duplicated
            for t in got:
                m = self.trials[t.id]
                assert t.state == m["state"] and t.attempts == m["att"]
                if t.state == TrialState.RUNNING:
                    assert t.worker == m["worker"]
            v = self.store.get_study(sid)
            assert v is not None
            assert (v.n_trials, v.n_complete, v.n_failed) == (s["n"], s["complete"], s["failed"])
            assert v.cost_spent == pytest.approx(s["cost"])
            counts = self.store.trial_counts(sid)
            assert sum(counts.values()) == s["n"]
            assert counts[TrialState.COMPLETE] == s["complete"]

    @invariant()
    def finished_is_final(self) -> None:
        for tid, m in self.trials.items():
            if m["state"] in FINISHED:
                t = self.store.get_trial(tid)
                assert t is not None and t.state == m["state"]


_FAST = settings(
    max_examples=12,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class MemoryMachine(StoreMachine):
    url = "memory://"


@pytest.fixture
def _sqlite_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'sm.db'}"


def test_store_state_machine_in_memory() -> None:
    MemoryMachine.TestCase.settings = _FAST
    MemoryMachine.TestCase().runTest()


def test_store_state_machine_on_sqlite(tmp_path: Any) -> None:
    n = iter(range(10**6))

    class SQLiteMachine(StoreMachine):
        def __init__(self) -> None:
            type(self).url = f"sqlite:///{tmp_path / f'sm{next(n)}.db'}"
            super().__init__()

    SQLiteMachine.TestCase.settings = settings(_FAST, max_examples=6)
    SQLiteMachine.TestCase().runTest()


@pytest.mark.postgres
def test_store_state_machine_on_postgresql(pg_server_url: str) -> None:
    class PGMachine(StoreMachine):
        url = pg_server_url

    PGMachine.TestCase.settings = settings(_FAST, max_examples=6)
    PGMachine.TestCase().runTest()
