"""The service without HTTP: proposals survive a restart exactly; tells are group-committed."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from api.config import Settings
from api.execution.runner import execute_trial, resolve_pipeline
from api.service import StudyRequest, StudyService
from api.store import TrialResult, TrialState, open_store


def _service(url: str) -> StudyService:
    return StudyService(open_store(url), Settings(db_url=url), cache=None)


def _run_all(svc: StudyService, study_id: int) -> None:
    pipe = resolve_pipeline("synthetic-3stage", ())
    while (t := svc.store.claim_trial("w", study_id=study_id)) is not None:
        svc.store.finish_trial(t.id, "w", execute_trial(pipe, t.params, None, "value"))


@pytest.mark.parametrize("optimizer", ["random", "eeipu"])
def test_restarted_service_neither_repeats_nor_skips(tmp_path: Path, optimizer: str) -> None:
    import eeipu

    if optimizer not in eeipu.optimizer_names():
        pytest.skip(f"optimizer {optimizer} not available")
    req = StudyRequest("synthetic-3stage", optimizer, 1e5, max_trials=6, seed=5)
    # Uninterrupted: one service proposes 3 + 3.
    a = _service(f"sqlite:///{tmp_path / 'a.db'}")
    sa = a.create_study(req)
    a.propose(sa.id, 3)
    _run_all(a, sa.id)
    a.propose(sa.id, 3)
    # Interrupted: the first service dies after 3; a new one (same store) proposes the rest.
    url = f"sqlite:///{tmp_path / 'b.db'}"
    b1 = _service(url)
    sb = b1.create_study(req)
    b1.propose(sb.id, 3)
    _run_all(b1, sb.id)
    b1.store.close()
    b2 = _service(url)
    b2.propose(sb.id, 3)
    pa = [t.params for t in a.store.list_trials(sa.id)]
    pb = [t.params for t in b2.store.list_trials(sb.id)]
    assert len(pa) == 6 and pa == pb
    assert len({str(p) for p in pb}) == 6


def test_concurrent_tells_are_group_committed(tmp_path: Path) -> None:
    svc = _service(f"sqlite:///{tmp_path / 't.db'}")
    st = svc.create_study(StudyRequest("synthetic-3stage", "random", 1e5, mode="external"))
    trials = [svc.ask(st.id, "c") for _ in range(64)]
    errors: list[BaseException] = []

    def tell(tid: int, v: float) -> None:
        try:
            svc.tell(st.id, tid, "c", TrialResult(TrialState.COMPLETE, {"value": v}, None, 1.0))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=tell, args=(t.id, float(i))) for i, t in enumerate(trials)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors
    s = svc.get_study(st.id)
    assert s.n_complete == 64 and s.cost_spent == pytest.approx(64.0)
    assert s.best_value == 63.0 and s.best_trial_id == trials[63].id
    assert svc.tells.items == 64 and 1 <= svc.tells.batches <= 64
    svc.tells.close()


def test_study_whose_trials_all_fail_is_failed_with_the_reason(tmp_path: Path) -> None:
    svc = _service(f"sqlite:///{tmp_path / 'f.db'}")
    st = svc.create_study(StudyRequest("synthetic-3stage", "random", 1e5, parallelism=5))
    svc.fill(st.id)
    while (t := svc.store.claim_trial("w", study_id=st.id)) is not None:
        svc.store.finish_trial(t.id, "w", TrialResult(TrialState.FAILED, error="boom: no GPU"))
    svc.settle(st.id)
    s = svc.get_study(st.id)
    assert s.state.value == "failed" and "boom: no GPU" in (s.error or "")
    assert svc.resume_study(st.id).state.value == "running"  # after fixing the cause


def test_budget_spent_completes_the_study_and_cancels_waiting(tmp_path: Path) -> None:
    svc = _service(f"sqlite:///{tmp_path / 'b.db'}")
    st = svc.create_study(StudyRequest("synthetic-3stage", "random", 5.0, parallelism=3))
    svc.fill(st.id)
    t = svc.store.claim_trial("w", study_id=st.id)
    assert t is not None
    svc.store.finish_trial(t.id, "w", TrialResult(TrialState.COMPLETE, {}, 1.0, 6.0))
    svc.settle(st.id)
    s = svc.get_study(st.id)
    # 3 to run and queue_ahead(3) = 6 more waiting were proposed: 1 ran, 8 cancelled
    assert s.state.value == "completed" and s.n_complete == 1 and s.n_failed == 8
    assert all(
        x.error == "cancelled: budget spent"
        for x in svc.store.list_trials(st.id, states=[TrialState.FAILED])
    )


def _finish_full(svc: StudyService, study_id: int, stage_cost: float, value: float = 1.0) -> None:
    """Claim one trial and report it as a full run of three stages of ``stage_cost`` each."""
    from api.store import StageRun

    t = svc.store.claim_trial("w", study_id=study_id)
    assert t is not None
    stages = [
        StageRun(stage=s, position=i, cost_seconds=stage_cost, original_cost_seconds=stage_cost)
        for i, s in enumerate(["s1_beale", "s2_hartmann3", "s3_branin"])
    ]
    result = TrialResult(TrialState.COMPLETE, {"value": value}, value, 3 * stage_cost, 0, stages)
    svc.store.finish_trial(t.id, "w", result)


@pytest.mark.parametrize(("margin", "admitted"), [(0.0, 2), (4.0, 3)])
def test_no_trial_starts_whose_predicted_cost_exceeds_what_is_left(
    tmp_path: Path, margin: float, admitted: int
) -> None:
    """Random search predicts nothing: a trial is admitted against the largest full-run cost
    seen (6 s), counting the trials already waiting or running, plus the margin."""
    svc = _service(f"sqlite:///{tmp_path / 'o.db'}")
    req = StudyRequest("synthetic-3stage", "random", 20.0, parallelism=4, budget_margin=margin)
    st = svc.create_study(req)
    assert len(svc.propose(st.id, 1)) == 1
    _finish_full(svc, st.id, 2.0)  # 6 s spent: 14 s left
    assert len(svc.propose(st.id, 4)) == admitted  # 6 + 6 <= 14 < 6 + 6 + 6 <= 14 + 4
    assert svc.propose(st.id, 1) == []  # the waiting trials' predicted costs count
    svc.fill(st.id)
    assert svc.get_study(st.id).n_trials == 1 + admitted


def test_repeated_failures_fail_the_study_even_after_a_success(tmp_path: Path) -> None:
    svc = _service(f"sqlite:///{tmp_path / 'r.db'}")
    req = StudyRequest("synthetic-3stage", "random", 1e5, max_consecutive_failures=3)
    st = svc.create_study(req)
    svc.fill(st.id)
    _finish_full(svc, st.id, 1.0)
    for i in range(3):
        svc.settle(st.id)
        assert svc.get_study(st.id).state.value == "running"
        svc.fill(st.id)
        t = svc.store.claim_trial("w", study_id=st.id)
        assert t is not None
        svc.store.finish_trial(t.id, "w", TrialResult(TrialState.FAILED, error=f"boom {i}"))
    svc.settle(st.id)
    s = svc.get_study(st.id)
    assert s.state.value == "failed"
    assert "3 trials failed in a row" in (s.error or "") and "boom 2" in (s.error or "")


def test_an_objective_the_pipeline_never_reports_is_rejected_at_creation(tmp_path: Path) -> None:
    from api.errors import InvalidRequest

    svc = _service(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(InvalidRequest, match="'nope' is not a metric"):
        svc.create_study(StudyRequest("synthetic-3stage", "random", 100.0, objective="nope"))
    assert svc.store.count_studies() == 0


def test_stages_run_with_the_run_seed_and_the_optimizer_gets_margin_and_warmup_spend(
    tmp_path: Path,
) -> None:
    from api.worker import Worker
    from eeipu import BudgetState, RandomSearch, register_optimizer

    budgets: list[BudgetState] = []

    class Spy(RandomSearch):
        name = "spy-warmup"

        def ask(self, n, history, pending=(), cached=(), budget=None):  # type: ignore[no-untyped-def]
            assert budget is not None
            budgets.append(budget)
            out = super().ask(n, history, pending, cached, budget)
            for c in out:
                c.info["phase"] = "warmup" if len(history) < 2 else "model"
            return out

    register_optimizer("spy-warmup", Spy)
    url = f"sqlite:///{tmp_path / 's.db'}"
    svc = _service(url)
    req = StudyRequest("synthetic-3stage", "spy-warmup", 1e5, run_seed=3, budget_margin=2.5)
    st = svc.create_study(req)
    w = Worker(svc.store, str(tmp_path / "cache"), study_id=st.id)
    for _ in range(3):
        svc.fill(st.id)
        assert w.run_one()
    trials = svc.store.list_trials(st.id, with_stages=True)
    pipe = resolve_pipeline("synthetic-3stage", ())
    for t in trials:
        assert [s.key for s in t.stages or []] == pipe.keys(t.params, 3)
    assert [b.margin for b in budgets] == [2.5, 2.5, 2.5]
    warm = sum(t.cost_seconds or 0.0 for t in trials[:2])
    assert budgets[2].warmup_spent == pytest.approx(warm) and warm > 0


def test_a_trial_whose_cache_write_failed_completes_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from cache import open_cache

    cache = open_cache(str(tmp_path / "cache"))

    def full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache, "put", full)
    pipe = resolve_pipeline("synthetic-3stage", ())
    params = pipe.canonical(pipe.space.sample(__import__("random").Random(0)))
    result = execute_trial(pipe, params, cache, "value", seed=None)
    assert result.state == TrialState.COMPLETE and result.value is not None
    assert result.error is not None and "not cached" in result.error
    assert len(result.stages) == 3 and result.cost_seconds > 0


def test_concurrent_asks_share_one_proposal_and_get_distinct_trials(tmp_path: Path) -> None:
    svc = _service(f"sqlite:///{tmp_path / 'ahead.db'}")
    st = svc.create_study(StudyRequest("synthetic-3stage", "random", 1e5, mode="external"))
    calls: list[int] = []
    add = svc.store.add_trials

    def slow_add(*a: object, **k: object) -> object:
        calls.append(len(a[1]))  # type: ignore[arg-type]
        threading.Event().wait(0.3)  # hold the proposer lock while the other asks arrive
        return add(*a, **k)  # type: ignore[arg-type]

    svc.store.add_trials = slow_add  # type: ignore[method-assign]
    n = 12
    start = threading.Barrier(n)
    got: list[int] = []

    def ask(i: int) -> None:
        start.wait()
        got.append(svc.ask(st.id, f"client-{i}").id)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(got) == sorted(set(got)) and len(got) == n
    # Every proposal was stored once; a race at the edges may propose a spare trial or two.
    assert sum(calls) == svc.store.count_trials(st.id) and n <= sum(calls) < 2 * n
    assert len(calls) < n  # asks that waited for the lock were served by one proposal
    # A lone client still gets one new trial per ask.
    before = len(calls)
    svc.ask(st.id, "alone")
    assert calls[before:] == [1]


def test_incremental_inputs_equal_a_full_read_of_the_study(tmp_path: Path) -> None:
    """What ``propose`` hands the optimizer, read incrementally across proposals and across
    trials finished behind the service's back, equals the inputs of the whole study."""
    from api.execution.runner import book_of
    from api.service import StudyInputs, optimizer_inputs, phases_of

    svc = _service(f"sqlite:///{tmp_path / 'inc.db'}")
    st = svc.create_study(StudyRequest("synthetic-3stage", "eeipu", 1e5, mode="external"))
    pipe = resolve_pipeline("synthetic-3stage", ())
    kept = StudyInputs(3)
    for step in range(4):
        svc.propose(st.id, 3)
        t = svc.store.claim_trial("w", study_id=st.id)
        assert t is not None
        svc.store.finish_trial(t.id, "w", execute_trial(pipe, t.params, None, "value"))
        if step % 2:  # one fails: still history, without a value
            f = svc.store.claim_trial("w", study_id=st.id)
            assert f is not None
            svc.store.finish_trial(f.id, "w", TrialResult(TrialState.FAILED, error="x"))
        now = svc.get_study(st.id)
        phases = phases_of(book_of(now.optimizer_state))
        kept.refresh(svc.store, st.id, now.n_trials, phases)
        full = optimizer_inputs(svc.store.list_trials(st.id, with_stages=True), 3, phases)
        got = kept.inputs()
        assert got.history == full.history and got.pending == full.pending
        assert got.warmup_spent == pytest.approx(full.warmup_spent) and full.warmup_spent > 0
        assert (got.max_full_cost, got.committed) == (full.max_full_cost, full.committed)


