"""ONE conformance suite for the trial store contract, run against SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Iterator

import pytest

from api.store import (
    NewTrial,
    StageRun,
    StaleClaim,
    StudySpec,
    StudyState,
    TrialResult,
    TrialState,
    TrialStore,
    open_store,
)


@pytest.fixture
def store(db_url: str) -> Iterator[TrialStore]:
    st = open_store(db_url)
    if db_url.startswith("postgresql"):  # the session database is shared by tests: start empty
        from sqlalchemy import text

        with st.engine.begin() as c:  # type: ignore[attr-defined]
            c.execute(text("DELETE FROM stage_runs; DELETE FROM trials; DELETE FROM studies"))
    yield st
    st.close()


def _spec(**kw: object) -> StudySpec:
    base: dict[str, object] = dict(
        pipeline="synthetic-3stage",
        optimizer="random",
        budget_seconds=100.0,
        objective="value",
        direction="maximize",
    )
    base.update(kw)
    return StudySpec(**base)  # type: ignore[arg-type]


def _key(i: int) -> str:
    """A cache key (32 lowercase hex chars), distinct per ``i``."""
    return f"{i:032x}"


def _params(i: int) -> dict[str, dict[str, object]]:
    return {"a": {"x": float(i)}}


def _add(store: TrialStore, study_id: int, n: int) -> list[int]:
    st = store.get_study(study_id)
    assert st is not None
    out = store.add_trials(
        study_id, [NewTrial(_params(i)) for i in range(n)], {"k": n}, st.ask_version
    )
    assert out is not None
    return [t.id for t in out]


def test_migrations_are_idempotent(db_url: str) -> None:
    a = open_store(db_url)
    b = open_store(db_url)  # a second open finds the schema at head and changes nothing
    a.ping()
    b.ping()
    a.close()
    b.close()


def test_study_lifecycle(store: TrialStore) -> None:
    s = store.create_study(_spec(name="one", fixed_params={"a": {"x": 1}}), {"rng": [1]})
    assert s.state == StudyState.RUNNING and s.optimizer_state == {"rng": [1]}
    got = store.get_study(s.id)
    assert got is not None and got.spec.name == "one" and got.spec.fixed_params == {"a": {"x": 1}}
    s2 = store.create_study(_spec(), None)
    assert [x.id for x in store.list_studies()] == [s.id, s2.id]
    assert store.count_studies() == 2
    assert store.set_study_state(s.id, StudyState.STOPPED, from_states=[StudyState.RUNNING])
    assert not store.set_study_state(s.id, StudyState.STOPPED, from_states=[StudyState.RUNNING])
    assert [x.id for x in store.list_studies(state=StudyState.STOPPED)] == [s.id]
    assert store.delete_study(s.id)
    assert store.get_study(s.id) is None
    assert not store.delete_study(s.id)


def test_add_trials_saves_state_atomically_with_compare_and_set(store: TrialStore) -> None:
    s = store.create_study(_spec(), None)
    first = store.add_trials(s.id, [NewTrial(_params(0)), NewTrial(_params(1))], {"n": 2}, 0)
    assert first is not None and [t.number for t in first] == [0, 1]
    assert all(t.state == TrialState.WAITING for t in first)
    # A proposer that read version 0 lost the race: nothing is inserted, state untouched.
    assert store.add_trials(s.id, [NewTrial(_params(9))], {"n": 99}, 0) is None
    st = store.get_study(s.id)
    assert st is not None and st.optimizer_state == {"n": 2} and st.n_trials == 2
    more = store.add_trials(s.id, [NewTrial(_params(2), reuse_depth=1)], {"n": 3}, 1)
    assert more is not None and more[0].number == 2 and more[0].reuse_depth == 1
    assert store.count_trials(s.id) == 3


def test_claim_is_fifo_and_only_in_running_studies(store: TrialStore) -> None:
    s = store.create_study(_spec(), None)
    ids = _add(store, s.id, 3)
    t = store.claim_trial("w1")
    assert t is not None and t.id == ids[0] and t.state == TrialState.RUNNING
    assert t.worker == "w1" and t.attempts == 1 and t.heartbeat_at is not None
    store.set_study_state(s.id, StudyState.STOPPED)
    assert store.claim_trial("w2") is None  # a stopped study's trials wait
    store.set_study_state(s.id, StudyState.RUNNING)
    ext = store.create_study(_spec(mode="external"), None)
    _add(store, ext.id, 1)
    assert store.claim_trial("w2", modes=["external"]) is not None
    t2 = store.claim_trial("w2", study_id=s.id)
    assert t2 is not None and t2.id == ids[1]
    assert store.trial_counts(s.id)[TrialState.RUNNING] == 2


def test_finish_updates_study_and_trial_is_immutable(store: TrialStore) -> None:
    s = store.create_study(_spec(direction="minimize"), None)
    _add(store, s.id, 3)
    vals = [5.0, 2.0, 7.0]
    for v in vals:
        t = store.claim_trial("w", study_id=s.id)
        assert t is not None
        stages = [StageRun("a", 0, key=_key(t.number), hit=False, cost_seconds=1.5, bytes=10)]
        res = TrialResult(
            TrialState.COMPLETE, {"value": v}, v, cost_seconds=1.5, reused_depth=0, stages=stages
        )
        done = store.finish_trial(t.id, "w", res)
        assert done.state == TrialState.COMPLETE and done.value == v
    st = store.get_study(s.id)
    assert st is not None
    assert st.n_complete == 3 and st.cost_spent == pytest.approx(4.5)
    assert st.best_value == 2.0
    best = store.get_trial(st.best_trial_id or -1, with_stages=True)
    assert best is not None and best.value == 2.0
    assert best.stages is not None and best.stages[0].key == _key(1)
    # Finished trials are immutable: no finish, heartbeat or release touches them.
    with pytest.raises(StaleClaim):
        store.finish_trial(best.id, "w", TrialResult(TrialState.FAILED))
    with pytest.raises(StaleClaim):
        store.finish_trial(best.id, None, TrialResult(TrialState.COMPLETE, {}, 1.0))
    with pytest.raises(StaleClaim):
        store.heartbeat(best.id, None)
    assert not store.heartbeat(best.id, "w")
    assert store.release_trial(best.id, None, "x", 3) is None
    assert store.cancel_waiting(s.id, "done") == 0
    again = store.get_trial(best.id)
    assert again is not None and again.value == 2.0 and again.state == TrialState.COMPLETE
    assert store.stage_keys(s.id) == [_key(0), _key(1), _key(2)]
    with pytest.raises(KeyError):
        store.finish_trial(10**9, None, TrialResult(TrialState.FAILED))


def test_claims_are_fenced_by_worker(store: TrialStore) -> None:
    s = store.create_study(_spec(), None)
    _add(store, s.id, 1)
    t = store.claim_trial("alive", study_id=s.id)
    assert t is not None
    assert not store.heartbeat(t.id, "impostor")
    with pytest.raises(StaleClaim):
        store.finish_trial(t.id, "impostor", TrialResult(TrialState.COMPLETE, {}, 1.0))
    assert store.heartbeat(t.id, "alive")


def test_release_retries_then_gives_up(store: TrialStore) -> None:
    s = store.create_study(_spec(), None)
    (tid,) = _add(store, s.id, 1)
    for attempt in (1, 2):
        t = store.claim_trial(f"w{attempt}", study_id=s.id)
        assert t is not None and t.id == tid and t.attempts == attempt
        r = store.release_trial(tid, f"w{attempt}", "worker died", max_attempts=2)
        assert r is not None
    assert r.state == TrialState.FAILED and "worker died" in (r.error or "")
    assert [f["worker"] for f in r.failures] == ["w1", "w2"]
    st = store.get_study(s.id)
    assert st is not None and st.n_failed == 1
    # Released while attempts remain -> WAITING, claimable by anyone.
    (tid2,) = _add(store, s.id, 1)
    store.claim_trial("x", study_id=s.id)
    r2 = store.release_trial(tid2, "x", "lost", max_attempts=3)
    assert r2 is not None and r2.state == TrialState.WAITING and r2.worker is None
    assert store.release_trial(tid2, "x", "again", max_attempts=3) is None  # not RUNNING


def test_stale_trials_and_running_of(store: TrialStore) -> None:
    s = store.create_study(_spec(), None)
    _add(store, s.id, 2)
    a = store.claim_trial("host:1:a", study_id=s.id)
    assert a is not None
    cutoff = time.time() + 1.0
    assert [t.id for t in store.stale_trials(cutoff)] == [a.id]
    assert store.stale_trials(a.started_at - 10.0 if a.started_at else 0.0) == []
    assert [t.id for t in store.running_trials_of("host:1:")] == [a.id]
    assert store.running_trials_of("host:2:") == []


def test_cancel_waiting_counts_failed(store: TrialStore) -> None:
    s = store.create_study(_spec(), None)
    _add(store, s.id, 3)
    store.claim_trial("w", study_id=s.id)
    assert store.cancel_waiting(s.id, "budget spent") == 2
    st = store.get_study(s.id)
    assert st is not None and st.n_failed == 2
    c = store.trial_counts(s.id)
    assert c[TrialState.FAILED] == 2 and c[TrialState.RUNNING] == 1
    page = store.list_trials(s.id, states=[TrialState.FAILED], limit=1, offset=1)
    assert [t.number for t in page] == [2]


def _claim_all(url: str, worker: str, q: mp.Queue) -> None:  # type: ignore[type-arg]
    st = open_store(url, run_migrations=False, pool_size=1)
    got = []
    while True:
        t = st.claim_trial(worker)
        if t is None:
            break
        got.append(t.id)
    st.close()
    q.put((worker, got))


def test_concurrent_workers_never_double_claim(store: TrialStore, db_url: str) -> None:
    """8 worker processes race to claim 200 trials: each trial goes to exactly one."""
    if db_url == "memory://":
        pytest.skip("an in-memory store lives in one process (threads: test_memory_threads)")
    s = store.create_study(_spec(), None)
    ids = _add(store, s.id, 200)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(db_url, f"w{i}", q)) for i in range(8)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    claimed = [tid for _, got in results for tid in got]
    assert len(claimed) == len(set(claimed)) == 200
    assert sorted(claimed) == sorted(ids)
    rows = store.list_trials(s.id)
    assert all(t.state == TrialState.RUNNING and t.attempts == 1 for t in rows)
    by_worker = {t.id: t.worker for t in rows}
    for worker, got in results:
        assert all(by_worker[tid] == worker for tid in got)


def test_trials_json_matches_trial_dicts(store: TrialStore) -> None:
    """The API's fast path for pages returns exactly ``Trial.to_dict()`` of ``list_trials``."""
    import json

    s = store.create_study(_spec(), None)
    _add(store, s.id, 4)
    t = store.claim_trial("w", study_id=s.id)
    assert t is not None
    store.finish_trial(
        t.id, "w", TrialResult(TrialState.COMPLETE, {"value": 1.5, "acc": 0.25}, 1.5, 2.0)
    )
    t2 = store.claim_trial("w", study_id=s.id)
    assert t2 is not None
    store.release_trial(t2.id, "w", "lost", 3)
    cases = [(None, None, 0, None), ([TrialState.WAITING], 2, 1, None), (None, 2, 0, 1)]
    for states, limit, offset, after in cases:
        fast = [json.loads(x) for x in store.trials_json(s.id, states, limit, offset, after)]
        slow = [x.to_dict() for x in store.list_trials(s.id, states, limit, offset, after=after)]
        assert fast == slow
    assert [t.number for t in store.list_trials(s.id, after=1)] == [2, 3]
    assert store.count_trials(s.id, after=1) == 2


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_finish_trials_batch_is_per_item(store: TrialStore, direction: str) -> None:
    """One transaction for many tells; a bad item fails alone; counters and best add up."""
    s = store.create_study(_spec(direction=direction), None)
    other = store.create_study(_spec(), None)
    _add(store, s.id, 4)
    _add(store, other.id, 1)
    ts = [store.claim_trial("w", study_id=s.id) for _ in range(4)]
    o = store.claim_trial("w", study_id=other.id)
    assert all(ts) and o is not None
    a, b, c, d = (t.id for t in ts if t is not None)
    store.finish_trial(d, "w", TrialResult(TrialState.COMPLETE, {}, 5.0, 1.0))
    res = store.finish_trials(
        [
            (a, "w", TrialResult(TrialState.COMPLETE, {}, 3.0, 1.0), s.id),
            (b, "w", TrialResult(TrialState.COMPLETE, {}, 7.0, 1.0), s.id),
            (c, "x", TrialResult(TrialState.COMPLETE, {}, 9.0, 1.0), s.id),  # fenced
            (d, "w", TrialResult(TrialState.COMPLETE, {}, 1.0, 1.0), s.id),  # finished
            (o.id, "w", TrialResult(TrialState.FAILED, cost_seconds=2.0), s.id),  # other study
            (o.id, "w", TrialResult(TrialState.FAILED, cost_seconds=2.0), None),
        ]
    )
    assert [type(r).__name__ for r in res] == [
        "Trial",
        "Trial",
        "StaleClaim",
        "StaleClaim",
        "KeyError",
        "Trial",
    ]
    st = store.get_study(s.id)
    assert st is not None and st.n_complete == 3 and st.cost_spent == pytest.approx(3.0)
    if direction == "maximize":
        assert (st.best_value, st.best_trial_id) == (7.0, b)
    else:
        assert (st.best_value, st.best_trial_id) == (3.0, a)
    ot = store.get_study(other.id)
    assert ot is not None and ot.n_failed == 1 and ot.cost_spent == pytest.approx(2.0)
    ct = store.get_trial(c)
    assert ct is not None and ct.state == TrialState.RUNNING


