"""The store's own checks: study options (migration 0002), numbers bounded on write and
repaired on read, cache keys, URLs, the claim fence and the in-memory backend."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from api.errors import InvalidRequest, Unavailable
from api.store import (
    NewTrial,
    StageRun,
    StaleClaim,
    StudySpec,
    TrialResult,
    TrialState,
    TrialStore,
    open_store,
)
from api.store.sql import SQLTrialStore, normalize_url

KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def store(db_url: str) -> Iterator[SQLTrialStore]:
    st = open_store(db_url)
    assert isinstance(st, SQLTrialStore)
    if db_url.startswith("postgresql"):
        _sql(st, "DELETE FROM stage_runs; DELETE FROM trials; DELETE FROM studies")
    yield st
    st.close()


def _sql(store: SQLTrialStore, sql: str, **params: Any) -> None:
    """Write as an older version did: straight SQL, no checks."""
    with store.engine.begin() as c:
        c.execute(text(sql), params)


def _spec(**kw: Any) -> StudySpec:
    base: dict[str, Any] = dict(
        pipeline="synthetic-3stage",
        optimizer="random",
        budget_seconds=100.0,
        objective="value",
        direction="maximize",
    )
    base.update(kw)
    return StudySpec(**base)


def _running(store: TrialStore, n: int = 1, worker: str = "w", **kw: Any) -> tuple[int, list[int]]:
    s = store.create_study(_spec(**kw), None)
    added = store.add_trials(s.id, [NewTrial({"a": {"x": i}}) for i in range(n)], None, 0)
    assert added is not None
    ids = []
    for _ in range(n):
        t = store.claim_trial(worker, study_id=s.id)
        assert t is not None
        ids.append(t.id)
    return s.id, ids


def _strict(text_: str) -> Any:
    def bad(tok: str) -> Any:
        raise AssertionError(f"non-JSON token {tok}")

    return json.loads(text_, parse_constant=bad)


# ---------------------------------------------------------------- study options (0002)
def test_study_options_round_trip(store: SQLTrialStore) -> None:
    s = store.create_study(
        _spec(run_seed=2**40, budget_margin=2.5, max_consecutive_failures=7), None
    )
    got = store.get_study(s.id)
    assert got is not None
    assert (got.spec.run_seed, got.spec.budget_margin, got.spec.max_consecutive_failures) == (
        2**40,
        2.5,
        7,
    )
    d = store.create_study(_spec(), None)
    assert (d.spec.run_seed, d.spec.budget_margin, d.spec.max_consecutive_failures) == (
        None,
        0.0,
        5,
    )
    store.set_study_state(s.id, got.state.FAILED, error="5 failed trials in a row")
    after = store.list_studies()[0]
    assert after.error == "5 failed trials in a row"  # the stop reason


@pytest.mark.parametrize(
    "kw",
    [
        {"budget_margin": -1.0},
        {"budget_margin": math.nan},
        {"budget_margin": 1e308},
        {"max_consecutive_failures": 0},
        {"max_consecutive_failures": 1001},
        {"run_seed": 2**64},
        {"budget_seconds": math.inf},
        {"fixed_params": {"a": {"x": math.nan}}},
    ],
)
def test_bad_study_options_are_refused(store: SQLTrialStore, kw: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        store.create_study(_spec(**kw), None)
    assert store.count_studies() == 0


def test_an_old_database_upgrades_with_defaults(db_url: str, tmp_path: Path) -> None:
    """A database at revision 0001 (with a study in it) gains the 0002 and 0003 columns on
    open."""
    from alembic import command
    from alembic.config import Config

    from api.store.sql import MIGRATIONS, make_engine

    if db_url == "memory://":
        db_url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        if conn.dialect.name == "postgresql":
            conn.execute(text("DROP TABLE IF EXISTS stage_runs, trials, studies, alembic_version"))
        command.upgrade(cfg, "0001")
    with engine.begin() as conn:
        cols = "name, pipeline, optimizer, objective, direction, budget_seconds, seed, "
        cols += "parallelism, fixed_params, mode, state, created_at, updated_at, n_trials, "
        cols += "n_complete, n_failed, cost_spent, ask_version"
        conn.execute(
            text(
                f"INSERT INTO studies ({cols}) VALUES ('old', 'p', 'random', 'v', 'maximize', "
                "10, 0, 1, '{}', 'managed', 'running', 1, 1, 0, 0, 0, 0, 0)"
            )
        )
    engine.dispose()
    st = open_store(db_url)
    try:
        (old,) = st.list_studies()
        assert old.spec.name == "old"
        assert (old.spec.run_seed, old.spec.budget_margin) == (None, 0.0)
        assert old.spec.max_consecutive_failures == 5
        assert old.spec.count_proposal_time is False  # 0003: its accounting stays as it was
        new = st.create_study(_spec(run_seed=3), None)
        assert st.get_study(new.id).spec.run_seed == 3  # type: ignore[union-attr]
    finally:
        st.close()


# ---------------------------------------------------------------- numbers on write
@pytest.mark.parametrize(
    "result",
    [
        TrialResult(
            TrialState.COMPLETE,
            {"value": 1.0},
            1.0,
            cost_seconds=1.0,
            stages=[StageRun("a", 0, KEY, cost_seconds=1e308, load_seconds=1e308)],
        ),
        TrialResult(TrialState.COMPLETE, {"value": 1.0}, 1.0, cost_seconds=math.inf),
        TrialResult(TrialState.COMPLETE, {"value": 1.0}, 1.0, cost_seconds=2e9),
        TrialResult(TrialState.COMPLETE, {"value": 1.0}, 1.0, cost_seconds=-1.0),
        TrialResult(TrialState.COMPLETE, {"value": 1.0}, math.nan),
        TrialResult(TrialState.COMPLETE, {"value": 1e301}, 1.0),
        TrialResult(TrialState.COMPLETE, {"acc": math.inf}, 1.0),
        TrialResult(
            TrialState.FAILED, stages=[StageRun("a", 0, KEY, original_cost_seconds=math.nan)]
        ),
        TrialResult(TrialState.FAILED, stages=[StageRun("a", 0, "../../etc/passwd")]),
        TrialResult(TrialState.FAILED, stages=[StageRun("a", 0, KEY.upper())]),
    ],
)
def test_absurd_results_are_refused_before_any_write(
    store: SQLTrialStore, result: TrialResult
) -> None:
    sid, (tid,) = _running(store)
    with pytest.raises(InvalidRequest):
        store.finish_trial(tid, "w", result)
    t = store.get_trial(tid, with_stages=True)
    assert t is not None and t.state == TrialState.RUNNING and t.stages == []
    st = store.get_study(sid)
    assert st is not None and st.cost_spent == 0.0 and st.n_complete == st.n_failed == 0
    # the batched path refuses the item alone
    (res,) = store.finish_trials([(tid, "w", result, sid)])
    assert isinstance(res, InvalidRequest)
    ok = store.finish_trial(tid, "w", TrialResult(TrialState.COMPLETE, {"value": 2.0}, 2.0))
    assert ok.state == TrialState.COMPLETE


# ---------------------------------------------------------------- numbers on read
def _every_read(store: SQLTrialStore, sid: int) -> list[Any]:
    """Everything every read method returns, as plain data."""
    out: list[Any] = []
    st = store.get_study(sid)
    assert st is not None
    from dataclasses import asdict

    out.append(asdict(st))
    out += [asdict(s) for s in store.list_studies()]
    for t in store.list_trials(sid, with_stages=True):
        out.append(t.to_dict())
        one = store.get_trial(t.id, with_stages=True)
        assert one is not None
        out.append(one.to_dict())
    out += [t.to_dict() for t in store.stale_trials(1e12)]
    out += [t.to_dict() for t in store.running_trials_of("")]
    out += [_strict(x) for x in store.trials_json(sid)]
    out.append(store.stage_keys(sid, computed_only=False))
    return out


def test_absurd_stored_numbers_read_as_null(store: SQLTrialStore) -> None:
    """What an older version stored (the 1e308 tell of contract 8, inf sums, NaN metrics)
    reads back through every method without a non-finite or absurd float."""
    sid, (tid, tid2) = _running(store, 2)
    store.finish_trial(
        tid,
        "w",
        TrialResult(
            TrialState.COMPLETE,
            {"value": 1.0},
            1.0,
            cost_seconds=3.0,
            stages=[StageRun("a", 0, KEY, cost_seconds=1.0)],
        ),
    )
    pg = store.dialect == "postgresql"
    nan = "'NaN'::float8" if pg else "NULL"
    inf = "'Infinity'::float8" if pg else "9e999"
    big = "'1e999'" if pg else "'NaN'"  # a JSON number no float holds / Python's NaN token
    _sql(
        store,
        f"UPDATE studies SET cost_spent = {inf}, best_value = 1e308, budget_margin = {inf}, "
        f"updated_at = -{inf}",
    )
    _sql(
        store,
        f"UPDATE trials SET value = {nan}, cost_seconds = {inf}, predicted_cost = 1e308, "
        f"heartbeat_at = {inf}, started_at = -1e308 WHERE id = :t",
        t=tid,
    )
    met = f'{{"value": {big.strip(chr(39))}, "acc": 0.5, "huge": 1e308}}'
    fail = f'[{{"at": {big.strip(chr(39))}, "reason": "x"}}]'
    params = f'{{"a": {{"x": {big.strip(chr(39))}}}}}'
    _sql(
        store,
        "UPDATE trials SET metrics = :m, failures = :f, params = :p WHERE id = :t",
        m=met,
        f=fail,
        p=params,
        t=tid,
    )
    _sql(
        store,
        f"UPDATE stage_runs SET cost_seconds = 1e308, load_seconds = {inf}, "
        "original_cost_seconds = 1e308, bytes = -5, key = '../../etc/passwd'",
    )
    _sql(store, f"UPDATE trials SET heartbeat_at = {inf} WHERE id = :t", t=tid2)
    data = _every_read(store, sid)
    for i, d in enumerate(data):
        try:
            json.dumps(d, allow_nan=False)  # raises on any NaN/inf
        except ValueError:
            raise AssertionError(f"read {i} holds a non-finite float: {d!r}") from None
    text_ = json.dumps(data)
    for absurd in ("1e+308", "1e308", "Infinity", "NaN"):
        assert absurd not in text_
    st = store.get_study(sid)
    assert st is not None and st.best_value is None and st.best_trial_id is None
    assert st.spec.budget_margin == 0.0
    assert st.cost_spent == 0.0  # recomputed from sane trial costs (the only one is absurd)
    t = store.get_trial(tid, with_stages=True)
    assert t is not None and t.metrics == {"value": None, "acc": 0.5, "huge": None}
    assert t.value is None and t.cost_seconds is None and t.heartbeat_at is None
    assert t.stages is not None and t.stages[0].key is None and t.stages[0].cost_seconds == 0.0
    assert store.stage_keys(sid, computed_only=False) == []
    # a later tell repairs the stored sum instead of adding to infinity
    store.finish_trial(tid2, "w", TrialResult(TrialState.COMPLETE, {"value": 5.0}, 5.0, 4.0))
    st = store.get_study(sid)
    assert st is not None and st.cost_spent == 4.0 and st.best_value == 5.0
    with store.engine.connect() as c:
        raw = c.execute(text("SELECT cost_spent, best_value FROM studies")).one()
    assert tuple(raw) == (4.0, 5.0)


def test_stage_keys_skip_invalid_old_keys(store: SQLTrialStore) -> None:
    sid, (tid,) = _running(store)
    store.finish_trial(
        tid,
        "w",
        TrialResult(TrialState.FAILED, stages=[StageRun("a", 0, KEY), StageRun("b", 1, None)]),
    )
    _sql(store, "UPDATE stage_runs SET key = '/etc/passwd' WHERE position = 1")
    assert store.stage_keys(sid) == [KEY]


# ---------------------------------------------------------------- the claim fence
def test_a_tell_or_heartbeat_must_name_the_holding_worker(store: SQLTrialStore) -> None:
    sid, (tid,) = _running(store, worker="holder")
    with pytest.raises(StaleClaim, match="'holder'"):
        store.finish_trial(tid, None, TrialResult(TrialState.COMPLETE, {"value": 1.0}, 1.0))
    (res,) = store.finish_trials([(tid, None, TrialResult(TrialState.FAILED), sid)])
    assert isinstance(res, StaleClaim) and "name the worker" in str(res)
    with pytest.raises(StaleClaim, match="'holder'"):
        store.heartbeat(tid, None)
    with pytest.raises(StaleClaim):
        store.heartbeat(tid, "")
    assert not store.heartbeat(tid, "other")
    t = store.get_trial(tid)
    assert t is not None and t.state == TrialState.RUNNING and t.worker == "holder"
    assert store.heartbeat(tid, "holder")
    assert store.finish_trial(tid, "holder", TrialResult(TrialState.FAILED)).state == "FAILED"


# ---------------------------------------------------------------- URLs
@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h/db",
        "postgres://u@h/db",
        "postgresql+psycopg2://u@h/db",
        "postgresql+psycopg://u@h:5433/db",
    ],
)
def test_every_postgresql_spelling_runs_on_psycopg3(url: str) -> None:
    u = normalize_url(url)
    assert u.drivername == "postgresql+psycopg" and u.database == "db"
    from sqlalchemy import create_engine

    create_engine(u).dispose()  # the driver imports (psycopg 3 is installed)


@pytest.mark.parametrize(
    "url", ["garbage", "", "   ", "mysql://u@h/db", "postgresql://u@h", "http://x/y", None]
)
def test_malformed_urls_are_one_clear_error(url: Any) -> None:
    with pytest.raises(InvalidRequest) as ei:
        open_store(url)
    msg = str(ei.value)
    assert "\n" not in msg and "sqlite:///" in msg and "postgresql://" in msg


def test_an_unreachable_database_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(Unavailable) as ei:
        open_store("postgresql://root@127.0.0.1:1/test")
    msg = str(ei.value)
    assert "\n" not in msg and "sqlalche.me" not in msg and "unavailable" in msg
    (tmp_path / "f").write_text("x")
    with pytest.raises(Unavailable):
        open_store(f"sqlite:///{tmp_path / 'f' / 'sub' / 'x.db'}")


def test_the_postgresql_store_names_its_sessions(pg_server_url: str) -> None:
    st = open_store(pg_server_url.replace("postgresql://", "postgres://", 1))
    assert isinstance(st, SQLTrialStore)
    try:
        with st.engine.connect() as c:
            name = c.execute(text("SELECT current_setting('application_name')")).scalar()
        assert name == st.application_name
    finally:
        st.close()


test_the_postgresql_store_names_its_sessions = pytest.mark.postgres(
    test_the_postgresql_store_names_its_sessions
)


# ---------------------------------------------------------------- memory://
def test_memory_store_is_one_database_per_open_and_thread_safe() -> None:
    a = open_store("memory://")
    b = open_store("memory://")
    s = a.create_study(_spec(), None)
    assert b.get_study(s.id) is None  # each open is its own database
    added = a.add_trials(s.id, [NewTrial({"a": {"x": i}}) for i in range(300)], None, 0)
    assert added is not None
    got: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def work(w: str) -> None:
        mine: list[int] = []
        try:
            while (t := a.claim_trial(w)) is not None:
                a.heartbeat(t.id, w)
                a.finish_trial(t.id, w, TrialResult(TrialState.COMPLETE, {"value": 1.0}, 1.0))
                mine.append(t.id)
        except BaseException as e:  # pragma: no cover - the assertion below shows it
            errors.append(e)
        got[w] = mine

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    ids = [i for v in got.values() for i in v]
    assert len(ids) == len(set(ids)) == 300
    st = a.get_study(s.id)
    assert st is not None and st.n_complete == 300
    a.close()
    b.close()
