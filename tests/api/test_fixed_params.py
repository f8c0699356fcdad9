"""A study's fixed parameters are part of the optimizer's space, not patched on afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.config import Settings
from api.execution.runner import execute_trial, resolve_pipeline
from api.service import StudyRequest, StudyService
from api.store import open_store
from cache import open_cache
from eeipu.space import Categorical

FIXED = {"s1_beale": {"x0": 1.5, "x1": -0.5}}


@pytest.mark.parametrize("optimizer", ["random", "eeipu"])
def test_fixed_upstream_is_planned_for_reuse_and_priced_without_it(
    tmp_path: Path, optimizer: str
) -> None:
    cache = open_cache(str(tmp_path / "cache"))
    url = f"sqlite:///{tmp_path / 'f.db'}"
    svc = StudyService(open_store(url), Settings(db_url=url), cache=cache)
    req = StudyRequest("synthetic-3stage", optimizer, 1e5, max_trials=6, seed=2, fixed_params=FIXED)
    st = svc.create_study(req)
    opt = svc._optimizer(svc.get_study(st.id), svc.pipeline("synthetic-3stage"))
    pinned = {(sp.stage, sp.name): sp.param for sp in opt.space.specs}
    assert pinned[("s1_beale", "x0")] == Categorical([1.5])
    assert not isinstance(pinned[("s2_hartmann3", "x0")], Categorical)
    pipe = resolve_pipeline("synthetic-3stage", ())
    for _ in range(4):
        (t,) = svc.propose(st.id, 1)
        claimed = svc.store.claim_trial("w", study_id=st.id)
        assert claimed is not None and claimed.id == t.id
        svc.store.finish_trial(t.id, "w", execute_trial(pipe, t.params, cache, "value"))
    trials = svc.store.list_trials(st.id, with_stages=True)
    assert all(t.params["s1_beale"] == FIXED["s1_beale"] for t in trials)
    # After the first trial cached the fixed stage, every proposal plans to reuse it and
    # is priced by the stages after it (the fixed stage's original cost is not charged).
    full = sum(s.cost_seconds for s in trials[0].stages or [])
    first_stage = (trials[0].stages or [])[0].cost_seconds
    for t in trials[1:]:
        assert t.reuse_depth >= 1
        assert t.predicted_cost is not None and t.predicted_cost < full - 0.5 * first_stage
