"""The names of the unlearning methods: the one definition every other module imports."""

from __future__ import annotations

__all__ = ["METHOD_NAMES"]

METHOD_NAMES: tuple[str, ...] = (
    "forget-mi",
    "multidelete",
    "finetune",
    "neggrad-plus",
    "scrub",
    "cf-k",
    "eu-k",
    "retrain",
)
