"""Fixtures of the service tests: databases (SQLite and PostgreSQL) and live servers.

PostgreSQL: one throw-away database per test session (unique name, dropped at the end), so
parallel runs never collide. If the server is unreachable the tests skip, except under
``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api._server import LiveServer, start_server

PG_ADMIN = os.environ.get("EEIPU_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin_engine():  # type: ignore[no-untyped-def]
    from sqlalchemy import create_engine

    from api.store.sql import normalize_url

    return create_engine(normalize_url(PG_ADMIN), isolation_level="AUTOCOMMIT", pool_pre_ping=True)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database for this session."""
    from sqlalchemy import text

    try:
        eng = _admin_engine()
        with eng.connect() as c:
            c.execute(text("SELECT 1"))
    except Exception as e:  # pragma: no cover - depends on the machine
        msg = f"PostgreSQL unreachable at {PG_ADMIN}: {e}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    name = f"eeipu_t_{uuid.uuid4().hex[:12]}"
    with eng.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with eng.connect() as c:
            c.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        eng.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL of each backend (a new SQLite file; the session's PostgreSQL db)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("pg_server_url"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def server(tmp_path: Path, sqlite_url: str) -> Iterator[LiveServer]:
    """A live server (uvicorn in a subprocess on a free loopback port), 2 local workers."""
    srv = start_server(tmp_path, db_url=sqlite_url, workers=2)
    try:
        yield srv
    finally:
        srv.stop()
