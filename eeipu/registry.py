"""Optimizers by name (``eeipu``, ``ei``, ``eipu``, ``carbo``, ``random``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eeipu.base import Optimizer, RandomSearch
from eeipu.space import SearchSpace

_OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {"random": RandomSearch}


def register_optimizer(name: str, factory: Callable[..., Optimizer]) -> None:
    _OPTIMIZERS[name] = factory


def optimizer_names() -> list[str]:
    return sorted(_OPTIMIZERS)


def make_optimizer(
    name: str, space: SearchSpace, direction: str = "maximize", seed: int = 0, **kwargs: Any
) -> Optimizer:
    """Build an optimizer by name; ``ValueError`` for an unknown name."""
    if name not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {optimizer_names()}")
    return _OPTIMIZERS[name](space, direction=direction, seed=seed, **kwargs)
