"""The staged runner: prefix reuse, invalidation, costs, validation, cache queries."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cache import StageCache
from pipelines import Categorical, Cost, Float, Int, Pipeline, Stage


def make_toy(calls: Counter[str], version2: str = "1") -> Pipeline:
    def prep(parent: Any, *, a: float, n: int) -> np.ndarray:
        calls["prep"] += 1
        return np.full(n, a)

    def fit(parent: np.ndarray, *, lr: float, kind: str) -> dict[str, Any]:
        calls["fit"] += 1
        return {"w": parent * lr, "kind": kind}

    def score(parent: dict[str, Any], *, t: float) -> dict[str, float]:
        calls["score"] += 1
        return {"value": float(parent["w"].sum()) + t, "n": float(len(parent["w"]))}

    return Pipeline(
        "toy",
        [
            Stage("prep", prep, space={"a": Float(0.0, 1.0), "n": Int(1, 8)}, version="1"),
            Stage(
                "fit",
                fit,
                space={"lr": Float(1e-4, 1e-1, log=True), "kind": Categorical(["x", "y"])},
                version=version2,
            ),
            Stage("score", score, space={"t": Float(-1.0, 1.0)}),
        ],
        objective="value",
        direction="maximize",
        metrics=("value", "n"),
    )


CFG = {"prep": {"a": 0.5, "n": 3}, "fit": {"lr": 0.01, "kind": "x"}, "score": {"t": 0.0}}


def _with(**changes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {k: dict(v) for k, v in CFG.items()}
    for stage, params in changes.items():
        out[stage].update(params)
    return out


@pytest.fixture(params=["local", "fsspec"])
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> StageCache:
    root = tmp_path / "c"
    return StageCache(str(root) if request.param == "local" else f"file://{root}")


def test_shared_prefix_runs_only_the_rest(cache: StageCache) -> None:
    calls: Counter[str] = Counter()
    p = make_toy(calls)
    r1 = p.run(CFG, cache=cache)
    assert calls == Counter(prep=1, fit=1, score=1)
    assert [s.hit for s in r1.stages] == [False, False, False]
    assert r1.reused_depth == 0

    r2 = p.run(_with(score={"t": 0.5}), cache=cache)  # shares 2 stages
    assert calls == Counter(prep=1, fit=1, score=2)
    assert r2.reused_depth == 2
    assert [s.hit for s in r2.stages] == [True, True, False]
    assert r2.stages[1].load_seconds > 0 and r2.stages[0].skipped
    assert r2.metrics["value"] == pytest.approx(r1.metrics["value"] + 0.5)

    p.run(_with(fit={"kind": "y"}), cache=cache)  # shares 1 stage
    assert calls == Counter(prep=1, fit=2, score=3)

    r4 = p.run(CFG, cache=cache)  # fully cached
    assert calls == Counter(prep=1, fit=2, score=3)
    assert r4.reused_depth == 3 and r4.metrics == r1.metrics
    assert r4.total_cost_seconds == pytest.approx(sum(s.load_seconds for s in r4.stages))


def test_version_change_invalidates_exactly_that_stage_and_descendants(
    cache: StageCache,
) -> None:
    calls: Counter[str] = Counter()
    make_toy(calls).run(CFG, cache=cache)
    calls.clear()
    r = make_toy(calls, version2="2").run(CFG, cache=cache)
    assert calls == Counter(fit=1, score=1)
    assert [s.hit for s in r.stages] == [True, False, False]


def test_param_change_invalidates_descendants_only(cache: StageCache) -> None:
    calls: Counter[str] = Counter()
    p = make_toy(calls)
    p.run(CFG, cache=cache)
    calls.clear()
    p.run(_with(prep={"a": 0.25}), cache=cache)
    assert calls == Counter(prep=1, fit=1, score=1)


def test_canonical_params_share_keys() -> None:
    p = make_toy(Counter())
    k1 = p.keys(p.canonical(_with(prep={"n": 3})))
    k2 = p.keys(p.canonical(_with(prep={"n": 3.0})))
    assert k1 == k2  # Int 3 and 3.0 are the same parameter value
    k3 = p.keys(p.canonical(_with(prep={"a": 0.5000000001})))
    assert k3[0] != k1[0] and k3[2] != k1[2]
    reordered = {"score": {"t": 0.0}, "fit": {"kind": "x", "lr": 0.01}, "prep": {"n": 3, "a": 0.5}}
    assert p.keys(p.canonical(reordered)) == k1


def test_seed_and_fingerprint_change_the_root() -> None:
    p = make_toy(Counter())
    c = p.canonical(CFG)
    assert p.keys(c, seed=1)[0] != p.keys(c, seed=2)[0]
    q = Pipeline("toy", p.stages, fingerprint="other-data")
    assert q.keys(c)[0] != p.keys(c)[0]


def test_declared_cost_and_measured_cost(cache: StageCache) -> None:
    def s1(parent: Any, *, x: float) -> Cost:
        return Cost({"x": x}, seconds=3.25)

    def s2(parent: Any, *, y: float) -> dict[str, float]:
        return {"value": parent["x"] + y}

    p = Pipeline("c", [Stage("a", s1, {"x": Float(0, 1)}), Stage("b", s2, {"y": Float(0, 1)})])
    r = p.run({"a": {"x": 0.5}, "b": {"y": 0.25}}, cache=cache)
    assert r.stages[0].cost_seconds == 3.25
    assert 0 < r.stages[1].cost_seconds < 1.0
    assert r.metrics == {"value": 0.75}
    info = cache.info(r.stages[0].key)
    assert info is not None and info.compute_cost == 3.25 and info.params == {"x": 0.5}


def test_seeded_stage_gets_the_run_seed(cache: StageCache) -> None:
    seen: list[Any] = []

    def s1(parent: Any, *, x: float, seed: int | None) -> float:
        seen.append(seed)
        return x

    def s2(parent: float) -> dict[str, float]:
        return {"value": parent}

    p = Pipeline("s", [Stage("a", s1, {"x": Float(0, 1)}), Stage("b", s2)])
    p.run({"a": {"x": 0.5}, "b": {}}, cache=cache, seed=7)
    p.run({"a": {"x": 0.5}, "b": {}}, cache=cache, seed=8)
    p.run({"a": {"x": 0.5}, "b": {}}, cache=cache, seed=7)
    assert seen == [7, 8]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (_with(prep={"a": 2.0}), "prep.a"),
        (_with(prep={"n": 2.5}), "prep.n"),
        (_with(fit={"kind": "z"}), "fit.kind"),
        ({"prep": {"a": 0.5}, "fit": CFG["fit"], "score": CFG["score"]}, "prep.n"),
        ({**CFG, "nope": {}}, "unknown stage"),
        (_with(score={"t": 0.0, "extra": 1}), "extra"),
    ],
)
def test_bad_params_are_rejected_with_a_clear_message(
    bad: dict[str, Any], message: str, cache: StageCache
) -> None:
    p = make_toy(Counter())
    with pytest.raises(ValueError, match=message):
        p.run(bad, cache=cache)
    assert cache.keys() == []  # nothing stored for a rejected config


def test_corrupt_cached_prefix_is_recomputed(cache: StageCache) -> None:
    calls: Counter[str] = Counter()
    p = make_toy(calls)
    r1 = p.run(CFG, cache=cache)
    root = Path(str(cache.backend.url).removeprefix("file://"))
    path = root / cache._obj(r1.stages[1].key)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    calls.clear()
    r2 = p.run(_with(score={"t": 0.25}), cache=cache)
    assert calls == Counter(fit=1, score=1)  # fell back to the stage-1 prefix
    assert r2.reused_depth == 1
    assert any("corrupt" in e for e in r2.events)


def test_cached_prefixes_query(cache: StageCache) -> None:
    p = make_toy(Counter())
    p.run(CFG, cache=cache)
    p.run(_with(fit={"kind": "y"}), cache=cache)
    pref = p.cached_prefixes(cache)
    depths = sorted(x["depth"] for x in pref)
    assert depths == [1, 2, 2]  # the final stage is not a proper prefix
    for x in pref:
        assert x["load_seconds"] > 0 and x["compute_seconds"] > 0
        assert p.keys_prefix(x["params"], x["depth"]) == x["key"]
    kinds = {x["params"]["fit"]["kind"] for x in pref if x["depth"] == 2}
    assert kinds == {"x", "y"}
    # Another seed's prefixes are not this seed's.
    assert p.cached_prefixes(cache, seed=3) == []


def test_no_cache_runs_everything() -> None:
    calls: Counter[str] = Counter()
    p = make_toy(calls)
    p.run(CFG)
    p.run(CFG)
    assert calls == Counter(prep=2, fit=2, score=2)


def test_pipeline_definition_errors() -> None:
    with pytest.raises(ValueError, match="unique"):
        Pipeline("x", [Stage("a", lambda p: p), Stage("a", lambda p: p)])
    with pytest.raises(ValueError, match="direction"):
        Pipeline("x", [Stage("a", lambda p: p)], direction="up")
    with pytest.raises(ValueError):
        Float(1.0, 0.0)
    with pytest.raises(ValueError):
        Float(0.0, 1.0, log=True)


def test_objective_missing_from_metrics(cache: StageCache) -> None:
    p = Pipeline("m", [Stage("a", lambda parent: {"other": 1.0})], objective="value")
    with pytest.raises(KeyError, match="objective"):
        p.run({"a": {}}, cache=cache)


def test_prefix_status_of_one_configuration(cache: StageCache) -> None:
    p = make_toy(Counter())
    p.run(CFG, cache=cache)
    st = p.prefix_status(_with(score={"t": 0.5}), cache)
    assert [x["cached"] for x in st] == [True, True, False]
    assert st[1]["load_seconds"] > 0 and st[2]["load_seconds"] is None
    st = p.prefix_status(_with(fit={"lr": 0.02}), cache)
    assert [x["cached"] for x in st] == [True, False, False]


def test_declared_load_cost_is_charged_and_offered(cache: StageCache) -> None:
    def s1(parent: Any, *, x: float) -> Cost:
        return Cost({"x": x}, seconds=3.0)

    def s2(parent: Any, *, y: float) -> Cost:
        return Cost({"value": parent["x"] + y}, seconds=1.0)

    space1, space2 = {"x": Float(0, 1)}, {"y": Float(0, 1)}
    p = Pipeline("d", [Stage("a", s1, space1, load_seconds=0.25), Stage("b", s2, space2)])
    p.run({"a": {"x": 0.5}, "b": {"y": 0.25}}, cache=cache)
    r = p.run({"a": {"x": 0.5}, "b": {"y": 0.75}}, cache=cache)
    assert r.reused_depth == 1 and r.stages[0].load_seconds == 0.25
    assert r.total_cost_seconds == 1.25
    [pref] = p.cached_prefixes(cache)
    assert pref["load_seconds"] == 0.25
    assert p.prefix_status({"a": {"x": 0.5}, "b": {"y": 0.1}}, cache)[0]["load_seconds"] == 0.25
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="load_seconds"):
            Stage("a", s1, space1, load_seconds=bad)
