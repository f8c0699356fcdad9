"""The tuning service's logic, independent of HTTP: studies, proposals, ask/tell, scheduling.

The optimizer is stateless apart from its random generator: for every proposal the service
takes history and pending trials from the store, restores the saved ``state_dict()``, asks,
and stores the new trials together with the new state in one transaction (compare-and-set on
the study's ``ask_version``). A restarted server therefore neither repeats nor skips a
proposal, and two proposers never both succeed on the same state.

History is read incrementally (``StudyInputs``): finished trials are immutable in the store,
so a proposal reads only the trials that were pending at the last one and those added since,
and the work per proposal does not grow with the length of the study.

Proposal time is part of what a trial costs (``count_proposal_time``, on by default; off by
default for pipelines whose costs are declared, i.e. benchmarks): every trial records its
share of the seconds its proposal took, and the store adds it to the trial's cost.
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import logging
import math
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from api.config import Settings
from api.errors import Conflict, Forbidden, InvalidRequest, NotFound, ServiceError
from api.execution.runner import BOOK, book_of, resolve_pipeline
from api.store import (
    FINISHED,
    NewTrial,
    StageRun,
    StaleClaim,
    Study,
    StudySpec,
    StudyState,
    Trial,
    TrialResult,
    TrialState,
    TrialStore,
)
from cache import StageCache
from eeipu import BudgetState, CachedPrefix, Observation, Optimizer, Pending, make_optimizer
from pipelines import Pipeline

log = logging.getLogger("eeipu.service")


MAX_ASK_AHEAD = 64
MAX_CACHED_STUDIES = 32  # studies whose optimizer inputs stay in memory (least recent out)


def queue_ahead(parallelism: int) -> int:
    """Trials a managed study keeps proposed beyond ``parallelism`` (at most): a worker that
    finishes claims the next trial at once instead of waiting for the scheduler's next round
    and a proposal. The queue is refilled in one batch once it has fallen to half of this
    (``fill``), so a proposal serves ``parallelism`` trials or more and the other half covers
    the workers' demand while it runs. None for a sequential study (parallelism 1), whose
    every proposal sees every result before it."""
    return 0 if parallelism <= 1 else 2 * parallelism


def not_found(what: str) -> NotFound:
    return NotFound(f"{what} not found", "not_found")


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
    run_seed: int | None = None  # the pipeline run seed (part of every cache key)
    budget_margin: float = 0.0  # allowed overshoot in seconds
    max_consecutive_failures: int = 5  # this many failed trials in a row fail the study
    optimizer_options: dict[str, Any] | None = None  # e.g. {"n_warmup": 4}
    # whether proposal time counts toward the budget; None: yes, unless the pipeline's costs
    # are declared (``costs_declared``)
    count_proposal_time: bool | None = None


@dataclass
class OptimizerInputs:
    """A study's trials as the optimizer sees them (the one conversion every path uses)."""

    history: list[Observation]
    pending: list[Pending]
    warmup_spent: float
    max_full_cost: float | None  # the largest full-run cost seen so far (no model yet)
    committed: float  # predicted cost of the trials waiting or running


def stage_cost(s: StageRun) -> float:
    """What computing a stage costs: the compute paid on a miss, the original cost on a hit."""
    return float(s.original_cost_seconds if s.hit else s.cost_seconds)


def costs_declared(pipe: Pipeline) -> bool:
    """Whether a pipeline declares its costs instead of measuring them (benchmarks): its
    ``declared_costs`` attribute when it has one, else whether every stage declares its
    load cost (what the synthetic benchmark pipelines do, alongside their ``Cost`` results).
    Such a run repeats exactly for a seed, so its studies leave proposal time out of the
    budget by default."""
    declared = getattr(pipe, "declared_costs", None)
    if isinstance(declared, bool):
        return declared
    return all(getattr(s, "load_seconds", None) is not None for s in pipe.stages)


