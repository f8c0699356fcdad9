"""The SQL trial store (SQLite by default, PostgreSQL by URL), on SQLAlchemy 2.0's typed ORM.

SQLite: WAL journal, a 30 s busy timeout and ``BEGIN IMMEDIATE`` for every write transaction,
so writers queue for the lock instead of failing with "database is locked" when a read
transaction tries to upgrade (Optuna #820). PostgreSQL: recycled pooled connections, claims
as one ``UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED)``, reads in autocommit (no
``BEGIN``/``ROLLBACK`` round trips around a single ``SELECT``), psycopg 3 for every URL
spelling, and each store's sessions named (``application_name``). Operations cut by a dropped
connection (a restart, an idle connection dropped by the network: Optuna #1347) are retried
on a fresh one (``SQLTrialStore._run``); that replaces a pre-ping, which would cost a round
trip on every checkout.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Engine,
    Table,
    Text,
    and_,
    bindparam,
    case,
    cast,
    create_engine,
    delete,
    event,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from api.errors import InvalidRequest, Unavailable
from api.store.base import (
    NewTrial,
    StageRun,
    StaleClaim,
    Study,
    StudySpec,
    StudyState,
    Trial,
    TrialResult,
    TrialState,
    TrialStore,
)
from api.store.models import StageRunRow, StudyRow, TrialRow
from api.store.values import (
    MAX_BYTES,
    MAX_CONSECUTIVE_FAILURES,
    MAX_INT,
    MAX_SECONDS,
    MAX_SEED,
    MAX_SUM_SECONDS,
    MAX_TIMESTAMP,
    MAX_VALUE,
    check_int,
    check_json_numbers,
    check_number,
    check_optional_number,
    check_stage_key,
    clean_json,
    clean_metrics,
    finite,
    json_text,
    valid_key,
)

MIGRATIONS = Path(__file__).parent / "migrations"
TRIALS: Table = TrialRow.__table__  # type: ignore[assignment]  # the Core table of trials
_WRITE = "eeipu_write"


_MEMORY = "memory://"
ACCEPTED = (
    "sqlite:///PATH, memory://, or postgresql://USER@HOST[:PORT]/DB "
    "(also postgres://, postgresql+psycopg://, postgresql+psycopg2://)"
)


def _f0(x: object, bound: float = MAX_SECONDS) -> float:
    """A stored non-negative float that cannot be None: out of range reads as 0.0."""
    return finite(x, bound, 0.0) or 0.0


def _int(x: object, default: int = 0) -> int:
    return x if isinstance(x, int) and not isinstance(x, bool) else default


def _study(row: Any, cost_spent: float | None = None) -> Study:
    """A ``Study`` from a stored row (repairing absurd numbers; see ``api.store.values``).

    ``cost_spent``: the sum to show when the stored one is absurd (the caller recomputes it
    from the trials); 0.0 if not given."""
    best = finite(row.best_value, MAX_VALUE)
    spent = finite(row.cost_spent, MAX_SUM_SECONDS, 0.0)
    return Study(
        id=row.id,
        spec=StudySpec(
            pipeline=row.pipeline,
            optimizer=row.optimizer,
            budget_seconds=_f0(row.budget_seconds),
            objective=row.objective,
            direction=row.direction,
            max_trials=row.max_trials,
            seed=_int(row.seed),
            parallelism=_int(row.parallelism, 1),
            fixed_params=clean_json(dict(row.fixed_params or {})),
            mode=row.mode,
            name=row.name,
            run_seed=row.run_seed if isinstance(row.run_seed, int) else None,
            budget_margin=_f0(row.budget_margin),
            max_consecutive_failures=_int(row.max_consecutive_failures, 5) or 5,
            count_proposal_time=bool(row.count_proposal_time),
        ),
        state=StudyState(row.state),
        created_at=_f0(row.created_at, MAX_TIMESTAMP),
        updated_at=_f0(row.updated_at, MAX_TIMESTAMP),
        n_complete=_int(row.n_complete),
        n_failed=_int(row.n_failed),
        n_trials=_int(row.n_trials),
        cost_spent=spent if spent is not None else (cost_spent or 0.0),
        best_value=best,
        best_trial_id=row.best_trial_id if best is not None else None,
        optimizer_state=clean_json(getattr(row, "optimizer_state", None)),
        ask_version=_int(row.ask_version),
        error=row.error,
    )


def _trial(row: Any, stages: list[StageRun] | None = None) -> Trial:
    return Trial(
        id=row.id,
        study_id=row.study_id,
        number=row.number,
        state=TrialState(row.state),
        params=clean_json(row.params),
        reuse_depth=_int(row.reuse_depth),
        predicted_cost=finite(row.predicted_cost, MAX_SECONDS, 0.0),
        created_at=_f0(row.created_at, MAX_TIMESTAMP),
        attempts=_int(row.attempts),
        worker=row.worker,
        heartbeat_at=finite(row.heartbeat_at, MAX_TIMESTAMP, 0.0),
        started_at=finite(row.started_at, MAX_TIMESTAMP, 0.0),
        finished_at=finite(row.finished_at, MAX_TIMESTAMP, 0.0),
        metrics=clean_metrics(row.metrics),  # type: ignore[arg-type]
        value=finite(row.value, MAX_VALUE),
        cost_seconds=finite(row.cost_seconds, MAX_SECONDS, 0.0),
        reused_depth=row.reused_depth if isinstance(row.reused_depth, int) else None,
        error=row.error,
        failures=clean_json(list(row.failures or [])),
        stages=stages,
        proposal_seconds=finite(getattr(row, "proposal_seconds", None), MAX_SECONDS, 0.0),
    )


def _stage(row: Any) -> StageRun:
    return StageRun(
        stage=row.stage,
        position=_int(row.position),
        key=row.key if valid_key(row.key) else None,
        hit=bool(row.hit),
        cost_seconds=_f0(row.cost_seconds),
        load_seconds=_f0(row.load_seconds),
        bytes=_int(row.bytes) if 0 <= _int(row.bytes) <= MAX_BYTES else 0,
        original_cost_seconds=_f0(row.original_cost_seconds),
    )


def _check_spec(spec: StudySpec) -> None:
    check_number("budget_seconds", spec.budget_seconds, MAX_SECONDS)
    if spec.budget_seconds <= 0:
        raise InvalidRequest("budget_seconds must be > 0", "invalid_number")
    check_number("budget_margin", spec.budget_margin, MAX_SECONDS)
    check_int(
        "max_consecutive_failures", spec.max_consecutive_failures, 1, MAX_CONSECUTIVE_FAILURES
    )
    if spec.run_seed is not None:
        check_int("run_seed", spec.run_seed, -MAX_SEED, MAX_SEED)
    check_int("seed", spec.seed, -(2**31), 2**31 - 1)
    check_int("parallelism", spec.parallelism, 1, 2**31 - 1)
    if spec.max_trials is not None:
        check_int("max_trials", spec.max_trials, 0, 2**31 - 1)
    check_json_numbers("fixed_params", spec.fixed_params)


def _check_result(result: TrialResult) -> None:
    """Refuse a result with an absurd number or key (``InvalidRequest``; see ``values``)."""
    if result.state not in (TrialState.COMPLETE, TrialState.FAILED):
        raise InvalidRequest("a trial can only finish as COMPLETE or FAILED", "invalid_state")
    check_number("cost_seconds", result.cost_seconds, MAX_SECONDS)
    check_optional_number("value", result.value, MAX_VALUE, None)
    if not isinstance(result.metrics, Mapping):
        raise InvalidRequest("metrics must be a mapping of names to numbers", "invalid_number")
    for k, v in result.metrics.items():
        if not isinstance(k, str):
            raise InvalidRequest(f"metric name {k!r} is not a string", "invalid_number")
        check_number(f"metric {k[:80]!r}", v, MAX_VALUE, None)
    check_int("reused_depth", result.reused_depth, 0, MAX_INT)
    for sr in result.stages:
        check_int("stage position", sr.position, 0, 2**31 - 1)
        for name in ("cost_seconds", "load_seconds", "original_cost_seconds"):
            check_number(f"stage {str(sr.stage)[:80]!r} {name}", getattr(sr, name), MAX_SECONDS)
        check_int(f"stage {str(sr.stage)[:80]!r} bytes", sr.bytes, 0, MAX_BYTES)
        check_stage_key(sr.key)


def normalize_url(url: object) -> URL:
    """The SQLAlchemy URL of a store URL, on the drivers the project ships.

    PostgreSQL in every spelling (``postgresql://``, ``postgres://``, ``postgresql+psycopg2://``,
    ``postgresql+psycopg://``) runs on psycopg 3; ``memory://`` is SQLite in memory.

    Raises:
        InvalidRequest: not one of the accepted forms (``ACCEPTED``).
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidRequest(f"empty database URL: use {ACCEPTED}", "invalid_url")
    if url == _MEMORY:
        return make_url("sqlite://")
    try:
        u = make_url(url)
    except Exception:  # ArgumentError, ValueError: the text is no URL at all
        raise InvalidRequest(
            f"malformed database URL {url[:80]!r}: use {ACCEPTED}", "invalid_url"
        ) from None
    name = u.drivername
    if name in ("sqlite", "sqlite+pysqlite"):
        return u.set(drivername="sqlite")
    if name in ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg"):
        if not u.database:
            raise InvalidRequest(
                f"database URL {u.render_as_string()!r} names no database: use {ACCEPTED}",
                "invalid_url",
            )
        return u.set(drivername="postgresql+psycopg")
    raise InvalidRequest(
        f"unsupported database URL {u.render_as_string()!r}: use {ACCEPTED}", "invalid_url"
    )


def _one_line(e: BaseException) -> str:
    """The first line of a driver error, without SQLAlchemy's SQL and help-link text."""
    orig = getattr(e, "orig", None) or e
    text_ = str(orig).strip().splitlines()
    return text_[0] if text_ else type(orig).__name__


def make_engine(url: str, pool_size: int = 10, application_name: str | None = None) -> Engine:
    """An engine tuned for the store's access pattern (see the module docstring)."""
    u = normalize_url(url)
    if u.get_backend_name() == "sqlite":
        memory = u.database in (None, "", ":memory:")
        if not memory and u.database:
            try:
                Path(u.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise Unavailable(
                    f"database unavailable: cannot make the folder of {u.database!r}: "
                    f"{e.strerror or e}",
                    "db_unavailable",
                ) from None
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        if memory:
            kwargs["poolclass"] = StaticPool  # one connection: the database lives in it
        else:
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = 2 * pool_size
        engine = create_engine(u, **kwargs)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see "begin")
            cur = dbapi_conn.cursor()
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            immediate = conn.get_execution_options().get(_WRITE, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    connect_args: dict[str, Any] = {"connect_timeout": 10}
    if application_name:
        connect_args["application_name"] = application_name
    return create_engine(
        u,
        pool_recycle=1800,
        pool_size=pool_size,
        max_overflow=2 * pool_size,
        connect_args=connect_args,
    )


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (safe with concurrent starters)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # SQLite runs most batch operations by copying a table and dropping the old one;
            # with foreign keys on, that DROP cascades into every child row (a study's trials
            # and stage runs). The pragma only takes effect outside a transaction.
            conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
        try:
            with conn.execution_options(**{_WRITE: True}).begin():
                if not sqlite:  # one migrator at a time across processes
                    conn.execute(text("SELECT pg_advisory_xact_lock(727274)"))
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"migration left {len(broken)} dangling rows")
        finally:
            if sqlite:
                conn.connection.driver_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]


