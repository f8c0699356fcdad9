"""A pipeline module as an operator might allow it: it imports ``os`` and defines a pipeline,
a marked factory, an unmarked function, a class and a namespace. ``CALLS`` records every call
of a function here, so a test can prove that resolving a name called nothing it should not.
"""

from __future__ import annotations

import os
import types
from typing import Any

from pipelines import Float, Pipeline, Stage, pipeline_factory

CALLS: list[str] = []


def _score(parent: Any, x: float) -> dict[str, float]:
    return {"value": -((x - 0.5) ** 2)}


def _make(name: str) -> Pipeline:
    return Pipeline(name, [Stage("s", _score, {"x": Float(0.0, 1.0)})], fingerprint=name)


pipeline = _make("resolve-target")


@pipeline_factory
def marked() -> Pipeline:
    CALLS.append("marked")
    return _make("resolve-target-marked")


def unmarked() -> Pipeline:
    CALLS.append("unmarked")
    return _make("resolve-target-unmarked")


def record() -> int:
    """Stands in for any side effect (``os.abort``, ``os.getpid``...)."""
    CALLS.append("record")
    return 0


class Builder:
    def __init__(self) -> None:
        CALLS.append("Builder")


@pipeline_factory
def broken() -> Pipeline:
    CALLS.append("broken")
    raise RuntimeError("data missing")


namespace = types.SimpleNamespace(record=record, pipeline=pipeline)
not_a_pipeline = 42
getpid = os.getpid  # a module-level alias of a builtin: not marked, never called
