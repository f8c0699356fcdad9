"""Finding a pipeline by built-in name or by ``package.module:attribute``.

The built-in pipelines are one explicit table (``BUILTINS``, name -> factory). Factories are
called on first use (the unlearning pipelines parse their data lazily, but building one
imports torch); a factory that fails raises ``PipelineLoadError`` and nothing is memoised,
so every later attempt retries and fails with the same message.

A ``module:attribute`` reference is code the operator allowed (``allowed_modules``), so the
name's form is checked before anything is imported, and only a plain attribute defined in
that module is taken: a ``Pipeline`` instance, or a factory marked ``@pipeline_factory``
(called with no arguments). Nothing else is called or walked into: a name that arrives over
HTTP must not reach ``os.abort`` through a module that happens to import ``os``.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from pipelines.core import Pipeline
from pipelines.unlearning.names import METHOD_NAMES

__all__ = [
    "BUILTINS",
    "MAX_NAME_LENGTH",
    "PipelineLoadError",
    "builtin_names",
    "get_pipeline",
    "is_pipeline_factory",
    "pipeline_factory",
]

MAX_NAME_LENGTH = 200
_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_ATTR_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FACTORY_MARK = "__eeipu_pipeline_factory__"

F = TypeVar("F", bound=Callable[[], Pipeline])


class PipelineLoadError(ValueError):
    """A built-in or referenced pipeline exists but could not be built (missing data...)."""


def pipeline_factory(fn: F) -> F:
    """Mark a zero-argument function as a pipeline factory that ``module:attribute`` may call.

    Unmarked callables are never called by name: the mark is the module author's consent.
    """
    setattr(fn, _FACTORY_MARK, True)
    return fn


def is_pipeline_factory(obj: object) -> bool:
    """True for a plain function marked ``@pipeline_factory`` (read without calling anything:
    no ``__getattr__`` of an arbitrary object runs)."""
    return inspect.isfunction(obj) and obj.__dict__.get(_FACTORY_MARK) is True


def _synthetic(n_stages: int, costs: str = "declared") -> Callable[[], Pipeline]:
    def make() -> Pipeline:
        from pipelines.synthetic import synthetic_pipeline

        return synthetic_pipeline(n_stages, costs=costs)

    return make


def _unlearning(method: str) -> Callable[[], Pipeline]:
    def make() -> Pipeline:
        from pipelines.unlearning.pipelines import make_pipeline

        return make_pipeline(method)

    return make


BUILTINS: Mapping[str, Callable[[], Pipeline]] = {
    "synthetic-3stage": _synthetic(3),
    "synthetic-10stage": _synthetic(10),
    "synthetic-3stage-flat": _synthetic(3, costs="unit"),
    "synthetic-10stage-flat": _synthetic(10, costs="unit"),
    **{m: _unlearning(m) for m in METHOD_NAMES},
}

_instances: dict[str, Pipeline] = {}
_lock = threading.Lock()


def builtin_names() -> list[str]:
    return sorted(BUILTINS)


def _builtin(name: str) -> Pipeline:
    with _lock:
        if name not in _instances:
            try:
                pipe = BUILTINS[name]()
            except Exception as e:
                raise PipelineLoadError(
                    f"built-in pipeline {name!r} could not be loaded: {type(e).__name__}: {e}"
                ) from e
            if not isinstance(pipe, Pipeline):
                raise PipelineLoadError(f"built-in pipeline {name!r} did not build a Pipeline")
            _instances[name] = pipe
        return _instances[name]


def _check_form(name: str) -> tuple[str, str]:
    """``(module, attribute)`` of a well-formed reference, else ``ValueError``."""
    shown = repr(name[:80]) + ("..." if len(name) > 80 else "")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"pipeline name {shown} is longer than {MAX_NAME_LENGTH} characters")
    if ":" not in name:
        raise ValueError(
            f"unknown pipeline {shown}; built-ins are {builtin_names()}, "
            "or name one as package.module:attribute"
        )
    mod_name, _, attr = name.partition(":")
    if not _MODULE_RE.fullmatch(mod_name) or not _ATTR_RE.fullmatch(attr):
        raise ValueError(
            f"pipeline reference {shown} must look like package.module:attribute "
            "(identifier characters; the attribute is one plain name, no dots)"
        )
    return mod_name, attr


def get_pipeline(name: str, allowed_modules: Iterable[str] | None = None) -> Pipeline:
    """Resolve a pipeline.

    Args:
        name: a built-in name (see ``builtin_names()``) or ``package.module:attribute``, where
            the attribute, defined in that module, is a ``Pipeline`` or a factory marked
            ``@pipeline_factory``.
        allowed_modules: if given, a ``module:attribute`` name must be in this set (the
            service passes its operator's allow-list: importing a module is code execution).

    Raises:
        ValueError: the name is malformed, unknown, or not a pipeline (``PipelineLoadError``:
            it names one that could not be built).
        PermissionError: the module is not in ``allowed_modules``.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("pipeline name must be a non-empty string")
    if name in BUILTINS:
        return _builtin(name)
    mod_name, attr = _check_form(name)
    if allowed_modules is not None and mod_name not in set(allowed_modules):
        raise PermissionError(
            f"module {mod_name!r} is not in the allowed pipeline modules "
            "(EEIPU_ALLOWED_PIPELINE_MODULES)"
        )
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"cannot import pipeline module {mod_name!r}: {e}") from None
    obj = vars(mod).get(attr)  # the module's own namespace: no getattr hooks, no walks
    if obj is None:
        raise ValueError(f"module {mod_name!r} has no attribute {attr!r}")
    if isinstance(obj, Pipeline):
        return obj
    if not is_pipeline_factory(obj):
        raise ValueError(
            f"{name!r} is a {type(obj).__name__}, not a Pipeline or a factory marked "
            "@pipelines.pipeline_factory"
        )
    owner = getattr(obj, "__module__", None)
    if owner != mod_name and sys.modules.get(str(owner)) is not mod:
        raise ValueError(f"{name!r} is a factory imported from {owner!r}, not defined there")
    try:
        pipe = obj()
    except Exception as e:
        raise PipelineLoadError(f"pipeline factory {name!r} failed: {type(e).__name__}: {e}") from e
    if not isinstance(pipe, Pipeline):
        raise ValueError(f"factory {name!r} returned a {type(pipe).__name__}, not a Pipeline")
    return pipe