def test_a_managed_study_keeps_proposals_ahead_of_its_workers(tmp_path: Path) -> None:
    from api.service import queue_ahead

    assert queue_ahead(1) == 0 and queue_ahead(8) == 16
    svc = _service(f"sqlite:///{tmp_path / 'q.db'}")
    st = svc.create_study(StudyRequest("synthetic-3stage", "random", 1e5, parallelism=4))
    svc.fill(st.id)
    counts = svc.store.trial_counts(st.id)
    assert counts[TrialState.WAITING] == 12  # 4 to run, 8 more waiting: one proposal
    for _ in range(7):
        t = svc.store.claim_trial("w", study_id=st.id)
        assert t is not None
        svc.store.finish_trial(t.id, "w", TrialResult(TrialState.COMPLETE, {}, 1.0, 1.0))
    svc.fill(st.id)  # 5 still waiting (more than half of 8): no proposal yet
    assert svc.store.count_trials(st.id) == 12
    assert svc.store.claim_trial("w", study_id=st.id) is not None
    svc.fill(st.id)  # 4 left waiting: refilled to 4 + 8 in flight in one batch
    assert svc.store.count_trials(st.id) == 12 + 7
    seq = svc.create_study(StudyRequest("synthetic-3stage", "random", 1e5, parallelism=1))
    svc.fill(seq.id)
    assert svc.store.count_trials(seq.id) == 1  # sequential: every proposal sees every result


