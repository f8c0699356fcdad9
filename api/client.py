"""A Python client of the eeipu service: study management and ask/tell over HTTP.

>>> from api.client import Client
>>> c = Client("http://127.0.0.1:8765")
>>> st = c.create_study("synthetic-3stage", budget_seconds=60, mode="external")
>>> with c.trial(st.id) as t:  # heartbeats while the block runs
...     t.value = run_my_pipeline(t.params)  # tells COMPLETE on exit, FAILED if it raises

Results are dataclasses that mirror the server's response schemas; a field the server adds
later is kept in ``extra`` instead of breaking the client. Every error the server reports is
raised as a ``ClientError`` (or a subclass by status) that carries the server's ``code`` and
``message``; a server that cannot be reached raises ``ServerUnreachable``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import httpx

__all__ = [
    "Best",
    "Client",
    "ClientError",
    "ConflictError",
    "ForbiddenError",
    "InvalidRequestError",
    "NotFoundError",
    "ServerUnreachable",
    "Study",
    "Trial",
    "TrialRun",
    "UnauthorizedError",
    "UnavailableError",
]

DEFAULT_TIMEOUT = 30.0
PAGE = 1000


# ---------------------------------------------------------------------------- errors
class ClientError(Exception):
    """The server refused a request: ``status`` (HTTP; 0: unreachable), ``code``, ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message


class InvalidRequestError(ClientError):
    """400 or 422: the request's content is wrong."""


class UnauthorizedError(ClientError):
    """401: a token is missing or wrong."""


class ForbiddenError(ClientError):
    """403: the operator has not allowed this."""


class NotFoundError(ClientError):
    """404: no such study, trial or entry."""


class ConflictError(ClientError):
    """409: the study or trial is in a state that forbids this now."""


class UnavailableError(ClientError):
    """503: a dependency of the server (database, cache) is unavailable."""


class ServerUnreachable(ClientError):
    """No HTTP answer at all (connection refused, timeout, bad address)."""


_BY_STATUS: dict[int, type[ClientError]] = {
    400: InvalidRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: InvalidRequestError,
    422: InvalidRequestError,
    503: UnavailableError,
}


def _error_of(r: httpx.Response) -> ClientError:
    code, message = "http_error", (r.text or r.reason_phrase).strip()
    try:
        body = r.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = str(body.get("error") or code)
        message = str(body.get("message") or body.get("detail") or message)
    cls = _BY_STATUS.get(r.status_code, ClientError)
    return cls(r.status_code, code, " ".join(message.split())[:2000])


# ---------------------------------------------------------------------------- results
T = TypeVar("T")


def _build(cls: type[T], d: dict[str, Any]) -> T:
    """``cls`` from a response dict: known fields set, unknown ones kept in ``extra``."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    known = {k: v for k, v in d.items() if k in names and k != "extra"}
    extra = {k: v for k, v in d.items() if k not in names}
    result: T = cast(Any, cls)(**known, extra=extra)  # every result class has ``extra``
    return result


@dataclass
class Study:
    """A study as ``GET /v1/studies/{id}`` returns it."""

    id: int
    state: str = "running"
    name: str | None = None
    pipeline: str = ""
    optimizer: str = ""
    objective: str = ""
    direction: str = "maximize"
    budget_seconds: float | None = None
    max_trials: int | None = None
    seed: int = 0
    run_seed: int | None = None
    budget_margin: float | None = 0.0
    max_consecutive_failures: int = 5
    parallelism: int = 1
    fixed_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    mode: str = "managed"
    created_at: float | None = None
    updated_at: float | None = None
    trials_done: int = 0
    n_trials: int = 0
    n_complete: int = 0
    n_failed: int = 0
    cost_spent: float | None = 0.0
    overshoot_seconds: float | None = None
    best_value: float | None = None
    best_trial_id: int | None = None
    best: dict[str, Any] | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {**d.pop("extra"), **d}


@dataclass
class Trial:
    """A trial as the trials routes return it; ``ask`` also fills ``reuse`` and ``stage_keys``."""

    id: int
    study_id: int
    number: int = 0
    state: str = "RUNNING"
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    reuse_depth: int = 0
    predicted_cost: float | None = None
    reused_depth: int | None = None
    metrics: dict[str, float | None] | None = None
    value: float | None = None
    cost_seconds: float | None = None
    worker: str | None = None
    attempts: int = 0
    heartbeat_at: float | None = None
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)
    stages: list[dict[str, Any]] | None = None
    reuse: dict[str, Any] | None = None
    stage_keys: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {**d.pop("extra"), **d}


@dataclass
class Best:
    """``GET /v1/studies/{id}/best``."""

    value: float | None
    trial_id: int
    number: int = 0
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, float | None] | None = None
    cost_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {**d.pop("extra"), **d}


@dataclass
class TrialRun:
    """The trial a ``Client.trial`` block runs: read ``params``, set ``value``/``metrics``
    (and optionally ``stages`` and ``cost_seconds``); the block's exit tells the server."""

    trial: Trial
    value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    cost_seconds: float | None = None
    result: Trial | None = None

    @property
    def id(self) -> int:
        return self.trial.id

    @property
    def params(self) -> dict[str, dict[str, Any]]:
        return self.trial.params


