"""Property-based checks of the search-space transforms (``eeipu.space``).

The optimizer works in the unit cube and the cache keys on canonical values, so a value that
comes out of the cube must go in and come out again as the SAME canonical value (same type,
same token), whatever the declared domain.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from eeipu.base import prefix_id
from eeipu.space import Categorical, Float, Int, Param, SearchSpace

# Derandomized: the same examples on every run, so a failure is reproducible.
examples = settings(max_examples=200, deadline=None, derandomize=True)

finite = st.floats(allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=5e-324, allow_nan=False, allow_infinity=False)


@st.composite
def floats_params(draw: st.DrawFn) -> Param:
    log = draw(st.booleans())
    a, b = draw(positive if log else finite), draw(positive if log else finite)
    assume(a != b)
    lo, hi = min(a, b), max(a, b)
    try:
        return Float(lo, hi, log=log)
    except ValueError:  # a domain the constructor refuses is not a domain
        assume(False)
        raise


@st.composite
def int_params(draw: st.DrawFn) -> Param:
    log = draw(st.booleans())
    ints = st.integers(min_value=1 if log else -(2**70), max_value=2**70)
    a, b = draw(ints), draw(ints)
    assume(a != b)
    try:
        return Int(min(a, b), max(a, b), log=log)
    except ValueError:
        assume(False)
        raise


scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False),
    st.text(max_size=5),
)


@st.composite
def categorical_params(draw: st.DrawFn) -> Param:
    choices = draw(
        st.lists(scalars, min_size=1, max_size=6, unique_by=lambda c: (type(c).__name__, c))
    )
    return Categorical(choices)


params = st.one_of(floats_params(), int_params(), categorical_params())


def _same(a: object, b: object) -> bool:
    """Equal and of the same type (1, 1.0 and True are different canonical values)."""
    return type(a) is type(b) and a == b


@examples
@given(params, st.data())
def test_a_decoded_value_survives_the_unit_cube_exactly(param: Param, data: st.DataObject) -> None:
    unit = data.draw(st.lists(st.floats(0.0, 1.0), min_size=param.dims, max_size=param.dims))
    value = param.decode(unit)
    assert _same(param.canonical(value), value)
    encoded = param.encode(value)
    assert len(encoded) == param.dims
    assert all(0.0 <= u <= 1.0 for u in encoded)
    again = param.decode(encoded)
    assert _same(again, value), (param, value, again)
    assert param.token(again) == param.token(value)


@examples
@given(int_params(), st.data())
def test_every_integer_of_the_domain_survives_the_unit_cube(
    param: Int, data: st.DataObject
) -> None:
    value = data.draw(st.integers(param.low, param.high))
    assert _same(param.decode(param.encode(value)), value)


@examples
@given(categorical_params(), st.data())
def test_every_choice_survives_the_unit_cube(param: Categorical, data: st.DataObject) -> None:
    value = data.draw(st.sampled_from(param.choices))
    assert _same(param.decode(param.encode(value)), value)


@examples
@given(st.lists(params, min_size=1, max_size=5), st.randoms(use_true_random=False), st.data())
def test_a_configuration_survives_the_unit_cube(
    plist: list[Param], rng: object, data: st.DataObject
) -> None:
    stages: list[tuple[str, dict[str, Param]]] = [
        (f"s{i}", {}) for i in range(2)
    ]  # two stages, parameters split over them
    for i, p in enumerate(plist):
        stages[i % 2][1][f"p{i}"] = p
    stages = [s for s in stages if s[1]]
    space = SearchSpace(stages)
    row = data.draw(st.lists(st.floats(0.0, 1.0), min_size=space.dims, max_size=space.dims))
    for cfg in (space.decode(row), space.sample(rng)):  # type: ignore[arg-type]
        back = space.decode(space.encode(cfg))
        assert back == cfg
        assert prefix_id(space, back, len(space.stage_names)) == prefix_id(
            space, cfg, len(space.stage_names)
        )
        assert space.canonical(cfg) == cfg


@pytest.mark.parametrize(
    ("low", "high"),
    [(-1.7e308, 1.7e308), (-1e308, 1e308)],
)
def test_a_float_domain_wider_than_a_double_is_refused(low: float, high: float) -> None:
    assert math.isinf(high - low)
    with pytest.raises(ValueError, match="span"):
        Float(low, high)
