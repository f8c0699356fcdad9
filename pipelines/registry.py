"""Finding a pipeline by built-in name or by ``package.module:attribute``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable

from pipelines.core import Pipeline

_BUILTINS: dict[str, Callable[[], Pipeline]] = {}


def register(name: str, factory: Callable[[], Pipeline]) -> None:
    """Add a built-in pipeline (factories are called lazily: real data loads on first use)."""
    _BUILTINS[name] = factory


def builtin_names() -> list[str]:
    _load_builtins()
    return sorted(_BUILTINS)


_loaded = False


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from pipelines import synthetic

    register("synthetic-3stage", lambda: synthetic.synthetic_pipeline(3))
    register("synthetic-10stage", lambda: synthetic.synthetic_pipeline(10))
    register("synthetic-3stage-flat", lambda: synthetic.synthetic_pipeline(3, costs="unit"))
    register("synthetic-10stage-flat", lambda: synthetic.synthetic_pipeline(10, costs="unit"))
    try:  # the unlearning pipelines register themselves when their module exists
        importlib.import_module("pipelines.unlearning")
    except ModuleNotFoundError as e:
        if e.name != "pipelines.unlearning":
            raise


_instances: dict[str, Pipeline] = {}


def get_pipeline(name: str, allowed_modules: Iterable[str] | None = None) -> Pipeline:
    """Resolve a pipeline.

    Args:
        name: a built-in name (see ``builtin_names()``) or ``package.module:attribute``, where
            the attribute is a ``Pipeline`` or a zero-argument callable returning one.
        allowed_modules: if given, a ``module:attribute`` name must be in this set (the
            service passes its operator's allow-list: importing a module is code execution).

    Raises:
        ValueError: with a message saying what is wrong.
    """
    _load_builtins()
    if not isinstance(name, str) or not name.strip():
        raise ValueError("pipeline name must be a non-empty string")
    if name in _BUILTINS:
        if name not in _instances:
            _instances[name] = _BUILTINS[name]()
        return _instances[name]
    if ":" not in name:
        raise ValueError(
            f"unknown pipeline {name!r}; built-ins are {builtin_names()}, "
            "or name one as package.module:attribute"
        )
    mod_name, _, attr = name.partition(":")
    if not mod_name or not attr:
        raise ValueError(f"pipeline reference {name!r} must look like package.module:attribute")
    if allowed_modules is not None and mod_name not in set(allowed_modules):
        raise PermissionError(
            f"module {mod_name!r} is not in the allowed pipeline modules "
            "(EEIPU_ALLOWED_PIPELINE_MODULES)"
        )
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"cannot import pipeline module {mod_name!r}: {e}") from None
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, Pipeline) and callable(obj):
        obj = obj()
    if not isinstance(obj, Pipeline):
        raise ValueError(f"{name!r} is not a Pipeline (got {type(obj).__name__})")
    return obj
