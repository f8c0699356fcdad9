"""Staged pipelines: define them, run one configuration through the stage cache.

from pipelines import Pipeline, Stage, Float, Int, Categorical, Cost, pipeline_factory
"""

from __future__ import annotations

from eeipu.space import Categorical, Float, Int
from pipelines.core import COST_FLOOR, Cost, Pipeline, RunRecord, Stage, StageRecord
from pipelines.registry import (
    PipelineLoadError,
    builtin_names,
    get_pipeline,
    pipeline_factory,
)

__all__ = [
    "COST_FLOOR",
    "Categorical",
    "Cost",
    "Float",
    "Int",
    "Pipeline",
    "PipelineLoadError",
    "RunRecord",
    "Stage",
    "StageRecord",
    "builtin_names",
    "get_pipeline",
    "pipeline_factory",
]
