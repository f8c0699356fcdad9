"""Schema fuzzing of a live server from its own OpenAPI document (schemathesis).

Every operation gets generated requests, valid and invalid, with and without the bearer
token; every check runs: no 5xx, statuses, content types, headers and bodies as documented,
schema-invalid requests refused. Short in CI (``EEIPU_FUZZ_EXAMPLES`` per operation and mode,
4 by default); ``EEIPU_FUZZ_EXAMPLES=200`` makes a long run.

Checks left out, and why:
- ``positive_data_acceptance``: a schema-valid request may still name a pipeline or a study
  that does not exist (422/404 by design; names are open-ended, ids are not enumerable).
- ``use_after_free`` / ``ensure_resource_availability`` / ``object_level_authorization``:
  stateful checks over links the document does not declare.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("schemathesis")

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import checks as sc

from tests.api._server import LiveServer, start_server

TOKEN = "fuzz-token"
EXAMPLES = int(os.environ.get("EEIPU_FUZZ_EXAMPLES", "4"))
EXCLUDED = [
    sc.positive_data_acceptance,
    sc.use_after_free,
    sc.ensure_resource_availability,
    sc.object_level_authorization,
]


def _serve(tmp: Path, token: str | None) -> LiveServer:
    return start_server(tmp, db_url=f"sqlite:///{tmp / 'db.sqlite'}", workers=0, token=token)


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    srv = _serve(tmp_path_factory.mktemp("fuzz-open"), None)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    srv = _serve(tmp_path_factory.mktemp("fuzz-token"), TOKEN)
    try:
        yield srv
    finally:
        srv.stop()


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _fuzz(srv: LiveServer, headers: dict[str, str] | None, reads: bool = True) -> None:
    """Run every operation in both generation modes; collect failures per operation so one
    run reports all of them (schemathesis's pytest plugin needs a pytest it supports)."""
    schema = schemathesis.openapi.from_url(srv.url + "/openapi.json")
    failures: list[str] = []
    n_ops = 0
    for result in schema.get_all_operations():
        op = result.ok()  # type: ignore[union-attr]  # an Err raises: the document is bad
        if not reads and op.method.upper() == "GET":
            continue  # the token changes nothing for reads: the open server covers them
        n_ops += 1
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @FUZZ
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case: schemathesis.Case) -> None:
                # Generous: the first listing of pipelines builds every built-in one.
                case.call_and_validate(headers=headers, excluded_checks=EXCLUDED, timeout=120)

            try:
                run()
            except Unsatisfiable:  # no parameters to break: nothing negative to send
                continue
            except Exception as e:  # one report per operation and mode
                subs = getattr(e, "exceptions", None) or [e.__cause__ or e]
                text = "; ".join(f"{type(x).__name__}: {x}" for x in [e, *subs])
                failures.append(f"{op.method.upper()} {op.path} ({mode.value}): {text}"[:4000])
    assert n_ops >= (15 if reads else 9)
    assert not failures, "\n\n".join(failures) + "\n\nserver log:\n" + srv.output()[-5000:]


def test_fuzz_without_token(open_server: LiveServer) -> None:
    _fuzz(open_server, None)


def test_fuzz_with_token(token_server: LiveServer) -> None:
    _fuzz(token_server, {"Authorization": f"Bearer {TOKEN}"}, reads=False)


def test_fuzz_with_token_anonymous(token_server: LiveServer) -> None:
    """Without the token every mutating operation is a 401, whatever the body."""
    _fuzz(token_server, None, reads=False)
