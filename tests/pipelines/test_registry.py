"""Resolving pipelines: the built-in table, and ``module:attribute`` without code execution."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

import pipelines
from pipelines import Pipeline, PipelineLoadError, get_pipeline, registry
from pipelines.unlearning.names import METHOD_NAMES
from tests.pipelines import resolve_target

MOD = "tests.pipelines.resolve_target"
ALLOWED = [MOD]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every call of the target module's functions, and of ``os.abort`` / ``os.getpid``
    (replaced by recorders: before the fix, naming them called them)."""
    resolve_target.CALLS.clear()
    real_getpid = os.getpid

    def fake(what: str) -> object:
        def f(*_a: object) -> int:
            caller = sys._getframe(1).f_code.co_filename
            if "logging" not in caller:  # log records ask for the pid: not a resolution
                resolve_target.CALLS.append(what)
            return real_getpid()

        return f

    monkeypatch.setattr(os, "abort", fake("os.abort"))
    monkeypatch.setattr(os, "getpid", fake("os.getpid"))
    yield resolve_target.CALLS
    resolve_target.CALLS.clear()


def test_a_pipeline_attribute_resolves(calls: list[str]) -> None:
    assert get_pipeline(f"{MOD}:pipeline", ALLOWED) is resolve_target.pipeline
    assert calls == []


def test_a_marked_factory_is_called_once_per_resolution(calls: list[str]) -> None:
    p = get_pipeline(f"{MOD}:marked", ALLOWED)
    assert isinstance(p, Pipeline) and p.name == "resolve-target-marked"
    assert calls == ["marked"]


@pytest.mark.parametrize(
    ("attr", "message"),
    [
        ("os.abort", "must look like"),
        ("os.getpid", "must look like"),
        ("namespace.record", "must look like"),
        ("namespace.pipeline", "must look like"),
        ("unmarked", "not a Pipeline or a factory marked"),
        ("record", "not a Pipeline or a factory marked"),
        ("Builder", "not a Pipeline or a factory marked"),
        ("os", "not a Pipeline or a factory marked"),
        ("getpid", "not a Pipeline or a factory marked"),
        ("not_a_pipeline", "not a Pipeline"),
        ("nothing_here", "no attribute"),
        ("__class__", "no attribute"),
    ],
)
def test_anything_else_is_refused_without_being_called(
    calls: list[str], attr: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        get_pipeline(f"{MOD}:{attr}", ALLOWED)
    assert calls == []


@pytest.mark.parametrize(
    "name",
    [
        "a" * 300 + ":x",
        "os;rm:x",
        "tests.pipelines.resolve_target:",
        ":pipeline",
        "tests..pipelines:pipeline",
        "tests/pipelines:pipeline",
        "tests.pipelines.resolve_target:pipe line",
        "tests.pipelines.resolve_target:a:b",
    ],
)
def test_malformed_names_are_refused_before_importing(name: str) -> None:
    with pytest.raises(ValueError, match=r"must look like|longer than"):
        get_pipeline(name)


def test_the_allow_list_is_checked_before_importing() -> None:
    with pytest.raises(PermissionError, match="allowed"):
        get_pipeline("tests.pipelines.never_imported_xyz:pipeline", allowed_modules=["other"])


def test_a_failing_factory_raises_a_load_error(calls: list[str]) -> None:
    with pytest.raises(PipelineLoadError, match="data missing"):
        get_pipeline(f"{MOD}:broken", ALLOWED)


def test_the_builtin_table_names_every_pipeline_once() -> None:
    assert pipelines.builtin_names() == sorted(registry.BUILTINS)
    assert set(METHOD_NAMES) <= set(registry.BUILTINS)
    assert {n for n in registry.BUILTINS if n.startswith("synthetic")} == {
        "synthetic-3stage",
        "synthetic-10stage",
        "synthetic-3stage-flat",
        "synthetic-10stage-flat",
    }


def test_the_method_names_are_defined_once() -> None:
    from pipelines import unlearning
    from pipelines.unlearning import methods
    from pipelines.unlearning import pipelines as upipes

    assert unlearning.METHOD_NAMES is METHOD_NAMES
    assert upipes.METHOD_NAMES is METHOD_NAMES
    assert set(methods.INFO_KEYS) == set(METHOD_NAMES)
    assert set(methods.METHODS) == set(METHOD_NAMES) - {"retrain"}


def test_the_unlearning_package_does_not_import_the_registry() -> None:
    """The registry imports the unlearning names; nothing there imports the registry back."""
    import ast
    from pathlib import Path

    for path in Path(pipelines.__file__).parent.joinpath("unlearning").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "pipelines.registry" not in imported, path
        assert "pipelines" not in imported, path  # the package would import the registry


def test_a_failed_builtin_load_fails_the_same_way_every_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts: list[int] = []

    def failing() -> Pipeline:
        attempts.append(1)
        raise OSError("Open-i data folder not found")

    monkeypatch.setattr(registry, "BUILTINS", {**registry.BUILTINS, "forget-mi-broken": failing})
    msgs = []
    for _ in range(3):
        with pytest.raises(PipelineLoadError) as e:
            get_pipeline("forget-mi-broken")
        msgs.append(str(e.value))
    assert len(attempts) == 3 and len(set(msgs)) == 1
    assert "forget-mi-broken" in msgs[0] and "Open-i data folder not found" in msgs[0]
    assert "forget-mi-broken" not in registry._instances
