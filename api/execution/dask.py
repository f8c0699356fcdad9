"""Trials on a Dask distributed cluster (real scheduler and workers, many machines).

The server claims trials as ``dask:...`` workers, submits each as a task, heartbeats the trials
while their futures run, and reports the results. The cache must be on a backend every Dask
worker reaches (a shared directory or an fsspec URL). If a Dask worker dies, Dask reruns the
task elsewhere; if Dask gives up (``KilledWorker``), the trial goes back to WAITING.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from api.config import Settings
from api.execution import Executor
from api.execution.runner import result_from_dict, run_seed_of, run_trial_task
from api.store import StaleClaim, Trial, TrialResult, TrialState, TrialStore
from api.worker import new_worker_id

log = logging.getLogger("eeipu.dask")


class DaskExecutor(Executor):
    """Runs trials as tasks on the Dask cluster at ``address`` (``tcp://host:port``)."""

    def __init__(self, store: TrialStore, settings: Settings, address: str) -> None:
        from distributed import Client

        self.store = store
        self.settings = settings
        self.address = address
        self.client = Client(address, timeout=30, set_as_default=False)
        self.worker_id = new_worker_id("dask")
        self._inflight: dict[Any, Trial] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.completed = 0

    @property
    def capacity(self) -> int:
        try:
            return max(1, int(sum(self.client.nthreads().values())))
        except Exception:
            return 1

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="eeipu-dask", daemon=True)
        self._thread.start()

    def _submit(self, t: Trial) -> None:
        study = self.store.get_study(t.study_id)
        if study is None:
            return
        s = self.settings
        fut = self.client.submit(
            run_trial_task,
            study.spec.pipeline,
            t.params,
            study.spec.objective,
            s.cache,
            s.cache_max_bytes,
            list(s.allowed_pipeline_modules),
            run_seed_of(study),
            key=f"eeipu-trial-{t.id}-{t.attempts}",
            pure=False,
        )
        self._inflight[fut] = t

    def _collect(self, fut: Any, t: Trial) -> None:
        try:
            result = result_from_dict(fut.result())
        except Exception as e:
            from distributed import KilledWorker

            if isinstance(e, KilledWorker | OSError):
                self.store.release_trial(
                    t.id, self.worker_id, f"dask: {type(e).__name__}", self.settings.max_attempts
                )
                return
            result = TrialResult(TrialState.FAILED, error=f"{type(e).__name__}: {e}")
        try:
            self.store.finish_trial(t.id, self.worker_id, result)
            self.completed += 1
        except (StaleClaim, KeyError) as e:
            log.warning("result of trial %s dropped: %s", t.id, e)

    def _loop(self) -> None:
        last_hb = 0.0
        while not self._stop.wait(0.05):
            try:
                for fut, t in list(self._inflight.items()):
                    if fut.done():
                        del self._inflight[fut]
                        self._collect(fut, t)
                cap = self.capacity
                while len(self._inflight) < cap:
                    claimed = self.store.claim_trial(self.worker_id, modes=["managed"])
                    if claimed is None:
                        break
                    self._submit(claimed)
                now = time.monotonic()
                if now - last_hb >= self.settings.heartbeat_interval:
                    last_hb = now
                    for running in list(self._inflight.values()):
                        self.store.heartbeat(running.id, self.worker_id)
            except Exception as e:
                log.exception("dask executor loop: %s", e)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for fut, t in list(self._inflight.items()):  # give unfinished trials back
            fut.cancel()
            self.store.release_trial(
                t.id, self.worker_id, "server stopped", self.settings.max_attempts
            )
        self._inflight.clear()
        self.client.close()

    def describe(self) -> dict[str, Any]:
        try:
            workers = [
                {"address": a, "nthreads": n} for a, n in sorted(self.client.nthreads().items())
            ]
        except Exception as e:
            workers = [{"error": str(e)}]
        return {
            "kind": "dask",
            "scheduler": self.address,
            "worker_id": self.worker_id,
            "inflight": len(self._inflight),
            "workers": workers,
        }
