"""Local worker processes, supervised: a dead one is replaced and its trial given back."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api.config import Settings
from api.execution import Executor
from api.store import TrialStore

log = logging.getLogger("eeipu.workers")
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class _Proc:
    slot: int
    proc: subprocess.Popen[bytes]
    started: float
    restarts: int = 0

    @property
    def prefix(self) -> str:
        return f"{socket.gethostname()}:{self.proc.pid}:"


class LocalWorkerPool(Executor):
    """``n`` worker processes (``python -m api.worker``) on this machine.

    Separate processes (not threads): a stage that crashes or leaks cannot take the server
    down, and a killed worker loses only its trial, which goes back to WAITING at once.
    """

    def __init__(self, store: TrialStore, settings: Settings, n: int) -> None:
        self.store = store
        self.settings = settings
        self.n = n
        self._procs: dict[int, _Proc] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.replaced = 0

    @property
    def capacity(self) -> int:
        return max(1, self.n)

    def _spawn(self, slot: int, restarts: int = 0) -> _Proc:
        s = self.settings
        args = [
            sys.executable,
            "-m",
            "api.worker",
            "--db",
            s.db_url,
            "--cache",
            s.cache,
            "--heartbeat-interval",
            str(s.heartbeat_interval),
            "--parent-pid",
            str(os.getpid()),
            "--allowed-modules",
            ",".join(s.allowed_pipeline_modules),
        ]
        if s.cache_max_bytes:
            args += ["--cache-max-bytes", str(s.cache_max_bytes)]
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.Popen(args, env=env, start_new_session=True)
        return _Proc(slot, proc, time.time(), restarts)

    def start(self) -> None:
        with self._lock:
            for i in range(self.n):
                self._procs[i] = self._spawn(i)
        self._thread = threading.Thread(target=self._supervise, name="eeipu-workers", daemon=True)
        self._thread.start()

    def _supervise(self) -> None:
        # A worker that dies young (bad database URL, broken environment) is replaced after
        # a growing delay, so a persistent fault does not become a respawn storm.
        due: dict[int, float] = {}
        while not self._stop.wait(0.1):
            with self._lock:
                for slot, p in list(self._procs.items()):
                    rc = p.proc.poll()
                    if rc is None or self._stop.is_set():
                        continue
                    now = time.time()
                    if slot not in due:
                        log.warning("worker pid %s exited with %s; replacing it", p.proc.pid, rc)
                        self._release(p, f"worker process {p.proc.pid} exited with code {rc}")
                        young = now - p.started < 5.0
                        due[slot] = now + (min(30.0, 0.5 * 2 ** min(p.restarts, 6)) if young else 0)
                    if now >= due[slot]:
                        del due[slot]
                        self._procs[slot] = self._spawn(slot, p.restarts + 1)
                        self.replaced += 1

    def _release(self, p: _Proc, reason: str) -> None:
        try:
            for t in self.store.running_trials_of(p.prefix):
                self.store.release_trial(t.id, t.worker, reason, self.settings.max_attempts)
        except Exception as e:  # the reaper will find it by its heartbeat
            log.warning("could not release trials of pid %s: %s", p.proc.pid, e)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            procs = list(self._procs.values())
        for p in procs:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)  # finish the trial in hand, then exit
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait(5)
                self._release(p, "worker killed at server shutdown")

    def describe(self) -> dict[str, Any]:
        with self._lock:
            procs = sorted(self._procs.values(), key=lambda p: p.slot)
        return {
            "kind": "local",
            "replaced": self.replaced,
            "workers": [
                {
                    "slot": p.slot,
                    "pid": p.proc.pid,
                    "id_prefix": p.prefix,
                    "alive": p.proc.poll() is None,
                    "started_at": p.started,
                    "restarts": p.restarts,
                }
                for p in procs
            ],
        }