@pytest.mark.parametrize("counted", [True, False])
def test_a_finished_trial_costs_its_proposal_share_when_the_study_counts_it(
    store: TrialStore, counted: bool
) -> None:
    s = store.create_study(_spec(count_proposal_time=counted), None)
    assert store.get_study(s.id).spec.count_proposal_time is counted  # type: ignore[union-attr]
    added = store.add_trials(s.id, [NewTrial(_params(0), proposal_seconds=0.25)], None, 0)
    assert added is not None and added[0].proposal_seconds == pytest.approx(0.25)
    t = store.claim_trial("w", study_id=s.id)
    assert t is not None and t.proposal_seconds == pytest.approx(0.25)
    done = store.finish_trial(t.id, "w", TrialResult(TrialState.COMPLETE, {}, 1.0, 2.0))
    cost = 2.25 if counted else 2.0
    assert done.cost_seconds == pytest.approx(cost)
    st = store.get_study(s.id)
    assert st is not None and st.cost_spent == pytest.approx(cost)


def test_changed_trials_reads_what_finished_or_was_added_since(store: TrialStore) -> None:
    s = store.create_study(_spec(), None)
    _add(store, s.id, 4)
    a = store.claim_trial("w", study_id=s.id)
    b = store.claim_trial("w", study_id=s.id)
    assert a is not None and b is not None
    store.finish_trial(a.id, "w", TrialResult(TrialState.COMPLETE, {}, 1.0, 1.0, 0, []))
    # a reader that holds trials 0..3 with 0..3 pending: only trial 0 finished
    got = store.changed_trials(s.id, [0, 1, 2, 3], 4)
    assert [(t.number, t.state) for t in got] == [(0, TrialState.COMPLETE)]
    assert got[0].stages == []
    st = store.get_study(s.id)
    assert st is not None
    assert store.add_trials(s.id, [NewTrial(_params(9))], None, st.ask_version) is not None
    got = store.changed_trials(s.id, [1, 2, 3], 4)
    assert [(t.number, t.state) for t in got] == [(4, TrialState.WAITING)]
    assert store.changed_trials(s.id, [], 0)[0].number == 0  # from scratch: everything


