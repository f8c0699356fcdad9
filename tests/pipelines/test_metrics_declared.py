"""Every built-in pipeline declares exactly the metrics its last stage reports (contract 4)."""

from __future__ import annotations

import tempfile
from typing import Any

import pytest

from cache import open_cache
from eeipu.space import Scalar
from pipelines import Float, Pipeline, Stage, builtin_names, get_pipeline
from pipelines.unlearning.names import METHOD_NAMES
from pipelines.unlearning.pipelines import default_params, make_pipeline

SYNTHETIC = [n for n in builtin_names() if n.startswith("synthetic")]


def _one(value: dict[str, Any], **kw: Any) -> Pipeline:
    return Pipeline("m", [Stage("a", lambda parent, x: value, {"x": Float(0, 1)})], **kw)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_pipelines_report_their_declared_metrics(name: str) -> None:
    p = get_pipeline(name)
    rec = p.run(p.space.sample(__import__("random").Random(0)))
    assert set(rec.metrics) == set(p.metrics)
    assert p.objective in p.metrics and p.describe()["metrics"] == list(p.metrics)


def test_unlearning_pipelines_report_their_declared_metrics() -> None:
    """A small configuration of each method on the fixture (featurize and train shared)."""
    cache = open_cache(tempfile.mkdtemp())
    for m in METHOD_NAMES:
        p = make_pipeline(m, 0.1, source="diabetes")
        cfg: dict[str, dict[str, Scalar]] = default_params(m)
        cfg["train"].update(epochs=5, hidden=16)
        cfg["featurize"]["text_dim"] = 8
        u = cfg["unlearn"]
        for k, small in (("steps", 5), ("epochs", 1), ("max_steps", 1)):
            if k in u:
                u[k] = small
        rec = p.run(cfg, cache=cache, seed=0)
        assert sorted(rec.metrics) == sorted(p.metrics), m
        assert p.metrics == get_pipeline(m).metrics


def test_metrics_default_to_the_objective() -> None:
    p = _one({"value": 1.0})
    assert p.metrics == ("value",)
    assert p.run({"a": {"x": 0.5}}).metrics == {"value": 1.0}


def test_an_undeclared_or_a_missing_metric_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"undeclared: \['extra'\], missing: \[\]"):
        _one({"value": 1.0, "extra": 2.0}).run({"a": {"x": 0.5}})
    p = _one({"value": 1.0}, metrics=("value", "other"))
    with pytest.raises(ValueError, match=r"undeclared: \[\], missing: \['other'\]"):
        p.run({"a": {"x": 0.5}})
    # non-numeric extras are notes, not metrics
    assert _one({"value": 1.0, "note": "x"}).run({"a": {"x": 0.5}}).metrics == {"value": 1.0}


def test_declared_metrics_are_checked_at_construction() -> None:
    with pytest.raises(ValueError, match="objective 'value' is not among the metrics"):
        _one({}, metrics=("other",))
    with pytest.raises(ValueError, match="unique"):
        _one({}, metrics=("value", "value"))
    with pytest.raises(ValueError, match="sequence of non-empty names"):
        _one({}, metrics="value")


def test_check_objective() -> None:
    p = _one({}, metrics=("value", "loss"))
    p.check_objective("loss")
    with pytest.raises(ValueError) as e:
        p.check_objective("acc")
    assert str(e.value) == "objective 'acc' is not a metric of m; its metrics are ['value', 'loss']"
