"""The trial store contract: what the service, the workers and the CLI rely on.

A ``TrialStore`` keeps studies, their trials and the stage runs of each trial. It is the single
source of truth of the service: an optimizer is rebuilt from it (history, pending trials and
the saved optimizer state), so a restarted server resumes every study where it was.

Contract (checked by ONE conformance suite, ``tests/api/store/test_conformance.py``, run
against every backend):

* Trial states move only ``WAITING -> RUNNING -> COMPLETE | FAILED``, plus ``RUNNING ->
  WAITING`` when a claim is released (the worker died) while attempts remain, and ``WAITING ->
  FAILED`` when a study cancels what it no longer needs. A finished trial (``COMPLETE`` or
  ``FAILED``) is immutable: every later write to it is refused.
* ``claim_trial`` moves exactly one ``WAITING`` trial of a running study to ``RUNNING`` for one
  worker, atomically: two concurrent claims never get the same trial (a row lock with ``SKIP
  LOCKED`` on PostgreSQL; a guarded ``UPDATE ... WHERE state = 'WAITING'`` everywhere).
* ``finish_trial`` and ``heartbeat`` are fenced by the claim: they succeed only while the trial
  is ``RUNNING`` for the same worker (and attempt), so a worker presumed dead cannot overwrite
  the result of the retry. A call that names no worker is refused (``StaleClaim``): every
  RUNNING trial is held by one.
* Numbers are checked on write (``api.store.values``): a result with a non-finite or
  out-of-range cost, value or metric, or a stage run whose key is not a cache key, raises
  ``api.errors.InvalidRequest`` before anything is written. Reads never return a non-finite
  or absurd float, whatever an older version stored: such values read as None (or 0.0 where
  the field is not optional) and are left out of sums.
* ``add_trials`` inserts proposals and saves the optimizer's state in one transaction, guarded
  by the study's ``ask_version`` (compare-and-set): proposals are never lost nor made twice.
* Study counters (complete, failed, cost spent, best) are updated in the same transaction as
  the trial that changes them, so ``get_study`` is one row read and always agrees with trials.
* A finished trial's ``cost_seconds`` is what it cost the budget: the reported cost plus,
  when the study's ``count_proposal_time`` is set, the trial's ``proposal_seconds`` (its share
  of the seconds the proposal that made it took, recorded by ``add_trials``).
"""

from __future__ import annotations

import enum
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "FINISHED",
    "NewTrial",
    "StageRun",
    "StaleClaim",
    "Study",
    "StudySpec",
    "StudyState",
    "Trial",
    "TrialResult",
    "TrialState",
    "TrialStore",
]


class TrialState(enum.StrEnum):
    WAITING = "WAITING"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"


FINISHED = (TrialState.COMPLETE, TrialState.FAILED)


