"""The tuning service's logic, independent of HTTP: studies, proposals, ask/tell, scheduling.

The optimizer is stateless apart from its random generator: for every proposal the service
rebuilds history and pending trials from the store, restores the saved ``state_dict()``, asks,
and stores the new trials together with the new state in one transaction (compare-and-set on
the study's ``ask_version``). A restarted server therefore neither repeats nor skips a
proposal, and two proposers never both succeed on the same state.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from api.config import Settings
from api.execution.runner import resolve_pipeline
from api.store import (
    FINISHED,
    NewTrial,
    StaleClaim,
    Study,
    StudySpec,
    StudyState,
    Trial,
    TrialResult,
    TrialState,
    TrialStore,
)

log = logging.getLogger("eeipu.service")

MAX_FAILED_BEFORE_GIVING_UP = 5


class ServiceError(Exception):
    """An error for the client: HTTP ``status`` and a clear ``message``."""

    def __init__(self, status: int, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def not_found(what: str) -> ServiceError:
    return ServiceError(404, f"{what} not found", "not_found")


@dataclass
class StudyRequest:
    pipeline: str
    optimizer: str
    budget_seconds: float
    max_trials: int | None = None
    objective: str | None = None
    direction: str | None = None
    seed: int = 0
    parallelism: int | None = None
    fixed_params: dict[str, dict[str, Any]] | None = None
    mode: str = "managed"
    name: str | None = None


class StudyService:
    """Studies over a ``TrialStore`` (and the cache, for prefixes the optimizer may reuse).

    Args:
        store: the trial store.
        settings: the service settings (allow-list, limits, heartbeats).
        cache: the stage cache, or None (then nothing is planned for reuse).
        default_parallelism: trials in flight per study when a study does not say.
    """

    def __init__(
        self,
        store: TrialStore,
        settings: Settings,
        cache: Any | None = None,
        default_parallelism: int = 1,
    ) -> None:
        self.store = store
        self.settings = settings
        self.cache = cache
        self.default_parallelism = max(1, default_parallelism)
        self._lock = threading.Lock()  # one proposer per process (others: compare-and-set)
        self._specs: dict[int, StudySpec] = {}
        self.tells = TellBatcher(store)

    # ---------------------------------------------------------------- pipelines
    def pipeline(self, name: str) -> Any:
        try:
            return resolve_pipeline(name, self.settings.allowed_pipeline_modules)
        except PermissionError as e:
            raise ServiceError(403, str(e), "forbidden_module") from None
        except (ValueError, TypeError) as e:
            raise ServiceError(422, str(e), "invalid_pipeline") from None

    # ---------------------------------------------------------------- studies
    def create_study(self, req: StudyRequest) -> Study:
        from eeipu import make_optimizer

        s = self.settings
        if not (isinstance(req.budget_seconds, int | float) and math.isfinite(req.budget_seconds)):
            raise ServiceError(422, "budget_seconds must be a finite number", "invalid_budget")
        if req.budget_seconds <= 0:
            raise ServiceError(422, "budget_seconds must be > 0", "invalid_budget")
        if req.budget_seconds > s.max_budget_seconds:
            raise ServiceError(
                422,
                f"budget_seconds exceeds this server's limit of {s.max_budget_seconds:g} s",
                "invalid_budget",
            )
        if req.max_trials is not None and not 1 <= req.max_trials <= s.max_trials_limit:
            raise ServiceError(
                422, f"max_trials must be between 1 and {s.max_trials_limit}", "invalid_budget"
            )
        if req.parallelism is not None and not 1 <= req.parallelism <= s.max_parallelism:
            raise ServiceError(
                422, f"parallelism must be between 1 and {s.max_parallelism}", "invalid_value"
            )
        if req.mode not in ("managed", "external"):
            raise ServiceError(422, "mode must be 'managed' or 'external'", "invalid_value")
        pipe = self.pipeline(req.pipeline)
        direction = req.direction or pipe.direction
        if direction not in ("maximize", "minimize"):
            raise ServiceError(422, "direction must be 'maximize' or 'minimize'", "invalid_value")
        fixed = self._check_fixed(pipe, req.fixed_params or {})
        try:
            opt = make_optimizer(req.optimizer, pipe.space, direction=direction, seed=req.seed)
        except ValueError as e:
            raise ServiceError(422, str(e), "invalid_optimizer") from None
        spec = StudySpec(
            pipeline=req.pipeline,
            optimizer=req.optimizer,
            budget_seconds=float(req.budget_seconds),
            objective=req.objective or pipe.objective,
            direction=direction,
            max_trials=req.max_trials,
            seed=req.seed,
            parallelism=req.parallelism or self.default_parallelism,
            fixed_params=fixed,
            mode=req.mode,
            name=req.name,
        )
        return self.store.create_study(spec, opt.state_dict())

    @staticmethod
    def _check_fixed(pipe: Any, fixed: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Validate fixed parameters against the pipeline's space (a 422 names the problem)."""
        if not isinstance(fixed, dict) or not all(isinstance(v, dict) for v in fixed.values()):
            raise ServiceError(422, "fixed_params must map stage -> {parameter: value}")
        stages = {st.name: st for st in pipe.stages}
        out: dict[str, dict[str, Any]] = {}
        for stage, params in fixed.items():
            if stage not in stages:
                raise ServiceError(
                    422, f"fixed_params: unknown stage {stage!r}; stages are {sorted(stages)}"
                )
            space = stages[stage].space
            out[stage] = {}
            for name, value in params.items():
                if name not in space:
                    raise ServiceError(
                        422, f"fixed_params: stage {stage!r} has no parameter {name!r}"
                    )
                try:
                    out[stage][name] = space[name].canonical(value)
                except (ValueError, TypeError) as e:
                    raise ServiceError(422, f"fixed_params: {stage}.{name}: {e}") from None
        return out

    def spec(self, study_id: int) -> StudySpec:
        """A study's spec (immutable, so memoised; 404 if the study does not exist)."""
        sp = self._specs.get(study_id)
        if sp is None:
            sp = self.get_study(study_id).spec
            self._specs[study_id] = sp
        return sp

    def get_study(self, study_id: int) -> Study:
        st = self.store.get_study(study_id)
        if st is None:
            raise not_found(f"study {study_id}")
        return st

    def stop_study(self, study_id: int) -> Study:
        st = self.get_study(study_id)
        if st.state == StudyState.STOPPED:
            return st
        if not self.store.set_study_state(study_id, StudyState.STOPPED, [StudyState.RUNNING]):
            raise ServiceError(
                409,
                f"study {study_id} is {st.state.value}; only a running study can be stopped",
                "conflict",
            )
        return self.get_study(study_id)

    def resume_study(self, study_id: int) -> Study:
        st = self.get_study(study_id)
        if st.state == StudyState.RUNNING:
            return st
        ok = self.store.set_study_state(
            study_id, StudyState.RUNNING, [StudyState.STOPPED, StudyState.FAILED]
        )
        if not ok:
            raise ServiceError(
                409, f"study {study_id} is {st.state.value}; it cannot be resumed", "conflict"
            )
        return self.get_study(study_id)

    def delete_study(self, study_id: int) -> None:
        self._specs.pop(study_id, None)
        if not self.store.delete_study(study_id):
            raise not_found(f"study {study_id}")

    def best(self, study_id: int) -> Trial:
        st = self.get_study(study_id)
        if st.best_trial_id is None:
            raise ServiceError(404, f"study {study_id} has no completed trial yet", "no_trials")
        t = self.store.get_trial(st.best_trial_id, with_stages=True)
        if t is None:  # pragma: no cover - deleted concurrently
            raise not_found(f"trial {st.best_trial_id}")
        return t

    # ---------------------------------------------------------------- proposals
    def _exhausted(self, st: Study) -> str | None:
        """Why the study may not propose more trials (None if it may)."""
        if st.cost_spent >= st.spec.budget_seconds:
            return "budget spent"
        if st.spec.max_trials is not None and st.n_trials >= st.spec.max_trials:
            return "max_trials reached"
        return None

    def propose(self, study_id: int, n: int) -> list[Trial]:
        """Ask the optimizer for up to ``n`` trials and store them with its new state."""
        from eeipu import BudgetState, CachedPrefix, Observation, Pending, make_optimizer

        with self._lock:
            for _ in range(10):
                st = self.get_study(study_id)
                if st.state != StudyState.RUNNING or self._exhausted(st):
                    return []
                if st.spec.max_trials is not None:
                    n = min(n, st.spec.max_trials - st.n_trials)
                if n <= 0:
                    return []
                pipe = self.pipeline(st.spec.pipeline)
                opt = make_optimizer(
                    st.spec.optimizer, pipe.space, direction=st.spec.direction, seed=st.spec.seed
                )
                if st.optimizer_state:
                    opt.load_state_dict(st.optimizer_state)
                trials = self.store.list_trials(study_id, with_stages=True)
                k = len(pipe.stages)
                history, pending = [], []
                for t in trials:
                    if t.state in (TrialState.WAITING, TrialState.RUNNING):
                        pending.append(Pending(params=t.params, reuse_depth=t.reuse_depth))
                    elif t.stages is not None and len(t.stages) == k:
                        history.append(
                            Observation(
                                params=t.params,
                                value=t.value if t.state == TrialState.COMPLETE else None,
                                stage_costs=[
                                    s.original_cost_seconds or s.cost_seconds for s in t.stages
                                ],
                                reused_depth=t.reused_depth or 0,
                                cost_paid=t.cost_seconds,
                            )
                        )
                cached = []
                if self.cache is not None:
                    try:
                        cached = [
                            CachedPrefix(p["depth"], p["params"], p["load_seconds"])
                            for p in pipe.cached_prefixes(self.cache)
                        ]
                    except Exception as e:  # an unreadable cache only loses reuse planning
                        log.warning("cache prefixes unavailable: %s", e)
                budget = BudgetState(total=st.spec.budget_seconds, spent=st.cost_spent)
                cands = opt.ask(n, history, pending, cached, budget)
                new = []
                for c in cands:
                    params = {s: dict(v) for s, v in c.params.items()}
                    for s, fixed in st.spec.fixed_params.items():
                        params.setdefault(s, {}).update(fixed)
                    params = pipe.canonical(params)
                    new.append(NewTrial(params, int(c.reuse_depth), c.predicted_cost))
                if not new:
                    return []
                added = self.store.add_trials(study_id, new, opt.state_dict(), st.ask_version)
                if added is not None:
                    return added
            raise ServiceError(409, "could not propose: the study kept changing", "conflict")

    # ---------------------------------------------------------------- ask / tell
    def ask(self, study_id: int, worker: str | None) -> Trial:
        """A trial for a client that runs its own stages: a WAITING one, else a new one."""
        worker = worker or f"client:{uuid.uuid4().hex[:12]}"
        for _ in range(10):
            st = self.get_study(study_id)
            if st.state != StudyState.RUNNING:
                raise ServiceError(409, f"study {study_id} is {st.state.value}", "not_running")
            t = self.store.claim_trial(worker, study_id=study_id)
            if t is not None:
                return t
            why = self._exhausted(st)
            if why:
                raise ServiceError(409, f"study {study_id}: {why}", "exhausted")
            if not self.propose(study_id, 1):
                raise ServiceError(
                    409, f"study {study_id}: the optimizer has no more proposals", "exhausted"
                )
        raise ServiceError(
            409, "could not claim a trial: other clients keep taking them", "conflict"
        )

    def tell(self, study_id: int, trial_id: int, worker: str | None, result: TrialResult) -> Trial:
        spec = self.spec(study_id)
        if result.value is None and result.state == TrialState.COMPLETE:
            result.value = result.metrics.get(spec.objective)
            if result.value is None:
                raise ServiceError(
                    422,
                    "a COMPLETE trial needs 'value' or the objective "
                    f"{spec.objective!r} in metrics",
                    "invalid_value",
                )
        if result.value is not None and not math.isfinite(result.value):
            raise ServiceError(422, "value must be finite", "invalid_value")
        try:
            done = self.tells.finish(trial_id, worker, result, study_id)
        except KeyError:
            raise not_found(f"trial {trial_id} of study {study_id}") from None
        except StaleClaim as e:
            raise ServiceError(409, str(e), "trial_finished") from None
        st = self.store.get_study(study_id)
        if st is not None and self._exhausted(st):
            self.settle(study_id)
        return done

    def heartbeat(self, study_id: int, trial_id: int, worker: str | None) -> None:
        t = self.store.get_trial(trial_id)
        if t is None or t.study_id != study_id:
            raise not_found(f"trial {trial_id} of study {study_id}")
        if t.state != TrialState.RUNNING or not self.store.heartbeat(
            trial_id, worker or t.worker or ""
        ):
            raise ServiceError(
                409, f"trial {trial_id} is not running for this worker", "not_running"
            )

    # ---------------------------------------------------------------- scheduling
    def settle(self, study_id: int) -> None:
        """Finish a study whose budget or trial count is used up, once nothing is running."""
        st = self.store.get_study(study_id)
        if st is None or st.state != StudyState.RUNNING:
            return
        why = self._exhausted(st)
        counts = self.store.trial_counts(study_id)
        if why == "budget spent" and counts[TrialState.WAITING]:
            self.store.cancel_waiting(study_id, f"cancelled: {why}")
            counts = self.store.trial_counts(study_id)
        in_flight = counts[TrialState.WAITING] + counts[TrialState.RUNNING]
        if why and not in_flight:
            self.store.set_study_state(study_id, StudyState.COMPLETED, [StudyState.RUNNING])
            return
        if st.n_failed >= MAX_FAILED_BEFORE_GIVING_UP and st.n_complete == 0 and not in_flight:
            last = self.store.list_trials(study_id, states=[TrialState.FAILED])
            err = next((t.error for t in reversed(last) if t.error), "every trial failed")
            self.store.set_study_state(
                study_id,
                StudyState.FAILED,
                [StudyState.RUNNING],
                error=f"{st.n_failed} trials failed; last: {err}"[:2000],
            )

    def fill(self, study_id: int) -> None:
        """Keep ``parallelism`` trials of a managed study waiting or running."""
        st = self.store.get_study(study_id)
        if st is None or st.state != StudyState.RUNNING or st.spec.mode != "managed":
            return
        if self._exhausted(st):
            return
        counts = self.store.trial_counts(study_id)
        want = st.spec.parallelism - counts[TrialState.WAITING] - counts[TrialState.RUNNING]
        if want <= 0:
            return
        if not self.propose(study_id, want) and not (
            counts[TrialState.WAITING] + counts[TrialState.RUNNING]
        ):
            # The optimizer has nothing more to propose (e.g. the remaining budget cannot pay
            # for another trial): the study is complete.
            self.store.set_study_state(study_id, StudyState.COMPLETED, [StudyState.RUNNING])

    def reap(self) -> int:
        """Give back trials whose worker stopped heartbeating (dead or unreachable)."""
        cutoff = time.time() - self.settings.heartbeat_timeout
        n = 0
        for t in self.store.stale_trials(cutoff):
            if self.store.release_trial(
                t.id,
                t.worker,
                f"no heartbeat from {t.worker} for {self.settings.heartbeat_timeout:g} s",
                self.settings.max_attempts,
            ):
                n += 1
        return n

    def tick(self) -> None:
        """One scheduling round: reap dead workers' trials, settle and refill studies."""
        self.reap()
        for st in self.store.list_studies(state=StudyState.RUNNING, limit=10_000):
            try:
                self.settle(st.id)
                self.fill(st.id)
            except ServiceError as e:
                log.warning("study %s: %s", st.id, e.message)
                if e.status in (403, 422):  # its pipeline or optimizer is gone: say so
                    self.store.set_study_state(
                        st.id, StudyState.FAILED, [StudyState.RUNNING], error=e.message
                    )
            except Exception as e:
                log.exception("study %s: scheduling failed: %s", st.id, e)