def observation_of(t: Trial, n_stages: int) -> Observation:
    """A finished trial as the optimizer sees it (failed ones with ``value=None``)."""
    costs = [stage_cost(s) for s in t.stages or []]
    return Observation(
        params=t.params,
        value=t.value if t.state == TrialState.COMPLETE else None,
        stage_costs=costs if len(costs) == n_stages else [],
        reused_depth=t.reused_depth or 0,
        cost_paid=float(t.cost_seconds or 0.0),
    )


def admission_cost(predicted: float | None, max_full: float | None) -> float | None:
    """The cost a trial is admitted against: the optimizer's prediction, else (no model
    yet) the largest full-run cost seen so far (None before any trial ran)."""
    if predicted is not None:
        return float(predicted)
    return max_full


def optimizer_inputs(
    trials: Sequence[Trial], n_stages: int, phases: Mapping[int, str]
) -> OptimizerInputs:
    """History (every finished trial, failed ones with ``value=None``), pending trials, the
    warm-up's spend and the cost figures of the budget rule, from a study's trials."""
    history: list[Observation] = []
    pending_trials: list[Trial] = []
    warm = 0.0
    for t in trials:
        if t.state in (TrialState.WAITING, TrialState.RUNNING):
            pending_trials.append(t)
            continue
        history.append(observation_of(t, n_stages))
        if phases.get(t.number) == "warmup":
            warm += float(t.cost_seconds or 0.0)
    full = [sum(o.stage_costs) for o in history if o.stage_costs]
    max_full = max(full) if full else None
    committed = sum(admission_cost(t.predicted_cost, max_full) or 0.0 for t in pending_trials)
    return OptimizerInputs(
        history,
        [Pending(params=t.params, reuse_depth=t.reuse_depth) for t in pending_trials],
        warm,
        max_full,
        committed,
    )


class StudyInputs:
    """A study's optimizer inputs kept between proposals, read incrementally.

    Holds every trial numbered below ``known``: the finished ones as observations (in number
    order), the others as pending trials. ``refresh`` asks the store only for the pending
    ones that finished since and for trials numbered ``known`` or above
    (``TrialStore.changed_trials``); a finished trial never changes, so the result equals
    ``optimizer_inputs`` of the whole study, whoever added or finished its trials.
    """

    def __init__(self, n_stages: int) -> None:
        self.n_stages = n_stages
        self.known = 0
        self.numbers: list[int] = []  # of the finished trials, ascending
        self.history: list[Observation] = []  # in the order of ``numbers``
        self.pending: dict[int, Trial] = {}
        self.warmup_spent = 0.0
        self.max_full: float | None = None

    def refresh(
        self, store: TrialStore, study_id: int, n_trials: int, phases: Mapping[int, str]
    ) -> None:
        """Bring the inputs to the study's first ``n_trials`` trials (those of the study row
        just read, whose ``phases`` are known; later ones wait for the next proposal)."""
        if self.known >= n_trials and not self.pending:
            return
        for t in store.changed_trials(study_id, list(self.pending), self.known):
            if t.number >= n_trials:
                continue
            self.known = max(self.known, t.number + 1)
            if t.state not in FINISHED:
                self.pending[t.number] = t
                continue
            self.pending.pop(t.number, None)
            if self.numbers and t.number <= self.numbers[-1]:
                i = bisect.bisect_left(self.numbers, t.number)
                if i < len(self.numbers) and self.numbers[i] == t.number:
                    continue  # already seen (cannot change: finished trials are immutable)
            else:
                i = len(self.numbers)
            obs = observation_of(t, self.n_stages)
            self.numbers.insert(i, t.number)
            self.history.insert(i, obs)
            if phases.get(t.number) == "warmup":
                self.warmup_spent += float(t.cost_seconds or 0.0)
            if obs.stage_costs:
                full = sum(obs.stage_costs)
                self.max_full = full if self.max_full is None else max(self.max_full, full)

    def inputs(self) -> OptimizerInputs:
        pending = [self.pending[k] for k in sorted(self.pending)]
        committed = sum(admission_cost(t.predicted_cost, self.max_full) or 0.0 for t in pending)
        return OptimizerInputs(
            list(self.history),
            [Pending(params=t.params, reuse_depth=t.reuse_depth) for t in pending],
            self.warmup_spent,
            self.max_full,
            committed,
        )