class StudyState(enum.StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"


class StaleClaim(Exception):
    """The trial is not RUNNING for this worker (finished, released, reclaimed, or the call
    did not name the worker that holds it)."""


@dataclass
class StudySpec:
    """What a study is asked to do (immutable after creation)."""

    pipeline: str
    optimizer: str
    budget_seconds: float
    objective: str
    direction: str
    max_trials: int | None = None
    seed: int = 0
    parallelism: int = 1
    fixed_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    mode: str = "managed"  # "managed": the service runs trials; "external": ask/tell clients
    name: str | None = None
    run_seed: int | None = None  # the pipeline run seed, part of every cache key
    budget_margin: float = 0.0  # allowed overshoot of the budget, in seconds (>= 0)
    max_consecutive_failures: int = 5  # the study fails after this many failures in a row
    # a trial's share of its proposal's seconds is part of its cost (what the budget counts)
    count_proposal_time: bool = True


@dataclass
class Study:
    id: int
    spec: StudySpec
    state: StudyState
    created_at: float
    updated_at: float
    n_complete: int = 0
    n_failed: int = 0
    n_trials: int = 0  # every trial ever proposed (numbers are 0..n_trials-1)
    cost_spent: float = 0.0
    best_value: float | None = None
    best_trial_id: int | None = None
    optimizer_state: dict[str, Any] | None = None
    ask_version: int = 0
    error: str | None = None  # why the study stopped or failed (set with its state)

    @property
    def trials_done(self) -> int:
        return self.n_complete + self.n_failed


@dataclass
class StageRun:
    """One stage of one trial: its cache key, whether it was a hit, and what it cost."""

    stage: str
    position: int
    key: str | None = None
    hit: bool = False
    cost_seconds: float = 0.0
    load_seconds: float = 0.0
    bytes: int = 0
    original_cost_seconds: float = 0.0  # what computing it cost (also for a hit)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class NewTrial:
    """A proposal to insert (from the optimizer's ``Candidate``)."""

    params: dict[str, dict[str, Any]]
    reuse_depth: int = 0
    predicted_cost: float | None = None
    proposal_seconds: float | None = None  # its share of the seconds the proposal took


@dataclass
class TrialResult:
    """What a worker or an ask/tell client reports when a trial ends."""

    state: TrialState
    metrics: dict[str, float] = field(default_factory=dict)
    value: float | None = None
    cost_seconds: float = 0.0
    reused_depth: int = 0
    stages: list[StageRun] = field(default_factory=list)
    error: str | None = None


@dataclass
class Trial:
    id: int
    study_id: int
    number: int
    state: TrialState
    params: dict[str, dict[str, Any]]
    reuse_depth: int  # planned: leading stages the optimizer meant to take from the cache
    predicted_cost: float | None
    created_at: float
    attempts: int = 0
    worker: str | None = None
    heartbeat_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    metrics: dict[str, float] | None = None
    value: float | None = None
    cost_seconds: float | None = None
    reused_depth: int | None = None
    error: str | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)
    stages: list[StageRun] | None = None  # loaded only when asked for
    # its share of the seconds its proposal took; part of ``cost_seconds`` (once finished)
    # when the study counts proposal time
    proposal_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as the API returns it (``stages`` only when they were loaded)."""
        d: dict[str, Any] = {
            "id": self.id,
            "study_id": self.study_id,
            "number": self.number,
            "state": self.state.value,
            "params": self.params,
            "reuse_depth": self.reuse_depth,
            "predicted_cost": self.predicted_cost,
            "reused_depth": self.reused_depth,
            "metrics": self.metrics,
            "value": self.value,
            "cost_seconds": self.cost_seconds,
            "proposal_seconds": self.proposal_seconds,
            "worker": self.worker,
            "attempts": self.attempts,
            "heartbeat_at": self.heartbeat_at,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "failures": self.failures,
        }
        if self.stages is not None:
            d["stages"] = [s.to_dict() for s in self.stages]
        return d


class TrialStore(ABC):
    """Persistent studies and trials; see the module docstring for the contract."""

    # ---------------------------------------------------------------- studies
    @abstractmethod
    def create_study(self, spec: StudySpec, optimizer_state: dict[str, Any] | None) -> Study: ...

    @abstractmethod
    def get_study(self, study_id: int, with_state: bool = True) -> Study | None:
        """The study, or None; ``with_state=False`` leaves ``optimizer_state`` out (None):
        the hot reads (a study's status, an ask, a tell) do not need it."""

    def get_studies(self, study_ids: Sequence[int]) -> dict[int, Study]:
        """Several studies at once, without their optimizer state; an id with no study is
        left out. One read where the backend allows (``api.service.StudyReads``)."""
        out = {}
        for sid in study_ids:
            st = self.get_study(sid, with_state=False)
            if st is not None:
                out[sid] = st
        return out

    @abstractmethod
    def list_studies(
        self, state: StudyState | None = None, limit: int = 100, offset: int = 0
    ) -> list[Study]: ...

    @abstractmethod
    def count_studies(self, state: StudyState | None = None) -> int: ...

    @abstractmethod
    def set_study_state(
        self,
        study_id: int,
        state: StudyState,
        from_states: Sequence[StudyState] | None = None,
        error: str | None = None,
    ) -> bool:
        """Move a study to ``state`` (only from ``from_states`` if given); False if refused."""

    @abstractmethod
    def delete_study(self, study_id: int) -> bool:
        """Delete a study with its trials and stage runs; False if it did not exist."""

    # ---------------------------------------------------------------- proposals
    @abstractmethod
    def add_trials(
        self,
        study_id: int,
        trials: Sequence[NewTrial],
        optimizer_state: dict[str, Any] | None,
        expected_version: int,
    ) -> list[Trial] | None:
        """Insert WAITING trials and save the optimizer state in one transaction.

        Returns None (and changes nothing) if the study's ``ask_version`` is no longer
        ``expected_version``: someone else proposed meanwhile; re-read and try again.
        """

    # ---------------------------------------------------------------- trials
    @abstractmethod
    def get_trial(self, trial_id: int, with_stages: bool = False) -> Trial | None: ...

    @abstractmethod
    def list_trials(
        self,
        study_id: int,
        states: Sequence[TrialState] | None = None,
        limit: int | None = None,
        offset: int = 0,
        with_stages: bool = False,
        after: int | None = None,
    ) -> list[Trial]:
        """Trials of a study in ``number`` order (only ``number > after``, if given: the
        incremental fetch of a watching client)."""

    def changed_trials(self, study_id: int, pending: Sequence[int], known: int) -> list[Trial]:
        """With their stage runs, in ``number`` order: the finished trials among the numbers
        ``pending``, and every trial numbered ``known`` or above (the incremental read of a
        reader that holds trials ``0 .. known - 1``, finished ones immutable, and needs to
        know which of the others finished and what was added)."""
        want = set(pending)
        return [
            t
            for t in self.list_trials(study_id, with_stages=True)
            if t.number >= known or (t.number in want and t.state in FINISHED)
        ]

    def last_finished(self, study_id: int, n: int) -> list[Trial]:
        """The ``n`` trials of a study that ran (``attempts > 0``) and finished last, oldest
        first (ordered by ``finished_at``, then ``number``)."""
        ran = [t for t in self.list_trials(study_id, states=list(FINISHED)) if t.attempts > 0]
        ran.sort(key=lambda t: (t.finished_at or 0.0, t.number))
        return ran[-n:] if n > 0 else []

    def trials_json(
        self,
        study_id: int,
        states: Sequence[TrialState] | None = None,
        limit: int | None = None,
        offset: int = 0,
        after: int | None = None,
    ) -> list[str]:
        """``list_trials`` as JSON texts of ``Trial.to_dict()`` (a backend may skip decoding
        and re-encoding its stored JSON: this is the API's hot path for trial pages)."""
        return [
            json.dumps(t.to_dict(), separators=(",", ":"))
            for t in self.list_trials(study_id, states, limit, offset, after=after)
        ]

    def trials_page_json(
        self,
        study_id: int,
        states: Sequence[TrialState] | None = None,
        limit: int | None = None,
        offset: int = 0,
        after: int | None = None,
    ) -> tuple[int, list[str]]:
        """``(count_trials(...), trials_json(...))`` of one page, as one read where the
        backend can (the trials page of the API)."""
        return (
            self.count_trials(study_id, states, after=after),
            self.trials_json(study_id, states, limit, offset, after=after),
        )

    @abstractmethod
    def count_trials(
        self,
        study_id: int,
        states: Sequence[TrialState] | None = None,
        after: int | None = None,
    ) -> int: ...

    @abstractmethod
    def trial_counts(self, study_id: int) -> dict[TrialState, int]: ...

    @abstractmethod
    def claim_trial(
        self,
        worker: str,
        study_id: int | None = None,
        modes: Sequence[str] | None = None,
    ) -> Trial | None:
        """Atomically move the oldest WAITING trial of a running study to RUNNING for
        ``worker`` (of ``study_id`` only, if given; of studies in ``modes``, if given)."""

    @abstractmethod
    def heartbeat(self, trial_id: int, worker: str | None) -> bool:
        """Refresh the heartbeat of a trial RUNNING for ``worker``; False if not (any more).

        Raises:
            StaleClaim: ``worker`` is None or empty (a heartbeat must name its worker).
        """

    def finish_trial(
        self, trial_id: int, worker: str | None, result: TrialResult, study_id: int | None = None
    ) -> Trial:
        """Record the end of a trial RUNNING for ``worker``.

        ``study_id``, if given, must be the trial's study (else ``KeyError``).

        Raises:
            StaleClaim: the trial is not RUNNING, or not for this worker (None names none).
            KeyError: no such trial.
            api.errors.InvalidRequest: a number of ``result`` is out of range or not finite,
                or a stage run's key is not a cache key (nothing is written).
        """
        (res,) = self.finish_trials([(trial_id, worker, result, study_id)])
        if isinstance(res, Exception):
            raise res
        return res

    @abstractmethod
    def finish_trials(
        self, items: Sequence[tuple[int, str | None, TrialResult, int | None]]
    ) -> list[Trial | Exception]:
        """``finish_trial`` for many ``(trial_id, worker, result, study_id)`` in ONE
        transaction (one commit: group commit for concurrent tells). Each item gets its
        finished ``Trial``, or the ``StaleClaim``/``KeyError``/``InvalidRequest`` it would have
        raised; the others are not affected by it."""

    @abstractmethod
    def release_trial(
        self, trial_id: int, worker: str | None, reason: str, max_attempts: int
    ) -> Trial | None:
        """Give a RUNNING trial back: WAITING again if it has had fewer than ``max_attempts``
        attempts, else FAILED. Returns the trial as it now is, None if it was not RUNNING
        (for this worker)."""

    @abstractmethod
    def stale_trials(self, heartbeat_before: float) -> list[Trial]:
        """RUNNING trials whose last heartbeat is older than ``heartbeat_before``."""

    @abstractmethod
    def running_trials_of(self, worker_prefix: str) -> list[Trial]:
        """RUNNING trials whose worker id starts with ``worker_prefix``."""

    @abstractmethod
    def cancel_waiting(self, study_id: int, reason: str) -> int:
        """WAITING -> FAILED for every waiting trial of a study (it no longer needs them)."""

    @abstractmethod
    def stage_keys(self, study_id: int, computed_only: bool = True) -> list[str]:
        """Cache keys of the stage runs of a study (only those it computed, by default)."""

    # ---------------------------------------------------------------- lifecycle
    @abstractmethod
    def ping(self) -> None:
        """Raise if the database cannot be reached."""

    @abstractmethod
    def close(self) -> None: ...
