"""Multimodal medical unlearning pipelines on real Open-i data (see ``pipelines.py``).

Importing this package is cheap: it names the eight methods (``forget-mi``, ``multidelete``,
``finetune``, ``neggrad-plus``, ``scrub``, ``cf-k``, ``eu-k``, ``retrain``); torch models are
built and the data is parsed only when ``pipelines.registry`` first builds one of them.
"""

from __future__ import annotations

from pipelines.unlearning.names import METHOD_NAMES

__all__ = ["METHOD_NAMES"]
