"""Multimodal medical unlearning pipelines on real Open-i data (see ``pipelines.py``).

Importing this package is cheap: it registers the eight built-in pipelines (``forget-mi``,
``multidelete``, ``finetune``, ``neggrad-plus``, ``scrub``, ``cf-k``, ``eu-k``, ``retrain``)
with lazy factories; torch models are built and the data is parsed only on first use.
"""

from __future__ import annotations

from collections.abc import Callable

from pipelines.core import Pipeline
from pipelines.registry import register

METHOD_NAMES = (
    "forget-mi",
    "multidelete",
    "finetune",
    "neggrad-plus",
    "scrub",
    "cf-k",
    "eu-k",
    "retrain",
)

__all__ = ["METHOD_NAMES"]


def _factory(method: str) -> Callable[[], Pipeline]:
    def make() -> Pipeline:
        from pipelines.unlearning.pipelines import make_pipeline

        return make_pipeline(method)

    return make


for _m in METHOD_NAMES:
    register(_m, _factory(_m))
