"""Persisting a local ``eeipu tune`` run in the trial store (a sink of ``api.tuning.tune``).

The local loop keeps running in memory without a server; with ``--db URL`` every finished
trial is also written to the store as a study of mode ``external`` (inserted with the
optimizer's state, claimed and finished by this process), so ``eeipu studies`` and the REST
API show it like any other study.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from api.store import (
    NewTrial,
    StageRun,
    StudySpec,
    StudyState,
    TrialResult,
    TrialState,
    open_store,
)


class StudyRecorder:
    """Call it with each ``api.tuning.TrialResult``; ``close()`` marks the study completed.

    Args:
        url: database URL of the store.
        pipeline_ref: the pipeline as the user named it (built-in or ``module:attribute``).
        pipeline: the resolved pipeline (for stage names and cache keys).
        optimizer: the optimizer instance (its ``state_dict()`` is saved with every trial).
        budget: cost budget in seconds; objective, direction, seed, max_trials: the run's.
    """

    def __init__(
        self,
        url: str,
        pipeline_ref: str,
        pipeline: Any,
        optimizer: Any,
        budget: float,
        objective: str | None,
        direction: str,
        seed: int,
        max_trials: int | None = None,
        run_seed: int | None = None,
    ) -> None:
        from api.worker import new_worker_id

        self.store = open_store(url, pool_size=2)
        self.url = url
        self.pipeline = pipeline
        self.optimizer = optimizer
        self.run_seed = run_seed
        self.worker = new_worker_id("tune")
        spec = StudySpec(
            pipeline=pipeline_ref,
            optimizer=getattr(optimizer, "name", "unknown"),
            budget_seconds=budget if math.isfinite(budget) else sys.float_info.max,
            objective=objective or pipeline.objective,
            direction=direction,
            max_trials=max_trials,
            seed=seed,
            parallelism=1,
            mode="external",
            name="eeipu tune",
        )
        self.study = self.store.create_study(spec, optimizer.state_dict())

    @property
    def study_id(self) -> int:
        return self.study.id

    def __call__(self, t: Any) -> None:
        st = self.store.get_study(self.study.id)
        assert st is not None
        added = self.store.add_trials(
            st.id,
            [NewTrial(t.params, int(t.planned_reuse), t.predicted_cost)],
            self.optimizer.state_dict(),
            st.ask_version,
        )
        if not added:  # pragma: no cover - nobody else writes to this study
            raise RuntimeError(f"study {st.id} changed under eeipu tune")
        claimed = self.store.claim_trial(self.worker, study_id=st.id)
        assert claimed is not None and claimed.id == added[0].id
        stages: list[StageRun] = []
        if t.stage_costs:
            try:
                keys: list[str | None] = list(self.pipeline.keys(t.params, self.run_seed))
            except Exception:
                keys = [None] * len(t.stage_costs)
            for i, (stage, cost) in enumerate(
                zip(self.pipeline.stage_names, t.stage_costs, strict=False)
            ):
                hit = i < t.reused_depth
                stages.append(
                    StageRun(
                        stage=stage,
                        position=i,
                        key=keys[i] if i < len(keys) else None,
                        hit=hit,
                        cost_seconds=0.0 if hit else float(cost),
                        original_cost_seconds=float(cost),
                    )
                )
        ok = t.value is not None and t.error is None
        self.store.finish_trial(
            claimed.id,
            self.worker,
            TrialResult(
                state=TrialState.COMPLETE if ok else TrialState.FAILED,
                metrics=dict(t.metrics),
                value=t.value if ok else None,
                cost_seconds=float(t.cost_paid),
                reused_depth=int(t.reused_depth),
                stages=stages,
                error=t.error,
            ),
        )

    def close(self, failed: str | None = None) -> None:
        state = StudyState.FAILED if failed else StudyState.COMPLETED
        self.store.set_study_state(self.study.id, state, [StudyState.RUNNING], error=failed)
        self.store.close()
