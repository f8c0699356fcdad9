"""A worker: claims WAITING trials from the store, runs them, reports them, heartbeating.

Runs as a local process started by the server (``python -m api.worker``), or by hand on any
machine that reaches the database and the cache (``eeipu worker --db URL --cache PATH``).
A worker whose parent server died finishes the trial in hand and exits; a worker that is
killed stops heartbeating and the server gives its trial to another worker.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from api.execution.runner import (
    execute_trial,
    open_cache_cached,
    resolve_pipeline,
    run_seed_of,
)
from api.store import StaleClaim, TrialResult, TrialState, TrialStore, open_store

log = logging.getLogger("eeipu.worker")


def new_worker_id(kind: str = "w") -> str:
    """``host:pid:kind-xxxxxx``: the prefix ``host:pid:`` finds a dead process's trials."""
    return f"{socket.gethostname()}:{os.getpid()}:{kind}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class ExitPolicy:
    """When a worker stops on its own.

    parent_pid: exit (after the trial in hand) when this process is gone.
    max_trials: exit after this many trials; idle_exit: after this many idle seconds.
    """

    parent_pid: int | None = None
    max_trials: int | None = None
    idle_exit: float | None = None


class Worker:
    """The claim -> run -> report loop.

    Args:
        store: the trial store.
        cache: cache location (directory or fsspec URL) shared with the server.
        allowed_modules: modules ``module:attribute`` pipelines may come from.
        heartbeat_interval: seconds between heartbeats of the running trial.
        study_id: work only on this study (default: any managed, running study).
        exit_policy: when to exit on its own (parent gone, trial count, idle time).
    """

    def __init__(
        self,
        store: TrialStore,
        cache: str,
        cache_max_bytes: int | None = None,
        allowed_modules: Sequence[str] = (),
        heartbeat_interval: float = 2.0,
        study_id: int | None = None,
        exit_policy: ExitPolicy = ExitPolicy(),
        poll: float = 0.1,
        worker_id: str | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.cache_max_bytes = cache_max_bytes
        self.allowed_modules = tuple(allowed_modules)
        self.heartbeat_interval = heartbeat_interval
        self.study_id = study_id
        self.parent_pid = exit_policy.parent_pid
        self.max_trials = exit_policy.max_trials
        self.idle_exit = exit_policy.idle_exit
        self.poll = poll
        self.id = worker_id or new_worker_id()
        self.stop = threading.Event()
        self.done = 0

    def _orphaned(self) -> bool:
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def _heartbeat(self, trial_id: int, finished: threading.Event) -> None:
        while not finished.wait(self.heartbeat_interval):
            try:
                if not self.store.heartbeat(trial_id, self.id):
                    log.warning("trial %s was taken from this worker", trial_id)
                    return
            except Exception as e:  # the database may be briefly unreachable: keep trying
                log.warning("heartbeat failed: %s", e)
            if self._orphaned():
                self.stop.set()

    def run_one(self) -> bool:
        """Claim and run one trial; False if there was none."""
        t = self.store.claim_trial(self.id, study_id=self.study_id, modes=["managed"])
        if t is None:
            return False
        finished = threading.Event()
        hb = threading.Thread(target=self._heartbeat, args=(t.id, finished), daemon=True)
        hb.start()
        try:
            study = self.store.get_study(t.study_id)
            if study is None:
                return True  # deleted meanwhile
            try:
                pipe = resolve_pipeline(study.spec.pipeline, self.allowed_modules)
                cache = open_cache_cached(self.cache, self.cache_max_bytes)
                result = execute_trial(
                    pipe, t.params, cache, study.spec.objective, run_seed_of(study)
                )
            except Exception as e:
                result = TrialResult(TrialState.FAILED, error=f"{type(e).__name__}: {e}")
            try:
                self.store.finish_trial(t.id, self.id, result)
            except (StaleClaim, KeyError) as e:
                log.warning("result of trial %s dropped: %s", t.id, e)
        finally:
            finished.set()
        self.done += 1
        return True

    def run(self) -> int:
        idle_since = time.monotonic()
        while not self.stop.is_set():
            if self._orphaned():
                break
            if self.run_one():
                idle_since = time.monotonic()
                if self.max_trials is not None and self.done >= self.max_trials:
                    break
                continue
            if self.idle_exit is not None and time.monotonic() - idle_since > self.idle_exit:
                break
            self.stop.wait(self.poll)
        return self.done


def main(argv: Sequence[str] | None = None) -> int:
    """Entry of a local worker process (the server passes everything on the command line)."""
    p = argparse.ArgumentParser(prog="python -m api.worker")
    p.add_argument("--db", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--cache-max-bytes", type=int, default=None)
    p.add_argument("--allowed-modules", default="")
    p.add_argument("--heartbeat-interval", type=float, default=2.0)
    p.add_argument("--parent-pid", type=int, default=None)
    p.add_argument("--worker-id", default=None)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s")
    store = open_store(a.db, run_migrations=False, pool_size=2)
    w = Worker(
        store,
        a.cache,
        a.cache_max_bytes,
        [m for m in a.allowed_modules.split(",") if m],
        a.heartbeat_interval,
        exit_policy=ExitPolicy(parent_pid=a.parent_pid),
        worker_id=a.worker_id,
    )

    def _term(*_: Any) -> None:
        w.stop.set()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    try:
        w.run()
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
