"""Response models of ``/v1/pipelines``: a pipeline's stages, spaces, defaults and metrics."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Scalar = bool | int | float | str

__all__ = ["ParamOut", "PipelineList", "PipelineListItem", "PipelineOut", "StageOut"]


class ParamOut(BaseModel):
    """One hyperparameter's range: ``low``/``high``/``log`` (numbers) or ``choices``."""

    type: Literal["float", "int", "categorical"]
    low: float | int | None = None
    high: float | int | None = None
    log: bool | None = None
    choices: list[Scalar] | None = None


class StageOut(BaseModel):
    name: str
    version: str
    space: dict[str, ParamOut]


class PipelineOut(BaseModel):
    name: str
    objective: str = Field(description="the metric optimised by default")
    direction: Literal["maximize", "minimize"]
    description: str
    metrics: list[str] = Field(description="every metric the last stage reports: the objectives")
    defaults: dict[str, dict[str, Scalar]] = Field(
        description="a recommended configuration (empty when the pipeline has none)"
    )
    stages: list[StageOut]
    space: dict[str, dict[str, ParamOut]] = Field(description="stage -> parameter -> range")

    @classmethod
    def of(cls, pipe: Any) -> PipelineOut:
        d: dict[str, Any] = dict(pipe.describe())
        d["space"] = pipe.space.to_dict()
        return cls.model_validate(d)


class PipelineListItem(BaseModel):
    """A built-in pipeline; one that cannot be loaded here has only ``name`` and ``error``."""

    name: str
    error: str | None = None
    objective: str | None = None
    direction: Literal["maximize", "minimize"] | None = None
    description: str | None = None
    metrics: list[str] | None = None
    defaults: dict[str, dict[str, Scalar]] | None = None
    stages: list[StageOut] | None = None
    space: dict[str, dict[str, ParamOut]] | None = None


class PipelineList(BaseModel):
    items: list[PipelineListItem]
    allowed_modules: list[str] = Field(
        description="modules whose pipelines may be named as module:attribute"
    )