def test_last_finished_gives_the_latest_trials_that_ran_oldest_first(store: TrialStore) -> None:
    s = store.create_study(_spec(), None)
    _add(store, s.id, 4)
    ids = []
    for i in range(3):
        t = store.claim_trial("w", study_id=s.id)
        assert t is not None
        state = TrialState.FAILED if i else TrialState.COMPLETE
        store.finish_trial(t.id, "w", TrialResult(state, {}, 1.0 if not i else None, 1.0))
        ids.append(t.id)
        time.sleep(0.01)  # distinct finish times
    store.cancel_waiting(s.id, "cancelled")  # never ran: not among them
    assert [t.id for t in store.last_finished(s.id, 2)] == ids[1:]
    assert [t.id for t in store.last_finished(s.id, 10)] == ids
    assert store.last_finished(s.id, 0) == []


def test_get_studies_reads_several_studies_as_get_study_does(store: TrialStore) -> None:
    a = store.create_study(_spec(), None)
    b = store.create_study(_spec(budget_seconds=7.0), None)
    _add(store, b.id, 2)
    got = store.get_studies([b.id, a.id, b.id, 10_000_000])
    assert sorted(got) == sorted([a.id, b.id])  # a missing id is left out, duplicates once
    for sid, st in got.items():
        one = store.get_study(sid, with_state=False)
        assert one is not None and st == one and st.optimizer_state is None
    assert got[b.id].n_trials == 2 and got[b.id].spec.budget_seconds == 7.0
    assert store.get_studies([]) == {}
