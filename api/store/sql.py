"""The SQL trial store (SQLite by default, PostgreSQL by URL), on SQLAlchemy 2.0's typed ORM.

SQLite: WAL journal, a 30 s busy timeout and ``BEGIN IMMEDIATE`` for every write transaction,
so writers queue for the lock instead of failing with "database is locked" when a read
transaction tries to upgrade (Optuna #820). PostgreSQL: pre-ping and recycled pooled
connections (dropped idle connections, Optuna #1347), claims under ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Engine,
    Text,
    and_,
    case,
    cast,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

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

MIGRATIONS = Path(__file__).parent / "migrations"
_WRITE = "eeipu_write"


def _study(row: StudyRow) -> Study:
    return Study(
        id=row.id,
        spec=StudySpec(
            pipeline=row.pipeline,
            optimizer=row.optimizer,
            budget_seconds=row.budget_seconds,
            objective=row.objective,
            direction=row.direction,
            max_trials=row.max_trials,
            seed=row.seed,
            parallelism=row.parallelism,
            fixed_params=dict(row.fixed_params or {}),
            mode=row.mode,
            name=row.name,
        ),
        state=StudyState(row.state),
        created_at=row.created_at,
        updated_at=row.updated_at,
        n_complete=row.n_complete,
        n_failed=row.n_failed,
        n_trials=row.n_trials,
        cost_spent=row.cost_spent,
        best_value=row.best_value,
        best_trial_id=row.best_trial_id,
        optimizer_state=row.optimizer_state,
        ask_version=row.ask_version,
        error=row.error,
    )


def _trial(row: TrialRow, stages: list[StageRun] | None = None) -> Trial:
    return Trial(
        id=row.id,
        study_id=row.study_id,
        number=row.number,
        state=TrialState(row.state),
        params=row.params,
        reuse_depth=row.reuse_depth,
        predicted_cost=row.predicted_cost,
        created_at=row.created_at,
        attempts=row.attempts,
        worker=row.worker,
        heartbeat_at=row.heartbeat_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        metrics=row.metrics,
        value=row.value,
        cost_seconds=row.cost_seconds,
        reused_depth=row.reused_depth,
        error=row.error,
        failures=list(row.failures or []),
        stages=stages,
    )


def _stage(row: StageRunRow) -> StageRun:
    return StageRun(
        stage=row.stage,
        position=row.position,
        key=row.key,
        hit=row.hit,
        cost_seconds=row.cost_seconds,
        load_seconds=row.load_seconds,
        bytes=row.bytes,
        original_cost_seconds=row.original_cost_seconds,
    )


def make_engine(url: str, pool_size: int = 10) -> Engine:
    """An engine tuned for the store's access pattern (see the module docstring)."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        memory = u.database in (None, "", ":memory:")
        if not memory and u.database:
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        if memory:
            kwargs["poolclass"] = StaticPool
        else:
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = 2 * pool_size
        engine = create_engine(url, **kwargs)

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
    if u.get_backend_name() == "postgresql":
        return create_engine(
            url,
            pool_pre_ping=True,
            pool_recycle=1800,
            pool_size=pool_size,
            max_overflow=2 * pool_size,
        )
    raise ValueError(f"unsupported database URL {u.render_as_string()!r}: use sqlite or postgresql")


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (safe with concurrent starters)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.execution_options(**{_WRITE: True}).begin() as conn:
        if conn.dialect.name == "postgresql":  # one migrator at a time across processes
            conn.execute(text("SELECT pg_advisory_xact_lock(727274)"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class SQLTrialStore(TrialStore):
    """``TrialStore`` on SQLAlchemy; see ``api.store.base`` for the contract.

    Args:
        url: ``sqlite:///path.db`` or ``postgresql://user@host/db``.
        run_migrations: apply Alembic migrations on open (the service always does).
        pool_size: pooled connections (the API server's thread pool plus its scheduler).
    """

    def __init__(self, url: str, run_migrations: bool = True, pool_size: int = 10) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size)
        self._wengine = self.engine.execution_options(**{_WRITE: True})
        self.dialect = self.engine.dialect.name
        if run_migrations:
            migrate(self.engine)

    # ---------------------------------------------------------------- sessions
    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s:
            yield s

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with Session(self._wengine, expire_on_commit=False) as s, s.begin():
            yield s

    # ---------------------------------------------------------------- studies
    def create_study(self, spec: StudySpec, optimizer_state: dict[str, Any] | None) -> Study:
        now = time.time()
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
        with self._write() as s:
            s.add(row)
            s.flush()
            return _study(row)

    def get_study(self, study_id: int) -> Study | None:
        # The API's hottest read: a Core select of the mapped table (no Session, no identity
        # map); the row carries its own counters, so this is the whole answer.
        q = select(StudyRow.__table__).where(StudyRow.__table__.c.id == study_id)
        with self.engine.connect() as c:
            row: Any = c.execute(q).one_or_none()  # a Row: same attribute names as StudyRow
        return _study(row) if row is not None else None

    def list_studies(
        self, state: StudyState | None = None, limit: int = 100, offset: int = 0
    ) -> list[Study]:
        q = select(StudyRow).order_by(StudyRow.id).limit(limit).offset(offset)
        if state is not None:
            q = q.where(StudyRow.state == state.value)
        with self._read() as s:
            return [_study(r) for r in s.scalars(q)]

    def count_studies(self, state: StudyState | None = None) -> int:
        q = select(func.count(StudyRow.id))
        if state is not None:
            q = q.where(StudyRow.state == state.value)
        with self._read() as s:
            return int(s.scalar(q) or 0)

    def set_study_state(
        self,
        study_id: int,
        state: StudyState,
        from_states: Sequence[StudyState] | None = None,
        error: str | None = None,
    ) -> bool:
        q = update(StudyRow).where(StudyRow.id == study_id)
        if from_states is not None:
            q = q.where(StudyRow.state.in_([st.value for st in from_states]))
        q = q.values(state=state.value, updated_at=time.time(), error=error)
        with self._write() as s:
            return bool(s.execute(q).rowcount)  # type: ignore[attr-defined]

    def delete_study(self, study_id: int) -> bool:
        with self._write() as s:
            s.execute(delete(StageRunRow).where(StageRunRow.study_id == study_id))
            s.execute(delete(TrialRow).where(TrialRow.study_id == study_id))
            res = s.execute(delete(StudyRow).where(StudyRow.id == study_id))
            return bool(res.rowcount)  # type: ignore[attr-defined]

    # ---------------------------------------------------------------- proposals
    def add_trials(
        self,
        study_id: int,
        trials: Sequence[NewTrial],
        optimizer_state: dict[str, Any] | None,
        expected_version: int,
    ) -> list[Trial] | None:
        now = time.time()
        with self._write() as s:
            st = s.scalars(
                select(StudyRow).where(StudyRow.id == study_id).with_for_update()
            ).one_or_none()
            if st is None:
                raise KeyError(f"no study {study_id}")
            if st.ask_version != expected_version:
                return None
            rows = [
                TrialRow(
                    study_id=study_id,
                    number=st.n_trials + i,
                    state=TrialState.WAITING.value,
                    params=t.params,
                    reuse_depth=t.reuse_depth,
                    predicted_cost=t.predicted_cost,
                    created_at=now,
                    attempts=0,
                    failures=[],
                )
                for i, t in enumerate(trials)
            ]
            s.add_all(rows)
            st.n_trials += len(rows)
            st.ask_version += 1
            st.optimizer_state = optimizer_state
            st.updated_at = now
            s.flush()
            return [_trial(r) for r in rows]

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
        with self._read() as s:
            row = s.get(TrialRow, trial_id)
            if row is None:
                return None
            stages = self._stages_of(s, [trial_id])[trial_id] if with_stages else None
            return _trial(row, stages)

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
        with self._read() as s:
            rows = list(s.scalars(q))
            if not with_stages:
                return [_trial(r) for r in rows]
            stages = self._stages_of(s, [r.id for r in rows])
            return [_trial(r, stages[r.id]) for r in rows]

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
        # Core select, JSON columns cast to text: the stored JSON is spliced into the answer
        # as it is (no ORM objects, no decode/encode round trip).
        cols = [getattr(TrialRow, c) for c in self._SCALARS]
        q = select(
            *cols,
            cast(TrialRow.params, Text),
            cast(TrialRow.metrics, Text),
            cast(TrialRow.failures, Text),
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
        names = self._SCALARS
        dumps = json.JSONEncoder(separators=(",", ":")).encode
        out = []
        with self.engine.connect() as c:
            for row in c.execute(q):
                head = dumps(dict(zip(names, row[:-3], strict=True)))
                params, metrics, failures = row[-3:]
                out.append(
                    f'{head[:-1]},"params":{params},"metrics":{metrics or "null"},'
                    f'"failures":{failures or "[]"}}}'
                )
        return out

    def count_trials(
        self,
        study_id: int,
        states: Sequence[TrialState] | None = None,
        after: int | None = None,
    ) -> int:
        q = select(func.count(TrialRow.id)).where(TrialRow.study_id == study_id)
        if after is not None:
            q = q.where(TrialRow.number > after)
        if states:
            q = q.where(TrialRow.state.in_([st.value for st in states]))
        with self._read() as s:
            return int(s.scalar(q) or 0)

    def trial_counts(self, study_id: int) -> dict[TrialState, int]:
        q = (
            select(TrialRow.state, func.count(TrialRow.id))
            .where(TrialRow.study_id == study_id)
            .group_by(TrialRow.state)
        )
        out = {st: 0 for st in TrialState}
        with self._read() as s:
            for state, n in s.execute(q):
                out[TrialState(state)] = int(n)
        return out

    def claim_trial(
        self,
        worker: str,
        study_id: int | None = None,
        modes: Sequence[str] | None = None,
    ) -> Trial | None:
        q = (
            select(TrialRow.id)
            .join(StudyRow, StudyRow.id == TrialRow.study_id)
            .where(
                TrialRow.state == TrialState.WAITING.value,
                StudyRow.state == StudyState.RUNNING.value,
            )
        )
        if study_id is not None:
            q = q.where(TrialRow.study_id == study_id)
        if modes is not None:
            q = q.where(StudyRow.mode.in_(list(modes)))
        q = q.order_by(TrialRow.id).limit(1).with_for_update(skip_locked=True, of=TrialRow)
        for _ in range(20):
            with self._read() as r:  # most polls find nothing: don't take the write lock
                if r.scalar(q) is None:
                    return None
            with self._write() as s:
                tid = s.scalar(q)
                if tid is None:
                    return None
                now = time.time()
                res = s.execute(
                    update(TrialRow)
                    .where(TrialRow.id == tid, TrialRow.state == TrialState.WAITING.value)
                    .values(
                        state=TrialState.RUNNING.value,
                        worker=worker,
                        attempts=TrialRow.attempts + 1,
                        heartbeat_at=now,
                        started_at=now,
                    )
                )
                if res.rowcount != 1:  # type: ignore[attr-defined]
                    continue  # lost a race (only possible without row locks): try the next
                row = s.get(TrialRow, tid, populate_existing=True)
                assert row is not None
                return _trial(row)
        return None

    def heartbeat(self, trial_id: int, worker: str) -> bool:
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

    def _locked_trial(self, s: Session, trial_id: int) -> TrialRow | None:
        return s.scalars(
            select(TrialRow).where(TrialRow.id == trial_id).with_for_update()
        ).one_or_none()

    def _locked_study(self, s: Session, study_id: int) -> StudyRow:
        return s.scalars(select(StudyRow).where(StudyRow.id == study_id).with_for_update()).one()

    def finish_trials(
        self, items: Sequence[tuple[int, str | None, TrialResult, int | None]]
    ) -> list[Trial | Exception]:
        for _, _, result, _ in items:
            if result.state not in (TrialState.COMPLETE, TrialState.FAILED):
                raise ValueError("a trial can only finish as COMPLETE or FAILED")
        now = time.time()
        out: list[Trial | Exception] = []
        # Per trial one guarded UPDATE ... RETURNING (the guard is the claim fence); then all
        # stage runs; then each study's counters as one UPDATE of SQL expressions, last, so
        # the study row (which every tell of the study touches) is locked only until the
        # commit, and one commit (one fsync) serves the whole batch.
        with self._write() as s:
            done: list[tuple[TrialRow, TrialResult]] = []
            for trial_id, worker, result, study_id in items:
                guard = [TrialRow.id == trial_id, TrialRow.state == TrialState.RUNNING.value]
                if worker is not None:
                    guard.append(TrialRow.worker == worker)
                if study_id is not None:
                    guard.append(TrialRow.study_id == study_id)
                row = s.scalars(
                    update(TrialRow)
                    .where(*guard)
                    .values(
                        state=result.state.value,
                        metrics=dict(result.metrics),
                        value=result.value,
                        cost_seconds=result.cost_seconds,
                        reused_depth=result.reused_depth,
                        error=result.error,
                        finished_at=now,
                        heartbeat_at=now,
                    )
                    .returning(TrialRow)
                    .execution_options(synchronize_session=False)
                ).one_or_none()
                if row is None:
                    cur = s.get(TrialRow, trial_id)
                    if cur is None or (study_id is not None and cur.study_id != study_id):
                        out.append(KeyError(f"no trial {trial_id}"))
                    elif cur.state != TrialState.RUNNING.value:
                        out.append(StaleClaim(f"trial {trial_id} is {cur.state}, not RUNNING"))
                    else:
                        out.append(StaleClaim(f"trial {trial_id} is claimed by another worker"))
                    continue
                done.append((row, result))
                out.append(_trial(row, list(result.stages)))
            runs = [
                {
                    "trial_id": row.id,
                    "study_id": row.study_id,
                    "position": sr.position,
                    "stage": sr.stage,
                    "key": sr.key,
                    "hit": sr.hit,
                    "cost_seconds": sr.cost_seconds,
                    "load_seconds": sr.load_seconds,
                    "bytes": sr.bytes,
                    "original_cost_seconds": sr.original_cost_seconds,
                }
                for row, result in done
                for sr in result.stages
            ]
            if runs:
                s.execute(insert(StageRunRow), runs)
            for sid in sorted({row.study_id for row, _ in done}):
                mine = [(row, r) for row, r in done if row.study_id == sid]
                values: dict[str, Any] = {
                    "cost_spent": StudyRow.cost_spent + sum(float(r.cost_seconds) for _, r in mine),
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
                    up = or_(
                        StudyRow.best_value.is_(None),
                        StudyRow.best_value < hi_v,
                    )
                    down = or_(StudyRow.best_value.is_(None), StudyRow.best_value > lo_v)
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
        now = time.time()
        with self._write() as s:
            row = self._locked_trial(s, trial_id)
            if row is None or row.state != TrialState.RUNNING.value:
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

    def stale_trials(self, heartbeat_before: float) -> list[Trial]:
        q = select(TrialRow).where(
            TrialRow.state == TrialState.RUNNING.value, TrialRow.heartbeat_at < heartbeat_before
        )
        with self._read() as s:
            return [_trial(r) for r in s.scalars(q)]

    def running_trials_of(self, worker_prefix: str) -> list[Trial]:
        q = select(TrialRow).where(
            TrialRow.state == TrialState.RUNNING.value,
            TrialRow.worker.startswith(worker_prefix, autoescape=True),
        )
        with self._read() as s:
            return [_trial(r) for r in s.scalars(q)]

    def cancel_waiting(self, study_id: int, reason: str) -> int:
        now = time.time()
        with self._write() as s:
            st = self._locked_study(s, study_id)
            res = s.execute(
                update(TrialRow)
                .where(TrialRow.study_id == study_id, TrialRow.state == TrialState.WAITING.value)
                .values(state=TrialState.FAILED.value, error=reason, finished_at=now)
            )
            n = int(res.rowcount)  # type: ignore[attr-defined]
            st.n_failed += n
            st.updated_at = now
            return n

    def stage_keys(self, study_id: int, computed_only: bool = True) -> list[str]:
        q = select(StageRunRow.key).where(
            StageRunRow.study_id == study_id, StageRunRow.key.is_not(None)
        )
        if computed_only:
            q = q.where(StageRunRow.hit.is_(False))
        with self._read() as s:
            return sorted({k for k in s.scalars(q) if k})

    # ---------------------------------------------------------------- lifecycle
    def ping(self) -> None:
        with self.engine.connect() as c:
            c.execute(text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()
