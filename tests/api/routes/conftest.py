"""One live server per test module (token set, no workers: these tests drive it over HTTP)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api._server import LiveServer, start_server

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("api")
    srv = start_server(
        tmp,
        db_url=f"sqlite:///{tmp / 'db.sqlite'}",
        workers=0,
        token=TOKEN,
        extra_env={"EEIPU_ALLOWED_PIPELINE_MODULES": "tests.api.gated_pipeline"},
    )
    try:
        yield srv
    finally:
        srv.stop()
