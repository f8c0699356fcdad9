"""Trials run in this process, one at a time: what ``eeipu tune`` and ``api.tuning.tune`` use.

The study is driven exactly as the server drives it (settle, fill, claim, run, report), over
the same store and the same ``StudyService``: ``eeipu tune`` and a study over HTTP with
parallelism 1 propose the same trials in the same order. Trials are claimed as managed ones
and heartbeated, so a server sharing the database neither steals them nor double-runs them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from api.execution import Executor
from api.execution.runner import execute_trial, run_seed_of
from api.service import StudyService
from api.store import StaleClaim, StudyState, Trial, TrialResult, TrialState
from api.worker import new_worker_id

log = logging.getLogger("eeipu.inprocess")

__all__ = ["InProcessExecutor"]


class InProcessExecutor(Executor):
    """Runs the trials of managed studies in the calling thread (``drive``) or in one
    background thread (``start``), through ``service``'s pipelines and cache.

    Args:
        service: the study service (store, cache, pipelines).
        heartbeat_interval: seconds between heartbeats of the running trial.
        poll: seconds to wait when another process holds the study's only trial.
    """

    def __init__(
        self, service: StudyService, heartbeat_interval: float = 2.0, poll: float = 0.05
    ) -> None:
        self.service = service
        self.heartbeat_interval = heartbeat_interval
        self.poll = poll
        self.worker_id = new_worker_id("inproc")
        self.current: Trial | None = None
        self.completed = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def capacity(self) -> int:
        return 1

    # ---------------------------------------------------------------- one trial
    def _heartbeat(self, trial_id: int, finished: threading.Event) -> None:
        while not finished.wait(self.heartbeat_interval):
            try:
                if not self.service.store.heartbeat(trial_id, self.worker_id):
                    return
            except Exception as e:  # the database may be briefly unreachable
                log.warning("heartbeat failed: %s", e)

    def run_one(self, study_id: int | None = None) -> Trial | None:
        """Claim one WAITING trial (of ``study_id``, if given), run it, report it; the
        finished trial, or None if there was nothing to claim or its result was dropped."""
        store = self.service.store
        t = store.claim_trial(self.worker_id, study_id=study_id, modes=["managed"])
        if t is None:
            return None
        self.current = t
        finished = threading.Event()
        hb = threading.Thread(target=self._heartbeat, args=(t.id, finished), daemon=True)
        hb.start()
        try:
            done = self._run_claimed(t)
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM) mid-trial: the trial stays ``current`` so that
            # ``release_current`` can give it back.
            finished.set()
            raise
        finished.set()
        self.current = None
        if done is not None:
            self.completed += 1
        return done

    def _run_claimed(self, t: Trial) -> Trial | None:
        store = self.service.store
        study = store.get_study(t.study_id)
        if study is None:
            return None
        try:
            pipe = self.service.pipeline(study.spec.pipeline)
            result = execute_trial(
                pipe, t.params, self.service.cache, study.spec.objective, run_seed_of(study)
            )
        except Exception as e:
            result = TrialResult(TrialState.FAILED, error=f"{type(e).__name__}: {e}")
        try:
            return store.finish_trial(t.id, self.worker_id, result)
        except (StaleClaim, KeyError) as e:
            log.warning("result of trial %s dropped: %s", t.id, e)
            return None

    def release_current(self, reason: str) -> None:
        """Give the trial in hand back (WAITING again): an interrupted run resumes it."""
        t = self.current
        if t is not None:
            self.service.store.release_trial(
                t.id, self.worker_id, reason, self.service.settings.max_attempts + 1
            )
            self.current = None

    # ---------------------------------------------------------------- a whole study
    def drive(
        self,
        study_id: int,
        on_trial: Callable[[Trial], None] | None = None,
        stop: threading.Event | None = None,
    ) -> StudyState:
        """Run ``study_id`` until it leaves ``running`` (completed, failed or stopped), as
        the scheduler would: settle, fill, then run the trial it proposed."""
        svc = self.service
        while stop is None or not stop.is_set():
            svc.settle(study_id)
            svc.fill(study_id)
            st = svc.get_study(study_id)
            if st.state != StudyState.RUNNING:
                return st.state
            done = self.run_one(study_id)
            if done is not None:
                if on_trial is not None:
                    on_trial(done)
                continue
            counts = svc.store.trial_counts(study_id)
            if not counts[TrialState.WAITING] and not counts[TrialState.RUNNING]:
                continue  # settle/fill decide on the next round
            time.sleep(self.poll)  # another process runs the study's trial
        return svc.get_study(study_id).state

    # ---------------------------------------------------------------- Executor
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="eeipu-inproc", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.run_one() is None:
                    self._stop.wait(self.poll)
            except Exception as e:  # database briefly away: try again
                log.warning("in-process executor: %s", e)
                self._stop.wait(1.0)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "inprocess",
            "workers": [{"id": self.worker_id, "completed": self.completed}],
        }