class TellBatcher:
    """Group commit for tells: concurrent tells are written by one thread, as many per
    transaction as are waiting, so one commit (one fsync) serves them all.

    Every tell of a study updates the study's row, so concurrent tells would otherwise queue
    on that row lock, one fsync each. Nothing waits on purpose: a batch is whatever arrived
    while the previous one was committing. A caller returns only after its batch committed.
    """

    def __init__(self, store: TrialStore, max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
        self._q: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches = 0
        self.items = 0

    def finish(
        self, trial_id: int, worker: str | None, result: TrialResult, study_id: int | None
    ) -> Trial:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="eeipu-tells", daemon=True
                    )
                    self._thread.start()
        fut: Future[Trial] = Future()
        self._q.put(((trial_id, worker, result, study_id), fut))
        return fut.result(timeout=120)

    def _run(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)  # stop after this batch
                    break
                batch.append(nxt)
            try:
                results = self.store.finish_trials([item for item, _ in batch])
            except Exception as e:  # the transaction failed as a whole: everyone hears it
                for _, fut in batch:
                    fut.set_exception(e)
                continue
            self.batches += 1
            self.items += len(batch)
            for (_, fut), r in zip(batch, results, strict=True):
                if isinstance(r, Exception):
                    fut.set_exception(r)
                else:
                    fut.set_result(r)

    def close(self) -> None:
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(10)


class Scheduler:
    """A thread calling ``StudyService.tick`` every ``interval`` seconds."""

    def __init__(self, service: StudyService, interval: float) -> None:
        self.service = service
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eeipu-scheduler", daemon=True)
        self.last_tick: float | None = None

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.service.tick()
                self.last_tick = time.time()
            except Exception as e:  # database briefly away: try again next round
                log.warning("scheduler: %s", e)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def finished(t: Trial) -> bool:
    return t.state in FINISHED
