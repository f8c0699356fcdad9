"""Optimizers by name (``eeipu``, ``ei``, ``eipu``, ``carbo``, ``random``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eeipu.base import Optimizer, RandomSearch
from eeipu.space import SearchSpace


def _lazy(cls_name: str) -> Callable[..., Optimizer]:
    """Import the GP optimizers (torch, BoTorch) only when one is built."""

    def factory(*args: Any, **kwargs: Any) -> Optimizer:
        from eeipu import bo

        cls: type[Optimizer] = getattr(bo, cls_name)
        return cls(*args, **kwargs)

    return factory


_OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {
    "random": RandomSearch,
    "ei": _lazy("EI"),
    "eipu": _lazy("EIPU"),
    "carbo": _lazy("CArBO"),
    "eeipu": _lazy("EEIPU"),
}


def register_optimizer(name: str, factory: Callable[..., Optimizer]) -> None:
    _OPTIMIZERS[name] = factory


def optimizer_names() -> list[str]:
    return sorted(_OPTIMIZERS)


def make_optimizer(
    name: str, space: SearchSpace, direction: str = "maximize", seed: int = 0, **kwargs: Any
) -> Optimizer:
    """Build an optimizer by name; ``ValueError`` for an unknown name or option."""
    if name not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {optimizer_names()}")
    try:
        return _OPTIMIZERS[name](space, direction=direction, seed=seed, **kwargs)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        bad = str(e).split("unexpected keyword argument")[-1].strip()
        raise ValueError(f"optimizer {name!r} has no option {bad}") from None