def consecutive_failures(trials: Sequence[Trial]) -> int:
    """Failed trials in a row at the end of the study (trials that never ran do not count)."""
    ran = [t for t in trials if t.state in FINISHED and t.attempts > 0]
    ran.sort(key=lambda t: (t.finished_at or 0.0, t.number))
    n = 0
    for t in reversed(ran):
        if t.state != TrialState.FAILED:
            break
        n += 1
    return n


def phases_of(book: Mapping[str, Any]) -> dict[int, str]:
    return {int(k): str(v) for k, v in (book.get("phases") or {}).items()}


class StudyService:
    """Studies over a ``TrialStore`` (and the cache, for prefixes the optimizer may reuse).

    Args:
        store: the trial store.
        settings: the service settings (allow-list, limits, heartbeats).
        cache: the stage cache, or None (then nothing is planned for reuse).
        default_parallelism: trials in flight per study when a study does not say.
        pipelines: pipelines of this process by reference, looked up before resolving a name
            (``eeipu tune`` and ``api.tuning.tune`` hand over the pipeline object they run).
    """

    def __init__(
        self,
        store: TrialStore,
        settings: Settings,
        cache: StageCache | None = None,
        default_parallelism: int = 1,
        pipelines: Mapping[str, Pipeline] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.cache = cache
        self.default_parallelism = max(1, default_parallelism)
        self._lock = threading.RLock()  # one proposer per process (others: compare-and-set)
        self._asking: dict[int, int] = {}  # asks in flight per study (sizes ask-ahead)
        self._asking_lock = threading.Lock()
        self._specs: dict[int, StudySpec] = {}
        self._pipelines: dict[str, Pipeline] = dict(pipelines or {})
        # Optimizers given as instances (``api.tuning.tune``): each proposal starts from a
        # copy of the fresh instance and the saved state, exactly like a rebuilt one.
        self._templates: dict[int, Optimizer] = {}
        # Optimizer inputs of recently proposed-for studies (bounded: least recent out).
        self._inputs: OrderedDict[int, StudyInputs] = OrderedDict()
        # Proposals made per study in this process: an ask that waited for the proposer
        # claims from a proposal made meanwhile instead of making another.
        self._proposals: dict[int, int] = {}
        # Why a study stopped proposing (the last reason seen in this process).
        self.stop_reasons: dict[int, str] = {}
        self.tells = TellBatcher(store)
        self.reads = StudyReads(store)

    # ---------------------------------------------------------------- pipelines
    def pipeline(self, name: str) -> Pipeline:
        if name in self._pipelines:
            return self._pipelines[name]
        try:
            pipe: Pipeline = resolve_pipeline(name, self.settings.allowed_pipeline_modules)
            return pipe
        except PermissionError as e:
            raise Forbidden(str(e), "forbidden_module") from None
        except (ValueError, TypeError) as e:
            raise InvalidRequest(str(e), "invalid_pipeline") from None

    # ---------------------------------------------------------------- studies
    def create_study(self, req: StudyRequest, optimizer: Optimizer | None = None) -> Study:
        """Validate and store a new study; ``optimizer``: an instance to use instead of one
        built by name (this process only; its name is the study's optimizer)."""
        margin, mcf = self._check_limits(req)
        if req.mode not in ("managed", "external"):
            raise InvalidRequest("mode must be 'managed' or 'external'", "invalid_value")
        pipe = self.pipeline(req.pipeline)
        direction = req.direction or pipe.direction
        if direction not in ("maximize", "minimize"):
            raise InvalidRequest("direction must be 'maximize' or 'minimize'", "invalid_value")
        objective = req.objective or pipe.objective
        try:
            pipe.check_objective(objective)
        except ValueError as e:
            raise InvalidRequest(str(e), "invalid_objective") from None
        fixed = self._check_fixed(pipe, req.fixed_params or {})
        count = req.count_proposal_time
        if count is None:
            count = not costs_declared(pipe)
        elif not isinstance(count, bool):
            raise InvalidRequest("count_proposal_time must be true or false", "invalid_value")
        options = dict(req.optimizer_options or {})
        if optimizer is None:
            try:
                opt = make_optimizer(
                    req.optimizer,
                    pipe.space.pinned(fixed),
                    direction=direction,
                    seed=req.seed,
                    **options,
                )
            except ValueError as e:
                raise InvalidRequest(str(e), "invalid_optimizer") from None
        else:
            opt = copy.deepcopy(optimizer)
        spec = StudySpec(
            pipeline=req.pipeline,
            optimizer=opt.name if optimizer is not None else req.optimizer,
            budget_seconds=float(req.budget_seconds),
            objective=objective,
            direction=direction,
            max_trials=req.max_trials,
            seed=req.seed,
            parallelism=req.parallelism or self.default_parallelism,
            fixed_params=fixed,
            mode=req.mode,
            name=req.name,
            run_seed=req.run_seed,
            budget_margin=float(margin),
            max_consecutive_failures=int(mcf),
            count_proposal_time=count,
        )
        state = opt.state_dict()
        state[BOOK] = {"phases": {}, "optimizer_options": options}
        st = self.store.create_study(spec, state)
        if optimizer is not None:
            self._templates[st.id] = opt
        return st

    def _check_limits(self, req: StudyRequest) -> tuple[float, int]:
        """Validate the request's budget and limits; its margin and failure limit."""
        s = self.settings
        if not (isinstance(req.budget_seconds, int | float) and math.isfinite(req.budget_seconds)):
            raise InvalidRequest("budget_seconds must be a finite number", "invalid_budget")
        if req.budget_seconds <= 0:
            raise InvalidRequest("budget_seconds must be > 0", "invalid_budget")
        if req.budget_seconds > s.max_budget_seconds:
            raise InvalidRequest(
                f"budget_seconds exceeds this server's limit of {s.max_budget_seconds:g} s",
                "invalid_budget",
            )
        if req.max_trials is not None and not 1 <= req.max_trials <= s.max_trials_limit:
            raise InvalidRequest(
                f"max_trials must be between 1 and {s.max_trials_limit}", "invalid_budget"
            )
        if req.parallelism is not None and not 1 <= req.parallelism <= s.max_parallelism:
            raise InvalidRequest(
                f"parallelism must be between 1 and {s.max_parallelism}", "invalid_value"
            )
        margin = req.budget_margin
        if not (isinstance(margin, int | float) and math.isfinite(margin) and margin >= 0):
            raise InvalidRequest("budget_margin must be a finite number >= 0", "invalid_budget")
        mcf = req.max_consecutive_failures
        if isinstance(mcf, bool) or not isinstance(mcf, int) or not 1 <= mcf <= 1000:
            raise InvalidRequest("max_consecutive_failures must be between 1 and 1000")
        return float(margin), int(mcf)

    def _optimizer(self, st: Study, pipe: Pipeline) -> Optimizer:
        template = self._templates.get(st.id)
        if template is not None:
            opt = copy.deepcopy(template)
        else:
            options = book_of(st.optimizer_state).get("optimizer_options") or {}
            try:
                opt = make_optimizer(
                    st.spec.optimizer,
                    pipe.space.pinned(st.spec.fixed_params),
                    direction=st.spec.direction,
                    seed=st.spec.seed,
                    **options,
                )
            except ValueError as e:
                raise InvalidRequest(str(e), "invalid_optimizer") from None
        if st.optimizer_state:
            opt.load_state_dict(st.optimizer_state)
        return opt

    def cached_prefixes(self, pipe: Pipeline, run_seed: int | None) -> list[CachedPrefix]:
        """What the cache holds for this pipeline and run seed, as the optimizer's data."""
        if self.cache is None:
            return []
        try:
            return [
                CachedPrefix(int(p["depth"]), p["params"], float(p["load_seconds"]))
                for p in pipe.cached_prefixes(self.cache, seed=run_seed)
            ]
        except Exception as e:  # an unreadable cache only loses reuse planning
            log.warning("cache prefixes unavailable: %s", e)
            return []

    @staticmethod
    def _check_fixed(pipe: Any, fixed: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Validate fixed parameters against the pipeline's space (a 422 names the problem)."""
        if not isinstance(fixed, dict) or not all(isinstance(v, dict) for v in fixed.values()):
            raise InvalidRequest("fixed_params must map stage -> {parameter: value}", "error")
        stages = {st.name: st for st in pipe.stages}
        out: dict[str, dict[str, Any]] = {}
        for stage, params in fixed.items():
            if stage not in stages:
                raise InvalidRequest(
                    f"fixed_params: unknown stage {stage!r}; stages are {sorted(stages)}",
                    "error",
                )
            space = stages[stage].space
            out[stage] = {}
            for name, value in params.items():
                if name not in space:
                    raise InvalidRequest(
                        f"fixed_params: stage {stage!r} has no parameter {name!r}", "error"
                    )
                try:
                    out[stage][name] = space[name].canonical(value)
                except (ValueError, TypeError) as e:
                    raise InvalidRequest(f"fixed_params: {stage}.{name}: {e}", "error") from None
        return out

    def spec(self, study_id: int) -> StudySpec:
        """A study's spec (immutable, so memoised; 404 if the study does not exist)."""
        sp = self._specs.get(study_id)
        if sp is None:
            sp = self.get_study(study_id).spec
            self._specs[study_id] = sp
        return sp

    def get_study(self, study_id: int, with_state: bool = True) -> Study:
        """The study (404 if there is none); ``with_state=False``: without the optimizer's
        saved state, for reads that only need the study's status and counters."""
        st = self.store.get_study(study_id, with_state=with_state)
        if st is None:
            raise not_found(f"study {study_id}")
        return st

    def stop_study(self, study_id: int) -> Study:
        st = self.get_study(study_id)
        if st.state == StudyState.STOPPED:
            return st
        if not self.store.set_study_state(study_id, StudyState.STOPPED, [StudyState.RUNNING]):
            raise Conflict(
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
            raise Conflict(
                f"study {study_id} is {st.state.value}; it cannot be resumed", "conflict"
            )
        return self.get_study(study_id)

    def delete_study(self, study_id: int) -> None:
        self._specs.pop(study_id, None)
        with self._lock:
            self._inputs.pop(study_id, None)
            self._proposals.pop(study_id, None)
        if not self.store.delete_study(study_id):
            raise not_found(f"study {study_id}")

    def best(self, study_id: int) -> Trial:
        st = self.get_study(study_id)
        if st.best_trial_id is None:
            raise NotFound(f"study {study_id} has no completed trial yet", "no_trials")
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
        """Ask the optimizer for up to ``n`` trials and store them with its new state.

        Budget rule: a candidate is not started when its predicted cost (the optimizer's;
        when it gives none, the largest full-run cost seen so far), on top of the predicted cost of
        the trials already waiting or running, exceeds what is left of the budget plus the
        study's margin.
        """
        with self._lock:
            for _ in range(10):
                t0 = time.perf_counter()
                st = self.get_study(study_id)
                if st.state != StudyState.RUNNING or self._exhausted(st):
                    return []
                if st.spec.max_trials is not None:
                    n = min(n, st.spec.max_trials - st.n_trials)
                if n <= 0:
                    return []
                pipe = self.pipeline(st.spec.pipeline)
                run_seed, margin = st.spec.run_seed, st.spec.budget_margin
                opt = self._optimizer(st, pipe)
                book = book_of(st.optimizer_state)
                phases = phases_of(book)
                inputs = self._study_inputs(st, len(pipe.stages), phases)
                budget = BudgetState(
                    total=st.spec.budget_seconds,
                    spent=st.cost_spent,
                    warmup_spent=inputs.warmup_spent,
                    margin=margin,
                )
                cands = opt.ask(
                    n,
                    inputs.history,
                    inputs.pending,
                    self.cached_prefixes(pipe, run_seed),
                    budget,
                )
                if not cands:
                    self.stop_reasons[study_id] = "no candidate fits the remaining budget"
                    return []
                admitted: list[tuple[Any, str]] = []
                committed = inputs.committed
                for c in cands:
                    cost = admission_cost(c.predicted_cost, inputs.max_full_cost)
                    if cost is not None and committed + cost > budget.remaining + margin:
                        self.stop_reasons[study_id] = (
                            "next trial's predicted cost exceeds the remaining budget"
                        )
                        break
                    committed += cost or 0.0
                    admitted.append((c, str(c.info.get("phase", "model"))))
                if not admitted:
                    return []
                state = opt.state_dict()
                # Every admitted trial carries an equal share of what the proposal took
                # (reading the study, the optimizer's ask, preparing the rows).
                share = (time.perf_counter() - t0) / len(admitted)
                new: list[NewTrial] = []
                for c, phase in admitted:
                    params = {s: dict(v) for s, v in c.params.items()}
                    for s, fixed in st.spec.fixed_params.items():
                        params.setdefault(s, {}).update(fixed)
                    params = pipe.canonical(params)
                    if phase != "model":
                        phases[st.n_trials + len(new)] = phase
                    new.append(NewTrial(params, int(c.reuse_depth), c.predicted_cost, share))
                book["phases"] = {str(k): v for k, v in sorted(phases.items())}
                state[BOOK] = book
                added = self.store.add_trials(study_id, new, state, st.ask_version)
                if added is not None:
                    self._proposals[study_id] = self._proposals.get(study_id, 0) + 1
                    return added
            raise Conflict("could not propose: the study kept changing", "conflict")

    def _study_inputs(self, st: Study, n_stages: int, phases: Mapping[int, str]) -> OptimizerInputs:
        """The optimizer inputs of ``st``, from what this process already read of it plus
        what changed in the store since (``StudyInputs``)."""
        cached = self._inputs.pop(st.id, None)
        if cached is None or cached.n_stages != n_stages:
            cached = StudyInputs(n_stages)
        self._inputs[st.id] = cached  # most recently used last
        while len(self._inputs) > MAX_CACHED_STUDIES:
            self._inputs.popitem(last=False)
        cached.refresh(self.store, st.id, st.n_trials, phases)
        return cached.inputs()

    # ---------------------------------------------------------------- ask / tell
    def ask(self, study_id: int, worker: str | None) -> Trial:
        """A trial for a client that runs its own stages: a WAITING one, else a new one.

        When the queue is empty, one proposal serves every client asking at that moment: the
        optimizer is asked for as many trials as there are asks of this study in flight in
        this process, so concurrent clients claim already-proposed trials instead of each
        waiting in turn for the proposer lock and a rebuild of the history. A lone client
        gets exactly one new trial per ask, as before.
        """
        worker = worker or f"client:{uuid.uuid4().hex[:12]}"
        with self._asking_lock:
            self._asking[study_id] = self._asking.get(study_id, 0) + 1
        try:
            return self._ask(study_id, worker)
        finally:
            with self._asking_lock:
                self._asking[study_id] -= 1
                if not self._asking[study_id]:
                    del self._asking[study_id]

    def _ask(self, study_id: int, worker: str) -> Trial:
        for _ in range(50):
            seen = self._proposals.get(study_id, 0)
            # A claim takes only a trial of a running study: the study is read only when
            # there was none (to say why, or to propose).
            t = self.store.claim_trial(worker, study_id=study_id)
            if t is not None:
                return t
            st = self.get_study(study_id, with_state=False)
            if st.state != StudyState.RUNNING:
                raise Conflict(f"study {study_id} is {st.state.value}", "not_running")
            why = self._exhausted(st)
            if why:
                raise Conflict(f"study {study_id}: {why}", "exhausted")
            with self._lock:  # re-entrant: ``propose`` takes it too
                if self._proposals.get(study_id, 0) != seen:
                    continue  # another ask's proposal filled the queue while this one waited
                ahead = max(1, min(self._asking.get(study_id, 1), MAX_ASK_AHEAD))
                added = self.propose(study_id, ahead)
            if not added:
                raise Conflict(
                    f"study {study_id}: the optimizer has no more proposals", "exhausted"
                )
        raise Conflict("could not claim a trial: other clients keep taking them", "conflict")

    def tell(self, study_id: int, trial_id: int, worker: str | None, result: TrialResult) -> Trial:
        spec = self.spec(study_id)
        if result.value is None and result.state == TrialState.COMPLETE:
            result.value = result.metrics.get(spec.objective)
            if result.value is None:
                raise InvalidRequest(
                    "a COMPLETE trial needs 'value' or the objective "
                    f"{spec.objective!r} in metrics",
                    "invalid_value",
                )
        if result.value is not None and not math.isfinite(result.value):
            raise InvalidRequest("value must be finite", "invalid_value")
        try:
            done, st = self.tells.finish(trial_id, worker, result, study_id)
        except KeyError:
            raise not_found(f"trial {trial_id} of study {study_id}") from None
        except StaleClaim as e:
            raise Conflict(str(e), "trial_finished") from None
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
            raise Conflict(f"trial {trial_id} is not running for this worker", "not_running")

    # ---------------------------------------------------------------- scheduling
    def settle(self, study_id: int) -> None:
        """Finish a study whose budget or trial count is used up, once nothing is running;
        fail one whose last ``max_consecutive_failures`` trials all failed."""
        st = self.store.get_study(study_id, with_state=False)
        if st is None or st.state != StudyState.RUNNING:
            return
        why = self._exhausted(st)
        counts = self.store.trial_counts(study_id)
        max_failures = st.spec.max_consecutive_failures
        if st.n_failed >= max_failures:
            # the streak is over once it reaches the limit: the last trials are enough
            trials = self.store.last_finished(study_id, max_failures)
            streak = consecutive_failures(trials)
            if streak >= max_failures:
                last = next(
                    (
                        t.error
                        for t in sorted(trials, key=lambda t: t.finished_at or 0.0)[::-1]
                        if t.state == TrialState.FAILED and t.error
                    ),
                    "no error recorded",
                )
                if counts[TrialState.WAITING]:
                    self.store.cancel_waiting(study_id, "cancelled: the study failed")
                self.store.set_study_state(
                    study_id,
                    StudyState.FAILED,
                    [StudyState.RUNNING],
                    error=(
                        f"{streak} trials failed in a row (max_consecutive_failures="
                        f"{max_failures}); last: {last}"
                    )[:2000],
                )
                self.stop_reasons[study_id] = "failed"
                return
        if why == "budget spent" and counts[TrialState.WAITING]:
            self.store.cancel_waiting(study_id, f"cancelled: {why}")
            counts = self.store.trial_counts(study_id)
        in_flight = counts[TrialState.WAITING] + counts[TrialState.RUNNING]
        if why and not in_flight:
            self.stop_reasons[study_id] = "budget" if why == "budget spent" else "max_trials"
            self.store.set_study_state(study_id, StudyState.COMPLETED, [StudyState.RUNNING])

    def fill(self, study_id: int) -> None:
        """Keep ``parallelism`` trials of a managed study running and up to ``queue_ahead``
        more waiting: when no more than half of those are left waiting (or fewer than
        ``parallelism`` run or wait), one batched proposal tops them up."""
        st = self.store.get_study(study_id, with_state=False)
        if st is None or st.state != StudyState.RUNNING or st.spec.mode != "managed":
            return
        if self._exhausted(st):
            return
        counts = self.store.trial_counts(study_id)
        par = st.spec.parallelism
        ahead = queue_ahead(par)
        waiting = counts[TrialState.WAITING]
        in_flight = waiting + counts[TrialState.RUNNING]
        if in_flight >= par and waiting > ahead // 2:
            return  # enough queued: wait to refill in one larger batch
        want = par + ahead - in_flight
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
                if isinstance(
                    e, Forbidden | InvalidRequest
                ):  # its pipeline or optimizer is gone: say so
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
    while the previous one was committing. A caller returns only after its batch committed,
    with its trial and its study as read once per batch after the commit (for the budget
    check that follows a tell).
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
    ) -> tuple[Trial, Study | None]:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="eeipu-tells", daemon=True
                    )
                    self._thread.start()
        fut: Future[tuple[Trial, Study | None]] = Future()
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
            studies: dict[int, Study | None] = {}
            for r in results:
                if not isinstance(r, Exception) and r.study_id not in studies:
                    try:
                        studies[r.study_id] = self.store.get_study(r.study_id, with_state=False)
                    except Exception:  # the tell committed: only the budget check waits
                        studies[r.study_id] = None
            for (_, fut), r in zip(batch, results, strict=True):
                if isinstance(r, Exception):
                    fut.set_exception(r)
                else:
                    fut.set_result((r, studies[r.study_id]))

    def close(self) -> None:
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(10)


class StudyRead:
    """One study as a group read found it (``study`` None: there is none), with a slot for
    its rendered answer, shared by every request that read it in the same group."""

    __slots__ = ("body", "study")

    def __init__(self, study: Study | None) -> None:
        self.study = study
        self.body: bytes | None = None


class StudyReads:
    """Group reads of studies for the event loop (``GET /v1/studies/{id}``, what polling
    clients call most).

    A read waits for the next group: whatever reads arrive while one group's query runs are
    answered together by the following query, one ``SELECT ... WHERE id IN (...)`` in a
    worker thread, so the loop keeps serving meanwhile and one round trip (and one rendered
    answer per study) serves every waiting client. A read joins only a query that starts
    after it arrived, so it sees every write that finished before it was made, as a read of
    its own would. Nothing waits on purpose: a lone read runs at once.
    """

    def __init__(self, store: TrialStore) -> None:
        self.store = store
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[int, list[asyncio.Future[StudyRead]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.groups = 0  # queries made
        self.reads = 0  # reads they answered

    async def get(self, study_id: int) -> StudyRead:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or an app served again on a new loop
            self._loop, self._waiting, self._task = loop, {}, None
        fut: asyncio.Future[StudyRead] = loop.create_future()
        self._waiting.setdefault(study_id, []).append(fut)
        if self._task is None:
            self._task = loop.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting, {}
                try:
                    found = await asyncio.to_thread(self.store.get_studies, list(group))
                except Exception as e:  # every reader of the group hears it
                    for futs in group.values():
                        for f in futs:
                            if not f.done():
                                f.set_exception(e)
                    continue
                self.groups += 1
                for sid, futs in group.items():
                    read = StudyRead(found.get(sid))
                    self.reads += len(futs)
                    for f in futs:
                        if not f.done():
                            f.set_result(read)
        finally:
            self._task = None


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
