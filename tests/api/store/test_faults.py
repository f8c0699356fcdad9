"""Fault injection: the store's PostgreSQL connections are killed under running workers.

Worker threads claim and finish trials while another thread ends the store's own server
sessions (``pg_terminate_backend`` on its ``application_name``; the server keeps running).
Every trial must end up finished exactly once, nothing lost, and the store keeps working.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from sqlalchemy import create_engine, text

from api.errors import Unavailable
from api.store import NewTrial, StageRun, StudySpec, TrialResult, TrialState, open_store
from api.store.sql import SQLTrialStore, normalize_url

N_TRIALS = 150
N_WORKERS = 6


@pytest.mark.postgres
def test_killed_connections_lose_and_duplicate_nothing(pg_server_url: str) -> None:
    store = open_store(pg_server_url, pool_size=N_WORKERS)
    assert isinstance(store, SQLTrialStore)
    with store.engine.begin() as c:
        c.execute(text("DELETE FROM stage_runs; DELETE FROM trials; DELETE FROM studies"))
    s = store.create_study(StudySpec("p", "random", 1e6, "v", "maximize"), None)
    added = store.add_trials(s.id, [NewTrial({"a": {"x": i}}) for i in range(N_TRIALS)], None, 0)
    assert added is not None
    admin = create_engine(normalize_url(pg_server_url), isolation_level="AUTOCOMMIT")
    stop = threading.Event()
    kills: list[int] = []
    finished: Counter[int] = Counter()
    unavailable: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def killer() -> None:
        while not stop.is_set():
            try:
                with admin.connect() as c:
                    n = c.execute(
                        text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE application_name = :n AND pid <> pg_backend_pid()"
                        ),
                        {"n": store.application_name},
                    ).scalar()
            except Exception as e:  # pragma: no cover - shown by the assertion on kills
                errors.append(f"killer: {e}")
                return
            if n:
                kills.append(int(n))
            time.sleep(0.02)

    def worker(w: str) -> None:
        try:
            work(w)
        except Exception as e:  # shown by the assertions below
            errors.append(f"{w}: {type(e).__name__}: {e}")

    def work(w: str) -> None:
        for _ in range(10 * N_TRIALS):
            try:
                t = store.claim_trial(w, study_id=s.id)
            except Unavailable as e:  # every retry met a killed connection: try again
                unavailable.append(str(e))
                continue
            if t is None:
                return
            res = TrialResult(
                TrialState.COMPLETE,
                {"v": float(t.number)},
                float(t.number),
                cost_seconds=1.0,
                stages=[StageRun("a", 0, f"{t.number:032x}", cost_seconds=1.0)],
            )
            for _ in range(100):
                try:
                    store.finish_trial(t.id, w, res)
                    break
                except Unavailable as e:
                    unavailable.append(str(e))
            with lock:
                finished[t.id] += 1

    k = threading.Thread(target=killer)
    ws = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(N_WORKERS)]
    k.start()
    for t in ws:
        t.start()
    for t in ws:
        t.join(120)
    stop.set()
    k.join(30)
    admin.dispose()
    try:
        print(
            f"\nkilled {sum(kills)} server sessions in {len(kills)} rounds; "
            f"store retries {store.retries}; Unavailable raised {len(unavailable)}"
        )
        print("errors:", errors[:5], "unavailable:", unavailable[:3])
        assert errors == []
        assert sum(kills) > 0, "the fault was never injected"
        assert all(n == 1 for n in finished.values()) and len(finished) == N_TRIALS
        trials = store.list_trials(s.id, with_stages=True)
        assert len(trials) == N_TRIALS
        assert all(t.state == TrialState.COMPLETE and t.attempts == 1 for t in trials)
        assert all(t.stages is not None and len(t.stages) == 1 for t in trials)
        st = store.get_study(s.id)
        assert st is not None
        assert (st.n_trials, st.n_complete, st.n_failed) == (N_TRIALS, N_TRIALS, 0)
        assert st.cost_spent == pytest.approx(float(N_TRIALS))
        assert st.best_value == float(N_TRIALS - 1)
        assert store.stage_keys(s.id) == sorted(f"{i:032x}" for i in range(N_TRIALS))
        store.ping()  # recovered
    finally:
        store.close()