_T = TypeVar("_T")
_RETRIES = 6
_names = itertools.count()


@functools.cache
def _claim_statements(by_study: bool, n_modes: int | None) -> tuple[Any, Any]:
    """The claim's statements for one shape of request, built once with bound parameters
    (``claim_worker``, ``claim_now``, ``claim_study``, ``claim_mode_0`` ... for ``n_modes``
    modes, or any mode when None; no name is a column's, which an UPDATE would set): a
    claim is the hottest write, and building and hashing a fresh statement cost more CPU
    than running it.

    The probe finds the oldest WAITING trial of a running study; the claim is one statement:
    the subquery locks that trial (skipping those another claim holds), the update takes it.
    On PostgreSQL it runs in autocommit (one round trip), on SQLite under BEGIN IMMEDIATE.
    """
    q = (
        select(TrialRow.id)
        .join(StudyRow, StudyRow.id == TrialRow.study_id)
        .where(
            TrialRow.state == TrialState.WAITING.value,
            StudyRow.state == StudyState.RUNNING.value,
        )
    )
    if by_study:
        q = q.where(TrialRow.study_id == bindparam("claim_study"))
    if n_modes is not None:
        q = q.where(StudyRow.mode.in_([bindparam(f"claim_mode_{i}") for i in range(n_modes)]))
    q = q.order_by(TrialRow.id).limit(1).with_for_update(skip_locked=True, of=TrialRow)
    t = TRIALS
    claim = (
        update(t)
        .where(t.c.id == q.correlate(None).scalar_subquery(), t.c.state == TrialState.WAITING.value)
        .values(
            state=TrialState.RUNNING.value,
            worker=bindparam("claim_worker"),
            attempts=t.c.attempts + 1,
            heartbeat_at=bindparam("claim_now"),
            started_at=bindparam("claim_now"),
        )
        .returning(*t.c)
    )
    return q, claim