def test_concurrent_study_reads_share_one_query_and_see_earlier_writes(tmp_path: Path) -> None:
    import asyncio

    svc = _service(f"sqlite:///{tmp_path / 'r.db'}")
    a = svc.create_study(StudyRequest("synthetic-3stage", "random", 1e5, seed=1))
    b = svc.create_study(StudyRequest("synthetic-3stage", "random", 1e5, seed=2))
    calls: list[list[int]] = []
    real = svc.store.get_studies

    def counted(ids: list[int]) -> dict[int, object]:
        calls.append(sorted(ids))
        return real(ids)  # type: ignore[return-value]

    svc.store.get_studies = counted  # type: ignore[method-assign]

    async def burst() -> list[object]:
        return await asyncio.gather(*(svc.reads.get(sid) for sid in [a.id, b.id, a.id, 999]))

    reads = asyncio.run(burst())
    # Reads that arrive before a query starts share it: one query, each study once.
    assert calls == [sorted([a.id, b.id, 999])]
    assert [r.study.id if r.study else None for r in reads] == [a.id, b.id, a.id, None]  # type: ignore[attr-defined]
    svc.stop_study(b.id)  # a write that finished before the next read: it sees it
    again = asyncio.run(burst())
    assert again[1].study.state.value == "stopped"  # type: ignore[attr-defined]
    assert svc.reads.reads == 8 and svc.reads.groups == len(calls) == 2
