from __future__ import annotations

import random

import pytest

from eeipu.space import Categorical, Float, Int, SearchSpace, param_from_dict


@pytest.mark.parametrize(
    "param",
    [
        Float(0.0, 1.0),
        Float(1e-4, 1e-1, log=True),
        Float(-5.0, 10.0),
        Int(1, 8),
        Int(1, 1024, log=True),
        Categorical(["x", "y", 3]),
    ],
)
def test_decode_encode_round_trip_is_exact(param: object) -> None:
    rng = random.Random(0)
    for _ in range(500):
        u = [rng.random() for _ in range(param.dims)]  # type: ignore[attr-defined]
        v = param.decode(u)  # type: ignore[attr-defined]
        assert param.decode(param.encode(v)) == v  # type: ignore[attr-defined]
        assert all(0.0 <= x <= 1.0 for x in param.encode(v))  # type: ignore[attr-defined]


def test_declared_bounds_are_reachable() -> None:
    f = Float(-5.0, 10.0)
    assert f.decode([0.0]) == -5.0 and f.decode([1.0]) == 10.0
    i = Int(1, 8)
    assert {i.decode([u / 100]) for u in range(101)} == set(range(1, 9))


def test_canonical_validation() -> None:
    assert Int(1, 8).canonical(3.0) == 3 and isinstance(Int(1, 8).canonical(3.0), int)
    with pytest.raises(ValueError):
        Int(1, 8).canonical(2.5)
    with pytest.raises(ValueError):
        Int(1, 8).canonical(True)
    with pytest.raises(ValueError):
        Float(0, 1).canonical(float("nan"))
    with pytest.raises(ValueError):
        Float(0, 1).canonical("0.5")
    assert Float(0, 1).canonical(0.1000000001) == 0.1000000001
    c = Categorical([1, "1", True])
    assert c.canonical(True) is True and c.canonical("1") == "1" and c.canonical(1) == 1
    with pytest.raises(ValueError):
        Categorical(["a", "a"])


def test_space_encode_decode_and_slices() -> None:
    s = SearchSpace(
        [("a", {"x": Float(0, 1), "k": Categorical(["p", "q"])}), ("b", {"n": Int(1, 4)})]
    )
    assert s.dims == 4
    assert s.stage_slices == {"a": slice(0, 3), "b": slice(3, 4)}
    cfg = s.sample(random.Random(3))
    assert s.decode(s.encode(cfg)) == cfg
    with pytest.raises(ValueError, match=r"a\.x"):
        s.canonical({"a": {"x": 2.0, "k": "p"}, "b": {"n": 1}})


def test_param_from_dict_round_trip() -> None:
    for p in [Float(0.0, 2.0, log=False), Int(1, 9, log=True), Categorical(["a", "b"])]:
        assert param_from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="unknown parameter type"):
        param_from_dict({"type": "complex"})


def test_around_keeps_a_window_of_the_unit_interval_and_pins_choices() -> None:
    sp = SearchSpace(
        [
            ("a", {"lr": Float(1e-5, 1e-1, log=True), "w": Float(0.0, 20.0)}),
            ("b", {"n": Int(1, 100), "k": Categorical(["x", "y"]), "free": Float(0.0, 1.0)}),
        ]
    )
    center = {"a": {"lr": 1e-3, "w": 20.0}, "b": {"n": 50, "k": "y"}}
    near = sp.around(center, 0.2)
    got = {(s.stage, s.name): s.param for s in near.specs}
    lr = got[("a", "lr")]
    assert isinstance(lr, Float) and lr.log
    assert lr.low == pytest.approx(10**-3.4) and lr.high == pytest.approx(10**-2.6)
    w = got[("a", "w")]  # at the upper bound: shifted inward, full width kept
    assert isinstance(w, Float) and (w.low, w.high) == pytest.approx((16.0, 20.0))
    n = got[("b", "n")]
    assert isinstance(n, Int) and n.low <= 50 <= n.high and 15 <= n.high - n.low <= 25
    assert got[("b", "k")] == Categorical(["y"])
    assert got[("b", "free")] == Float(0.0, 1.0)  # not in the centre: untouched
    rng = random.Random(0)
    for _ in range(200):  # every configuration near the centre is valid in the full space
        cfg = near.sample(rng)
        assert sp.canonical(cfg) == cfg
    assert sp.around(center, 1.0).specs[0].param == sp.specs[0].param
    tiny = SearchSpace([("c", {"i": Int(0, 3)})]).around({"c": {"i": 2}}, 0.01)
    assert tiny.specs[0].param == Categorical([2])  # too narrow for two integers
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="width"):
            sp.around(center, bad)
    with pytest.raises(ValueError):
        sp.around({"a": {"lr": 5.0}}, 0.2)  # the centre must be valid
