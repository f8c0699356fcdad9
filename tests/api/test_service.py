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
    assert s.state.value == "completed" and s.n_complete == 1 and s.n_failed == 2
    assert all(
        x.error == "cancelled: budget spent"
        for x in svc.store.list_trials(st.id, states=[TrialState.FAILED])
    )
