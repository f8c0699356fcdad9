"""A pipeline whose every run is ``k`` runs of another, on ``k`` consecutive seeds.

``replicated(pipeline, k)`` judges a configuration by the mean of its metrics over ``k``
seeds (for the unlearning pipelines: ``k`` splits, each with its own patients, forget set and
retrained models). One run on seed ``s`` runs the original stages on seeds ``s .. s+k-1``:

    stage_i'(parents, **params, seed=s) = [stage_i(parents[j], **params, seed=s+j)  for j < k]
    metric' = mean_j metric(run on seed s+j)            (NaN as soon as one replicate is NaN)

Each replicated stage is one cached stage (its output is the list of the ``k`` outputs, its
version ``<version>.r<k>``), so a prefix shared by two configurations is reused for all
``k`` seeds at once, and the optimizer sees one trial whose stage costs are the sums.
Tuning on the mean over several seeds stops the optimizer from chasing what is good on one
split only, which on small data sets is most of what separates configurations.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pipelines.core import Cost, Pipeline, Stage

__all__ = ["MAX_REPLICATES", "mean_metrics", "replicated"]

MAX_REPLICATES = 64
P = TypeVar("P", bound=Pipeline)


def mean_metrics(reports: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The mean of every numeric metric over ``reports`` (keys of the first report; a key
    missing from one report, or NaN in one, gives NaN). Non-numeric extras are dropped."""
    out: dict[str, float] = {}
    for k, v0 in reports[0].items():
        if isinstance(v0, bool) or not isinstance(v0, int | float):
            continue
        vals = [r.get(k) for r in reports]
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in vals):
            out[str(k)] = math.nan
            continue
        out[str(k)] = math.fsum(float(v) for v in vals) / len(vals)  # type: ignore[arg-type]
    return out


def _replicate_stage(stage: Stage, k: int, last: bool) -> Stage:
    fn, wants_seed = stage.fn, stage.wants_seed

    def run(parent: Any, seed: int | None = None, **params: Any) -> Any:
        base = 0 if seed is None else int(seed)
        outs: list[Any] = []
        declared: list[float] = []
        for j in range(k):
            kwargs = dict(params)
            if wants_seed:
                kwargs["seed"] = base + j
            out = fn(None if parent is None else parent[j], **kwargs)
            if isinstance(out, Cost):
                declared.append(float(out.seconds))
                out = out.output
            outs.append(out)
        value: Any = mean_metrics(outs) if last else outs
        # a declared cost only when every replicate declared one (else measured wall time)
        return Cost(value, math.fsum(declared)) if len(declared) == k else value

    return Stage(
        stage.name,
        run,
        stage.space,
        version=f"{stage.version}.r{k}",
        load_seconds=None if stage.load_seconds is None else stage.load_seconds * k,
    )


def replicated(pipeline: P, k: int) -> P:
    """``pipeline`` with every run made of ``k`` runs on consecutive seeds, its metrics the
    means (see the module docstring). ``k = 1`` returns ``pipeline`` itself.

    The copy keeps the pipeline's class and attributes (name, space, objective, metrics,
    defaults), so it tunes and reports like the original.

    Raises:
        ValueError: ``k`` is not an integer in ``1 .. MAX_REPLICATES``, or a stage has a
            hyperparameter named ``seed`` (the run's seed could not reach it).
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_REPLICATES:
        raise ValueError(f"replicates must be an integer in 1..{MAX_REPLICATES}, got {k!r}")
    clash = [s.name for s in pipeline.stages if "seed" in s.space]
    if clash:
        raise ValueError(f"stages {clash} have a hyperparameter named 'seed': cannot replicate")
    if k == 1:
        return pipeline
    out = copy.copy(pipeline)
    n = len(pipeline.stages)
    out.stages = [_replicate_stage(s, k, i == n - 1) for i, s in enumerate(pipeline.stages)]
    out.description = f"{pipeline.description} (mean over {k} consecutive seeds)".strip()
    return out