class SQLTrialStore(TrialStore):
    """``TrialStore`` on SQLAlchemy; see ``api.store.base`` for the contract.

    Every operation runs through ``_run``: a connection the server dropped (a restart, a
    killed backend) is retried on a fresh one. A retry after a failure at commit cannot
    know whether the commit happened, so each write re-runs with ``retry=True`` and then
    first looks for its own effect, recognised by the timestamp it wrote (taken once, before
    the first try): a claim, tell or release is never applied twice nor reported lost.

    Args:
        url: ``sqlite:///path.db``, ``memory://`` or ``postgresql://user@host/db``.
        run_migrations: apply Alembic migrations on open (the service always does).
        pool_size: pooled connections (the API server's thread pool plus its scheduler).

    Raises:
        InvalidRequest: ``url`` is not an accepted form.
        Unavailable: the database cannot be reached (when migrating on open).
    """

    def __init__(self, url: str, run_migrations: bool = True, pool_size: int = 10) -> None:
        self.url = url
        u = normalize_url(url)
        self.memory = u.get_backend_name() == "sqlite" and u.database in (None, "", ":memory:")
        # names this store's PostgreSQL sessions (pg_stat_activity), e.g. to find or end them
        self.application_name = f"eeipu-store-{os.getpid()}-{next(_names)}"
        self.engine = make_engine(url, pool_size=pool_size, application_name=self.application_name)
        self._wengine = self.engine.execution_options(**{_WRITE: True})
        self.dialect = self.engine.dialect.name
        # Reads: one statement each (or several whose order needs no snapshot), so on
        # PostgreSQL they run in autocommit, without BEGIN and ROLLBACK round trips.
        self._rengine = (
            self.engine.execution_options(isolation_level="AUTOCOMMIT")
            if self.dialect == "postgresql"
            else self.engine
        )
        # one shared in-memory connection: one operation at a time (its transactions would
        # interleave otherwise)
        self._lock: threading.RLock | None = threading.RLock() if self.memory else None
        self.retries = 0  # operations re-run after a dropped connection
        if run_migrations or self.memory:  # a new in-memory database has no schema yet
            self._run(lambda _retry: migrate(self.engine))

    def _run(self, fn: Callable[[bool], _T]) -> _T:
        """``fn(retry)``, re-run on a fresh connection when the server dropped the last one."""
        for attempt in range(_RETRIES + 1):
            try:
                with self._lock if self._lock is not None else nullcontext():
                    return fn(attempt > 0)
            except DBAPIError as e:
                if e.connection_invalidated and attempt < _RETRIES:
                    self.retries += 1
                    time.sleep(0.02 * (attempt + 1))
                    continue
                if e.connection_invalidated or isinstance(e, OperationalError):
                    raise Unavailable(
                        f"database unavailable: {_one_line(e)}", "db_unavailable"
                    ) from None
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    # ---------------------------------------------------------------- sessions
    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self._rengine, expire_on_commit=False) as s:
            yield s

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with Session(self._wengine, expire_on_commit=False) as s, s.begin():
            yield s

    def _spent(self, c: Any, study_id: int) -> float:
        """A study's summed cost recomputed from its trials (sane costs only): shown when
        the stored sum is absurd (an older version added an absurd cost to it)."""
        q = select(func.sum(TrialRow.cost_seconds)).where(
            TrialRow.study_id == study_id,
            TrialRow.cost_seconds >= 0.0,
            TrialRow.cost_seconds <= MAX_SECONDS,
        )
        return finite(c.execute(q).scalar(), MAX_SUM_SECONDS, 0.0) or 0.0

    def _studies(self, c: Any, rows: Sequence[Any]) -> list[Study]:
        return [
            _study(
                r,
                None
                if finite(r.cost_spent, MAX_SUM_SECONDS, 0.0) is not None
                else self._spent(c, r.id),
            )
            for r in rows
        ]

    # ---------------------------------------------------------------- studies
    def create_study(self, spec: StudySpec, optimizer_state: dict[str, Any] | None) -> Study:
        _check_spec(spec)
        check_json_numbers("optimizer_state", optimizer_state)
        now = time.time()

        def go(retry: bool) -> Study:
            with self._write() as s:
                if retry:  # the lost try may have committed: find the study it made
                    old = s.scalars(
                        select(StudyRow).where(
                            StudyRow.created_at == now, StudyRow.pipeline == spec.pipeline
                        )
                    ).first()
                    if old is not None:
                        return _study(old)
                row = StudyRow(
                    name=spec.name,
                    pipeline=spec.pipeline,
                    optimizer=spec.optimizer,
                    objective=spec.objective,
                    direction=spec.direction,
                    budget_seconds=spec.budget_seconds,
                    max_trials=spec.max_trials,
                    seed=spec.seed,
                    parallelism=spec.parallelism,
                    fixed_params=spec.fixed_params,
                    mode=spec.mode,
                    run_seed=spec.run_seed,
                    budget_margin=float(spec.budget_margin),
                    max_consecutive_failures=spec.max_consecutive_failures,
                    count_proposal_time=bool(spec.count_proposal_time),
                    state=StudyState.RUNNING.value,
                    created_at=now,
                    updated_at=now,
                    n_trials=0,
                    n_complete=0,
                    n_failed=0,
                    cost_spent=0.0,
                    optimizer_state=optimizer_state,
                    ask_version=0,
                )
                s.add(row)
                s.flush()
                return _study(row)

        return self._run(go)

    _NO_STATE = tuple(c for c in StudyRow.__table__.c if c.name != "optimizer_state")

    def get_study(self, study_id: int, with_state: bool = True) -> Study | None:
        # The API's hottest read: a Core select of the mapped table (no Session, no identity
        # map); the row carries its own counters, so this is the whole answer.
        table = StudyRow.__table__
        q = (select(table) if with_state else select(*self._NO_STATE)).where(table.c.id == study_id)

        def go(_retry: bool) -> Study | None:
            with self._rengine.connect() as c:
                row: Any = c.execute(q).one_or_none()  # a Row: same names as StudyRow
                return self._studies(c, [row])[0] if row is not None else None

        return self._run(go)

    def get_studies(self, study_ids: Sequence[int]) -> dict[int, Study]:
        ids = sorted({int(i) for i in study_ids})
        if not ids:
            return {}
        table = StudyRow.__table__
        q = select(*self._NO_STATE).where(table.c.id.in_(ids))

        def go(_retry: bool) -> dict[int, Study]:
            with self._rengine.connect() as c:
                return {st.id: st for st in self._studies(c, list(c.execute(q)))}

        return self._run(go)

    def list_studies(
        self, state: StudyState | None = None, limit: int = 100, offset: int = 0
    ) -> list[Study]:
        q = select(StudyRow.__table__).order_by(StudyRow.id).limit(limit).offset(offset)
        if state is not None:
            q = q.where(StudyRow.state == state.value)

        def go(_retry: bool) -> list[Study]:
            with self._rengine.connect() as c:
                return self._studies(c, list(c.execute(q)))

        return self._run(go)

    def count_studies(self, state: StudyState | None = None) -> int:
        q = select(func.count(StudyRow.id))
        if state is not None:
            q = q.where(StudyRow.state == state.value)
        return self._run(lambda _r: self._scalar_int(q))

    def _scalar_int(self, q: Any) -> int:
        with self._read() as s:
            return int(s.scalar(q) or 0)

    def set_study_state(
        self,
        study_id: int,
        state: StudyState,
        from_states: Sequence[StudyState] | None = None,
        error: str | None = None,
    ) -> bool:
        """See ``TrialStore``; ``error`` is also where a study keeps why it stopped."""
        now = time.time()
        q = update(StudyRow).where(StudyRow.id == study_id)
        if from_states is not None:
            q = q.where(StudyRow.state.in_([st.value for st in from_states]))
        q = q.values(state=state.value, updated_at=now, error=error)

        def go(retry: bool) -> bool:
            with self._write() as s:
                if retry:  # the lost try committed if the row carries its timestamp
                    done = s.scalar(
                        select(func.count(StudyRow.id)).where(
                            StudyRow.id == study_id, StudyRow.updated_at == now
                        )
                    )
                    if done:
                        return True
                return bool(s.execute(q).rowcount)  # type: ignore[attr-defined]

        return self._run(go)

    def delete_study(self, study_id: int) -> bool:
        def go(_retry: bool) -> bool:
            with self._write() as s:
                s.execute(delete(StageRunRow).where(StageRunRow.study_id == study_id))
                s.execute(delete(TrialRow).where(TrialRow.study_id == study_id))
                res = s.execute(delete(StudyRow).where(StudyRow.id == study_id))
                return bool(res.rowcount)  # type: ignore[attr-defined]

        return self._run(go)

    # ---------------------------------------------------------------- proposals
    def add_trials(
        self,
        study_id: int,
        trials: Sequence[NewTrial],
        optimizer_state: dict[str, Any] | None,
        expected_version: int,
    ) -> list[Trial] | None:
        for t in trials:
            check_json_numbers("params", t.params)
            check_optional_number("predicted_cost", t.predicted_cost, MAX_SECONDS)
            check_optional_number("proposal_seconds", t.proposal_seconds, MAX_SECONDS)
            check_int("reuse_depth", t.reuse_depth, 0, MAX_INT)
        check_json_numbers("optimizer_state", optimizer_state)
        now = time.time()

        def go(retry: bool) -> list[Trial] | None:
            with self._write() as s:
                st = s.scalars(
                    select(StudyRow).where(StudyRow.id == study_id).with_for_update()
                ).one_or_none()
                if st is None:
                    raise KeyError(f"no study {study_id}")
                if retry and st.ask_version == expected_version + 1:
                    mine = list(
                        s.scalars(
                            select(TrialRow)
                            .where(TrialRow.study_id == study_id, TrialRow.created_at == now)
                            .order_by(TrialRow.number)
                        )
                    )
                    if len(mine) == len(trials):  # the lost try committed
                        return [_trial(r) for r in mine]
                if st.ask_version != expected_version:
                    return None
                rows: list[dict[str, Any]] = [
                    {
                        "study_id": study_id,
                        "number": st.n_trials + i,
                        "state": TrialState.WAITING.value,
                        "params": t.params,
                        "reuse_depth": t.reuse_depth,
                        "predicted_cost": t.predicted_cost,
                        "proposal_seconds": t.proposal_seconds,
                        "created_at": now,
                        "attempts": 0,
                        "failures": [],
                    }
                    for i, t in enumerate(trials)
                ]
                # one multi-row INSERT ... RETURNING (Core: no unit of work for new rows)
                made = s.execute(
                    insert(TRIALS).returning(*TRIALS.c, sort_by_parameter_order=True), rows
                ).all()
                st.n_trials += len(rows)
                st.ask_version += 1
                st.optimizer_state = optimizer_state
                st.updated_at = now
                s.flush()
                return [_trial(r) for r in made]

        return self._run(go)

    # ---------------------------------------------------------------- trials
    def _stages_of(self, s: Session, trial_ids: Sequence[int]) -> dict[int, list[StageRun]]:
        out: dict[int, list[StageRun]] = {t: [] for t in trial_ids}
        if not trial_ids:
            return out
        q = (
            select(StageRunRow)
            .where(StageRunRow.trial_id.in_(trial_ids))
            .order_by(StageRunRow.trial_id, StageRunRow.position)
        )
        for r in s.scalars(q):
            out[r.trial_id].append(_stage(r))
        return out

    def get_trial(self, trial_id: int, with_stages: bool = False) -> Trial | None:
        def go(_retry: bool) -> Trial | None:
            with self._read() as s:
                row = s.get(TrialRow, trial_id)
                if row is None:
                    return None
                stages = self._stages_of(s, [trial_id])[trial_id] if with_stages else None
                return _trial(row, stages)

        return self._run(go)

    def list_trials(
        self,
        study_id: int,
        states: Sequence[TrialState] | None = None,
        limit: int | None = None,
        offset: int = 0,
        with_stages: bool = False,
        after: int | None = None,
    ) -> list[Trial]:
        q = select(TrialRow).where(TrialRow.study_id == study_id).order_by(TrialRow.number)
        if states:
            q = q.where(TrialRow.state.in_([st.value for st in states]))
        if limit is not None:
            q = q.limit(limit)
        if offset:
            q = q.offset(offset)
        if after is not None:
            q = q.where(TrialRow.number > after)

        def go(_retry: bool) -> list[Trial]:
            with self._read() as s:
                rows = list(s.scalars(q))
                if not with_stages:
                    return [_trial(r) for r in rows]
                stages = self._stages_of(s, [r.id for r in rows])
                return [_trial(r, stages[r.id]) for r in rows]

        return self._run(go)

    def changed_trials(self, study_id: int, pending: Sequence[int], known: int) -> list[Trial]:
        finished = [TrialState.COMPLETE.value, TrialState.FAILED.value]
        cond = TrialRow.number >= known
        if pending:
            cond = or_(
                cond, and_(TrialRow.number.in_(sorted(set(pending))), TrialRow.state.in_(finished))
            )
        q = select(TrialRow).where(TrialRow.study_id == study_id, cond).order_by(TrialRow.number)

        def go(_retry: bool) -> list[Trial]:
            with self._read() as s:
                rows = list(s.scalars(q))
                done = [r.id for r in rows if r.state in finished]
                stages = self._stages_of(s, done)
                return [_trial(r, stages.get(r.id, [])) for r in rows]

        return self._run(go)

    def last_finished(self, study_id: int, n: int) -> list[Trial]:
        if n <= 0:
            return []
        q = (
            select(TrialRow)
            .where(
                TrialRow.study_id == study_id,
                TrialRow.state.in_([TrialState.COMPLETE.value, TrialState.FAILED.value]),
                TrialRow.attempts > 0,
            )
            .order_by(TrialRow.finished_at.desc(), TrialRow.number.desc())
            .limit(n)
        )
        return self._run(lambda _r: self._trials(q)[::-1])

    _SCALARS = (
        "id",
        "study_id",
        "number",
        "state",
        "reuse_depth",
        "predicted_cost",
        "reused_depth",
        "value",
        "cost_seconds",
        "proposal_seconds",
        "worker",
        "attempts",
        "heartbeat_at",
        "created_at",
        "started_at",
        "finished_at",
        "error",
    )

    def trials_json(
        self,
        study_id: int,
        states: Sequence[TrialState] | None = None,
        limit: int | None = None,
        offset: int = 0,
        after: int | None = None,
    ) -> list[str]:
        return self._trials_json(study_id, states, limit, offset, after, total=False)[1]

    def trials_page_json(
        self,
        study_id: int,
        states: Sequence[TrialState] | None = None,
        limit: int | None = None,
        offset: int = 0,
        after: int | None = None,
    ) -> tuple[int, list[str]]:
        # the count rides along as a scalar subquery (evaluated once): one round trip
        return self._trials_json(study_id, states, limit, offset, after, total=True)

    def _count_query(
        self, study_id: int, states: Sequence[TrialState] | None, after: int | None
    ) -> Any:
        q = select(func.count(TrialRow.id)).where(TrialRow.study_id == study_id)
        if after is not None:
            q = q.where(TrialRow.number > after)
        if states:
            q = q.where(TrialRow.state.in_([st.value for st in states]))
        return q

    def _trials_json(
        self,
        study_id: int,
        states: Sequence[TrialState] | None,
        limit: int | None,
        offset: int,
        after: int | None,
        total: bool,
    ) -> tuple[int, list[str]]:
        # Core select, JSON columns cast to text: the stored params and failures are spliced
        # into the answer as they are (no decode/encode round trip) unless they hold a
        # non-finite token; the scalars and the (small) metrics go through the same repair
        # as ``_trial``, so this never emits ``NaN`` or ``Infinity``.
        cols = [getattr(TrialRow, c) for c in self._SCALARS]
        counted = self._count_query(study_id, states, after)
        extra = [counted.scalar_subquery().label("total")] if total else []
        q = select(
            *cols,
            cast(TrialRow.params, Text),
            TrialRow.metrics,
            cast(TrialRow.failures, Text),
            *extra,
        ).where(TrialRow.study_id == study_id)
        if states:
            q = q.where(TrialRow.state.in_([st.value for st in states]))
        q = q.order_by(TrialRow.number)
        if limit is not None:
            q = q.limit(limit)
        if offset:
            q = q.offset(offset)
        if after is not None:
            q = q.where(TrialRow.number > after)
        dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
        n = len(cols)

        def go(_retry: bool) -> tuple[int, list[str]]:
            out = []
            count = 0
            with self._rengine.connect() as c:
                for row in c.execute(q):
                    t = _trial(row)  # the repaired scalars (JSON columns are replaced below)
                    head = dumps({k: _scalar(t, k) for k in self._SCALARS})
                    params, _, failures = row[n : n + 3]
                    if total:
                        count = int(row[n + 3] or 0)
                    out.append(
                        f'{head[:-1]},"params":{json_text(params, "{}")},'
                        f'"metrics":{dumps(t.metrics)},'
                        f'"failures":{json_text(failures, "[]")}}}'
                    )
                if total and not out:  # an empty page (past the end): count on its own
                    count = int(c.execute(counted).scalar() or 0)
            return count, out

        return self._run(go)

    def count_trials(
        self,
        study_id: int,
        states: Sequence[TrialState] | None = None,
        after: int | None = None,
    ) -> int:
        q = self._count_query(study_id, states, after)
        return self._run(lambda _r: self._scalar_int(q))

    def trial_counts(self, study_id: int) -> dict[TrialState, int]:
        q = (
            select(TrialRow.state, func.count(TrialRow.id))
            .where(TrialRow.study_id == study_id)
            .group_by(TrialRow.state)
        )

        def go(_retry: bool) -> dict[TrialState, int]:
            out = {st: 0 for st in TrialState}
            with self._read() as s:
                for state, n in s.execute(q):
                    out[TrialState(state)] = int(n)
            return out

        return self._run(go)

    def claim_trial(
        self,
        worker: str,
        study_id: int | None = None,
        modes: Sequence[str] | None = None,
    ) -> Trial | None:
        if not isinstance(worker, str) or not worker or len(worker) > 200:
            raise InvalidRequest("a claim needs a worker id of 1..200 chars", "invalid_worker")
        chosen = None if modes is None else list(modes)
        probe, claim = _claim_statements(
            study_id is not None, None if chosen is None else len(chosen)
        )
        now = time.time()  # also the claim's mark: a retry finds a claim that committed
        binds: dict[str, Any] = {"claim_worker": worker, "claim_now": now}
        if study_id is not None:
            binds["claim_study"] = study_id
        binds.update({f"claim_mode_{i}": m for i, m in enumerate(chosen or ())})

        def go(retry: bool) -> Trial | None:
            if retry:
                with self._read() as r:
                    mine = r.scalars(
                        select(TrialRow).where(
                            TrialRow.state == TrialState.RUNNING.value,
                            TrialRow.worker == worker,
                            TrialRow.started_at == now,
                        )
                    ).first()
                    if mine is not None:
                        return _trial(mine)
            if self.dialect != "postgresql":
                with self._read() as r:  # most polls find nothing: don't take the write lock
                    if r.execute(probe, binds).scalar() is None:
                        return None
            row: Any
            if self.dialect == "postgresql":
                with self._rengine.connect() as c:
                    row = c.execute(claim, binds).one_or_none()
            else:
                with self._write() as s:
                    row = s.execute(claim, binds).one_or_none()
            return _trial(row) if row is not None else None

        return self._run(go)

    def heartbeat(self, trial_id: int, worker: str | None) -> bool:
        if not worker:
            held = self.get_trial(trial_id)
            holder = f" by worker {held.worker!r}" if held is not None and held.worker else ""
            raise StaleClaim(
                f"trial {trial_id} is held{holder}: a heartbeat must name the worker holding it"
            )

        def go(_retry: bool) -> bool:
            with self._write() as s:
                res = s.execute(
                    update(TrialRow)
                    .where(
                        TrialRow.id == trial_id,
                        TrialRow.state == TrialState.RUNNING.value,
                        TrialRow.worker == worker,
                    )
                    .values(heartbeat_at=time.time())
                )
                return bool(res.rowcount)  # type: ignore[attr-defined]

        return self._run(go)

    def _locked_trial(self, s: Session, trial_id: int) -> TrialRow | None:
        return s.scalars(
            select(TrialRow).where(TrialRow.id == trial_id).with_for_update()
        ).one_or_none()

    def _locked_study(self, s: Session, study_id: int) -> StudyRow:
        return s.scalars(select(StudyRow).where(StudyRow.id == study_id).with_for_update()).one()

    def finish_trials(
        self, items: Sequence[tuple[int, str | None, TrialResult, int | None]]
    ) -> list[Trial | Exception]:
        checks: list[Exception | None] = []
        for _, _, result, _ in items:
            try:
                _check_result(result)
                checks.append(None)
            except InvalidRequest as e:
                checks.append(e)
        now = time.time()  # also the tells' mark: a retry finds a batch that committed
        return self._run(lambda retry: self._finish(items, checks, now, retry))

    def _finish(
        self,
        items: Sequence[tuple[int, str | None, TrialResult, int | None]],
        checks: Sequence[Exception | None],
        now: float,
        retry: bool,
    ) -> list[Trial | Exception]:
        out: list[Trial | Exception] = []
        # Per trial one guarded UPDATE ... RETURNING (the guard is the claim fence); then all
        # stage runs; then each study's counters as one UPDATE of SQL expressions, last, so
        # the study row (which every tell of the study touches) is locked only until the
        # commit, and one commit (one fsync) serves the whole batch.
        # The cost the budget counts: the reported one, plus the trial's share of its
        # proposal's seconds when its study counts proposal time (read in the same update).
        counts = (
            select(StudyRow.count_proposal_time)
            .where(StudyRow.id == TrialRow.study_id)
            .scalar_subquery()
        )
        proposal = case((counts, func.coalesce(TrialRow.proposal_seconds, 0.0)), else_=literal(0.0))
        with self._write() as s:
            done: list[tuple[TrialRow, TrialResult]] = []
            for (trial_id, worker, result, study_id), bad in zip(items, checks, strict=True):
                if bad is not None:
                    out.append(bad)
                    continue
                guard = [
                    TrialRow.id == trial_id,
                    TrialRow.state == TrialState.RUNNING.value,
                    TrialRow.worker == (worker or ""),  # no worker: holds nothing
                ]
                if study_id is not None:
                    guard.append(TrialRow.study_id == study_id)
                row = s.scalars(
                    update(TrialRow)
                    .where(*guard)
                    .values(
                        state=result.state.value,
                        metrics=dict(result.metrics),
                        value=result.value,
                        cost_seconds=literal(float(result.cost_seconds)) + proposal,
                        reused_depth=result.reused_depth,
                        error=result.error,
                        finished_at=now,
                        heartbeat_at=now,
                    )
                    .returning(TrialRow)
                    .execution_options(synchronize_session=False, populate_existing=True)
                ).one_or_none()
                if row is not None:
                    done.append((row, result))
                    out.append(_trial(row, list(result.stages)))
                    continue
                cur = s.get(TrialRow, trial_id)
                if cur is None or (study_id is not None and cur.study_id != study_id):
                    out.append(KeyError(f"no trial {trial_id}"))
                elif (
                    retry
                    and cur.finished_at == now
                    and cur.worker == worker
                    and cur.state == result.state.value
                ):  # the lost try committed this tell
                    out.append(_trial(cur, self._stages_of(s, [cur.id])[cur.id]))
                elif cur.state != TrialState.RUNNING.value:
                    out.append(StaleClaim(f"trial {trial_id} is {cur.state}, not RUNNING"))
                elif not worker:
                    out.append(
                        StaleClaim(
                            f"trial {trial_id} is held by worker {cur.worker!r}: "
                            "a tell must name the worker holding it"
                        )
                    )
                else:
                    out.append(
                        StaleClaim(f"trial {trial_id} is held by another worker, not {worker!r}")
                    )
            runs = [
                {
                    "trial_id": row.id,
                    "study_id": row.study_id,
                    "position": sr.position,
                    "stage": sr.stage,
                    "key": sr.key,
                    "hit": bool(sr.hit),
                    "cost_seconds": float(sr.cost_seconds),
                    "load_seconds": float(sr.load_seconds),
                    "bytes": sr.bytes,
                    "original_cost_seconds": float(sr.original_cost_seconds),
                }
                for row, result in done
                for sr in result.stages
            ]
            if runs:
                s.execute(insert(StageRunRow), runs)
            for sid in sorted({row.study_id for row, _ in done}):
                mine = [(row, r) for row, r in done if row.study_id == sid]
                add = sum(_f0(row.cost_seconds) for row, _ in mine)
                sane = and_(StudyRow.cost_spent >= 0.0, StudyRow.cost_spent <= MAX_SUM_SECONDS)
                # an absurd stored sum (an older version's) is recomputed from sane trials
                recount = (
                    select(func.coalesce(func.sum(TrialRow.cost_seconds), 0.0))
                    .where(
                        TrialRow.study_id == sid,
                        TrialRow.cost_seconds >= 0.0,
                        TrialRow.cost_seconds <= MAX_SECONDS,
                    )
                    .scalar_subquery()
                )
                values: dict[str, Any] = {
                    "cost_spent": case((sane, StudyRow.cost_spent + add), else_=recount),
                    "updated_at": now,
                }
                ok = [(row.id, r.value) for row, r in mine if r.state == TrialState.COMPLETE]
                n_failed = len(mine) - len(ok)
                if ok:
                    values["n_complete"] = StudyRow.n_complete + len(ok)
                if n_failed:
                    values["n_failed"] = StudyRow.n_failed + n_failed
                vals = [(v, tid) for tid, v in ok if v is not None]
                if vals:
                    hi_v, hi_id = max(vals, key=lambda x: x[0])
                    lo_v, lo_id = min(vals, key=lambda x: x[0])
                    # an absurd stored best (NaN, inf) is replaced as if there were none
                    none = or_(
                        StudyRow.best_value.is_(None),
                        ~StudyRow.best_value.between(-MAX_VALUE, MAX_VALUE),
                    )
                    up = or_(none, StudyRow.best_value < hi_v)
                    down = or_(none, StudyRow.best_value > lo_v)
                    is_max = StudyRow.direction == "maximize"
                    # Every SET expression sees the row before the update: both agree.
                    values["best_value"] = case(
                        (and_(is_max, up), hi_v),
                        (and_(~is_max, down), lo_v),
                        else_=StudyRow.best_value,
                    )
                    values["best_trial_id"] = case(
                        (and_(is_max, up), hi_id),
                        (and_(~is_max, down), lo_id),
                        else_=StudyRow.best_trial_id,
                    )
                s.execute(update(StudyRow).where(StudyRow.id == sid).values(**values))
        return out

    def release_trial(
        self, trial_id: int, worker: str | None, reason: str, max_attempts: int
    ) -> Trial | None:
        now = time.time()  # also the release's mark (its failure entry): see ``_run``

        def go(retry: bool) -> Trial | None:
            with self._write() as s:
                row = self._locked_trial(s, trial_id)
                if row is None:
                    return None
                if retry and row.failures and (row.failures[-1] or {}).get("at") == now:
                    return _trial(row)  # the lost try committed
                if row.state != TrialState.RUNNING.value:
                    return None
                if worker is not None and row.worker != worker:
                    return None
                row.failures = [
                    *list(row.failures or []),
                    {"attempt": row.attempts, "worker": row.worker, "reason": reason, "at": now},
                ]
                if row.attempts >= max_attempts:
                    st = self._locked_study(s, row.study_id)
                    row.state = TrialState.FAILED.value
                    row.error = f"gave up after {row.attempts} attempts: {reason}"
                    row.finished_at = now
                    st.n_failed += 1
                    st.updated_at = now
                else:
                    row.state = TrialState.WAITING.value
                    row.worker = None
                    row.heartbeat_at = None
                    row.started_at = None
                s.flush()
                return _trial(row)

        return self._run(go)

    def stale_trials(self, heartbeat_before: float) -> list[Trial]:
        q = select(TrialRow).where(
            TrialRow.state == TrialState.RUNNING.value, TrialRow.heartbeat_at < heartbeat_before
        )
        return self._run(lambda _r: self._trials(q))

    def _trials(self, q: Any) -> list[Trial]:
        with self._read() as s:
            return [_trial(r) for r in s.scalars(q)]

    def running_trials_of(self, worker_prefix: str) -> list[Trial]:
        q = select(TrialRow).where(
            TrialRow.state == TrialState.RUNNING.value,
            TrialRow.worker.startswith(worker_prefix, autoescape=True),
        )
        return self._run(lambda _r: self._trials(q))

    def cancel_waiting(self, study_id: int, reason: str) -> int:
        now = time.time()

        def go(retry: bool) -> int:
            with self._write() as s:
                st = self._locked_study(s, study_id)
                if retry and st.updated_at == now:  # the lost try committed
                    return int(
                        s.scalar(
                            select(func.count(TrialRow.id)).where(
                                TrialRow.study_id == study_id, TrialRow.finished_at == now
                            )
                        )
                        or 0
                    )
                res = s.execute(
                    update(TrialRow)
                    .where(
                        TrialRow.study_id == study_id, TrialRow.state == TrialState.WAITING.value
                    )
                    .values(state=TrialState.FAILED.value, error=reason, finished_at=now)
                )
                n = int(res.rowcount)  # type: ignore[attr-defined]
                st.n_failed += n
                st.updated_at = now
                return n

        return self._run(go)

    def stage_keys(self, study_id: int, computed_only: bool = True) -> list[str]:
        """Keys of the study's stage runs; a stored key that is not a cache key (an older
        version's) is skipped: callers use these to delete cache entries."""
        q = select(StageRunRow.key).where(
            StageRunRow.study_id == study_id, StageRunRow.key.is_not(None)
        )
        if computed_only:
            q = q.where(StageRunRow.hit.is_(False))

        def go(_retry: bool) -> list[str]:
            with self._read() as s:
                return sorted({k for k in s.scalars(q) if k is not None and valid_key(k)})

        return self._run(go)

    # ---------------------------------------------------------------- lifecycle
    def ping(self) -> None:
        def go(_retry: bool) -> None:
            with self.engine.connect() as c:
                c.execute(text("SELECT 1"))

        self._run(go)

    def close(self) -> None:
        self.engine.dispose()


def _scalar(t: Trial, name: str) -> Any:
    v = getattr(t, name)
    return v.value if isinstance(v, TrialState) else v