def default_worker_id() -> str:
    """A client id unique to this process (ask/tell are fenced by it)."""
    return f"client-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------------------- the client
class Client:
    """Synchronous client of one eeipu server (thread-safe; close it, or use ``with``).

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8765``.
        token: the server's ``EEIPU_API_TOKEN`` (needed for mutating calls when it has one).
        timeout: seconds per request.
        transport: an ``httpx`` transport (tests pass ``httpx.ASGITransport``/``MockTransport``).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url or not url.startswith(("http://", "https://")):
            raise ValueError(f"server URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    # -- plumbing
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kw: Any) -> Any:
        """One request; the decoded JSON body (``None`` for an empty one) or a ``ClientError``."""
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise ServerUnreachable(
                0, "unreachable", f"cannot reach {self.url}: {e or type(e).__name__}"
            ) from None
        if r.status_code >= 400:
            raise _error_of(r)
        if not r.content:
            return None
        try:
            return r.json()
        except ValueError:
            raise ClientError(r.status_code, "bad_response", "the server sent no JSON") from None

    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            page = self.request("GET", path, params={**params, "offset": offset, "limit": PAGE})
            yield from page["items"]
            if page.get("next_offset") is None:
                return
            offset = int(page["next_offset"])

    # -- studies
    # Every study option is an optional keyword a user sets; keyword-only is the design.
    def create_study(  # noqa: PLR0913
        self,
        pipeline: str,
        budget_seconds: float,
        optimizer: str | None = None,
        *,
        mode: str | None = None,
        max_trials: int | None = None,
        objective: str | None = None,
        direction: str | None = None,
        seed: int | None = None,
        run_seed: int | None = None,
        budget_margin: float | None = None,
        max_consecutive_failures: int | None = None,
        parallelism: int | None = None,
        fixed_params: dict[str, dict[str, Any]] | None = None,
        name: str | None = None,
        **options: Any,
    ) -> Study:
        """Create a study; options left ``None`` take the server's defaults."""
        body: dict[str, Any] = {
            "pipeline": pipeline,
            "budget_seconds": budget_seconds,
            "optimizer": optimizer,
            "mode": mode,
            "max_trials": max_trials,
            "objective": objective,
            "direction": direction,
            "seed": seed,
            "run_seed": run_seed,
            "budget_margin": budget_margin,
            "max_consecutive_failures": max_consecutive_failures,
            "parallelism": parallelism,
            "fixed_params": fixed_params,
            "name": name,
            **options,
        }
        body = {k: v for k, v in body.items() if v is not None}
        return _build(Study, self.request("POST", "/v1/studies", json=body))

    def studies(self, state: str | None = None) -> list[Study]:
        """Every study (optionally only those in ``state``), oldest first."""
        params = {"state": state} if state else {}
        return [_build(Study, d) for d in self._pages("/v1/studies", params)]

    def study(self, study_id: int) -> Study:
        return _build(Study, self.request("GET", f"/v1/studies/{int(study_id)}"))

    def trials(
        self, study_id: int, state: str | list[str] | None = None, stages: bool = False
    ) -> list[Trial]:
        """Every trial of a study (optionally only those in ``state``: one or a list)."""
        params: dict[str, Any] = {}
        if state:
            params["state"] = [state] if isinstance(state, str) else list(state)
        if stages:
            params["stages"] = "true"
        path = f"/v1/studies/{int(study_id)}/trials"
        return [_build(Trial, d) for d in self._pages(path, params)]

    def get_trial(self, study_id: int, trial_id: int) -> Trial:
        path = f"/v1/studies/{int(study_id)}/trials/{int(trial_id)}"
        return _build(Trial, self.request("GET", path))

    def best(self, study_id: int) -> Best:
        return _build(Best, self.request("GET", f"/v1/studies/{int(study_id)}/best"))

    def wait(self, study_id: int, timeout: float | None = None, poll: float = 0.2) -> Study:
        """Poll until the study leaves ``running``; ``TimeoutError`` after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.study(study_id)
            if st.state != "running":
                return st
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"study {study_id} still running after {timeout}s")
            time.sleep(
                poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
            )

    def stop(self, study_id: int) -> Study:
        return _build(Study, self.request("POST", f"/v1/studies/{int(study_id)}/stop"))

    def resume(self, study_id: int) -> Study:
        return _build(Study, self.request("POST", f"/v1/studies/{int(study_id)}/resume"))

    def delete(self, study_id: int) -> None:
        self.request("DELETE", f"/v1/studies/{int(study_id)}")

    # -- ask/tell
    def ask(self, study_id: int, worker: str | None = None) -> Trial:
        """Claim the next trial: its params, the cached prefix to reuse, every stage's key."""
        body = {"worker": worker} if worker else {}
        return _build(Trial, self.request("POST", f"/v1/studies/{int(study_id)}/ask", json=body))

    def tell(
        self,
        study_id: int,
        trial_id: int,
        value: float | None = None,
        metrics: dict[str, float] | None = None,
        *,
        state: str = "COMPLETE",
        stages: list[dict[str, Any]] | None = None,
        cost_seconds: float | None = None,
        worker: str | None = None,
        error: str | None = None,
    ) -> Trial:
        """Report a trial's outcome (finishes it for good)."""
        body: dict[str, Any] = {"state": state, "metrics": dict(metrics or {})}
        for k, v in (
            ("value", value),
            ("stages", stages),
            ("cost_seconds", cost_seconds),
            ("worker", worker),
            ("error", error),
        ):
            if v is not None:
                body[k] = v
        path = f"/v1/studies/{int(study_id)}/trials/{int(trial_id)}/tell"
        return _build(Trial, self.request("POST", path, json=body))

    def heartbeat(self, study_id: int, trial_id: int, worker: str | None = None) -> None:
        body = {"worker": worker} if worker else {}
        path = f"/v1/studies/{int(study_id)}/trials/{int(trial_id)}/heartbeat"
        self.request("POST", path, json=body)

    @contextmanager
    def trial(
        self, study_id: int, worker: str | None = None, heartbeat_interval: float = 2.0
    ) -> Iterator[TrialRun]:
        """Ask for a trial, heartbeat it while the block runs, tell its outcome on exit.

        The block sets ``value`` and/or ``metrics`` on the yielded ``TrialRun``: on a normal
        exit the trial is told COMPLETE with them (FAILED, and ``ValueError``, when it set
        neither); if the block raises, the trial is told FAILED with the exception's message
        and the exception propagates. The server's answer to the tell is ``run.result``.
        """
        if heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be > 0")
        worker = worker or default_worker_id()
        t = self.ask(study_id, worker)
        run = TrialRun(trial=t)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(heartbeat_interval):
                # A missed beat is retried at the next one; the tell reports for good.
                with contextlib.suppress(ClientError):
                    self.heartbeat(study_id, t.id, worker)

        hb = threading.Thread(target=beat, name=f"eeipu-heartbeat-{t.id}", daemon=True)
        hb.start()
        try:
            yield run
        except BaseException as e:
            stop.set()
            hb.join()
            msg = " ".join(str(e).split()) or type(e).__name__
            run.result = self.tell(
                study_id,
                t.id,
                state="FAILED",
                stages=run.stages or None,
                cost_seconds=run.cost_seconds,
                worker=worker,
                error=f"{type(e).__name__}: {msg}"[:4000],
            )
            raise
        stop.set()
        hb.join()
        if run.value is None and not run.metrics:
            run.result = self.tell(
                study_id, t.id, state="FAILED", worker=worker, error="no value or metrics reported"
            )
            raise ValueError(f"trial {t.id}: the block set neither value nor metrics")
        run.result = self.tell(
            study_id,
            t.id,
            run.value,
            run.metrics,
            stages=run.stages or None,
            cost_seconds=run.cost_seconds,
            worker=worker,
        )
