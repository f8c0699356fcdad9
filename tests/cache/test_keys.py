"""Cache keys: exact, order-independent, injective, and only ever of the form the cache makes."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cache import InvalidKey, canonical_params, check_key, root_key, stage_key


def test_key_order_does_not_matter() -> None:
    assert canonical_params({"a": 1, "b": 2.5}) == canonical_params({"b": 2.5, "a": 1})
    assert stage_key("s", "1", {"a": 1, "b": "x"}, "p") == stage_key(
        "s", "1", {"b": "x", "a": 1}, "p"
    )


def test_floats_are_exact() -> None:
    assert stage_key("s", "1", {"a": 0.1}, "p") != stage_key("s", "1", {"a": 0.1000000001}, "p")
    assert stage_key("s", "1", {"a": 0.1}, "p") == stage_key("s", "1", {"a": 0.1}, "p")


def test_int_float_and_bool_are_distinct_types() -> None:
    # The search space canonicalises Int 1.0 -> 1 before keying; raw values keep their type.
    assert stage_key("s", "1", {"a": 1}, "p") != stage_key("s", "1", {"a": 1.0}, "p")
    assert stage_key("s", "1", {"a": True}, "p") != stage_key("s", "1", {"a": 1}, "p")


def test_every_component_changes_the_key() -> None:
    base = stage_key("s", "1", {"a": 1}, "p")
    assert stage_key("t", "1", {"a": 1}, "p") != base
    assert stage_key("s", "2", {"a": 1}, "p") != base
    assert stage_key("s", "1", {"a": 2}, "p") != base
    assert stage_key("s", "1", {"a": 1}, "q") != base
    # no ambiguity from concatenation
    assert stage_key("ab", "1", {}, "c") != stage_key("a", "b1", {}, "c")


def test_root_covers_fingerprint_and_seed() -> None:
    assert root_key("data-v1", 0) != root_key("data-v2", 0)
    assert root_key("data-v1", 0) != root_key("data-v1", 1)
    assert root_key("data-v1", None) != root_key("data-v1", 0)
    assert len(root_key("x")) == 32


# ---------------------------------------------------------------------- properties
# Parameter values as the cache may see them: scalars, and lists / string-keyed mappings of them.
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=10,
)
_params = st.dictionaries(st.text(max_size=6), _values, max_size=5)
_names = st.text(min_size=1, max_size=8)


def _typed(v: Any) -> Any:
    """Exact, type-strict identity of a value (0.0 is not -0.0, 1 is not 1.0 nor True)."""
    if isinstance(v, float):
        return ("float", struct.pack("<d", v))
    if isinstance(v, list):
        return ("list", tuple(_typed(x) for x in v))
    if isinstance(v, dict):
        return ("dict", tuple(sorted((k, _typed(x)) for k, x in v.items())))
    return (type(v).__name__, v)


def _reordered(v: Any, rnd: random.Random) -> Any:
    """The same value with every mapping's insertion order shuffled."""
    if isinstance(v, dict):
        items = list(v.items())
        rnd.shuffle(items)
        return {k: _reordered(x, rnd) for k, x in items}
    if isinstance(v, list):
        return [_reordered(x, rnd) for x in v]
    return v


@given(_names, _names, _params, st.randoms(use_true_random=False))
def test_equal_inputs_in_any_order_give_equal_keys(
    name: str, version: str, params: dict[str, Any], rnd: random.Random
) -> None:
    other = _reordered(params, rnd)
    parent = root_key("fp", 0)
    assert canonical_params(other) == canonical_params(params)
    assert stage_key(name, version, other, parent) == stage_key(name, version, params, parent)


@given(_params, _params)
def test_keys_are_equal_exactly_when_parameters_are(a: dict[str, Any], b: dict[str, Any]) -> None:
    parent = root_key("fp", 0)
    same_key = stage_key("s", "1", a, parent) == stage_key("s", "1", b, parent)
    assert same_key == (_typed(a) == _typed(b))


@given(_params, st.text(max_size=6), _values, _values)
def test_changing_one_parameter_changes_the_key(
    params: dict[str, Any], name: str, old: Any, new: Any
) -> None:
    assume(_typed(old) != _typed(new))
    parent = root_key("fp", 0)
    before = {**params, name: old}
    after = {**params, name: new}
    assert stage_key("s", "1", before, parent) != stage_key("s", "1", after, parent)


@given(_names, _names, _names, _names, _params, st.integers(0, 2**32), st.integers(0, 2**32))
def test_changing_name_version_or_parent_changes_the_key(
    name: str, name2: str, version: str, version2: str, params: dict[str, Any], s1: int, s2: int
) -> None:
    parent = root_key("fp", s1)
    base = stage_key(name, version, params, parent)
    if name2 != name:
        assert stage_key(name2, version, params, parent) != base
    if version2 != version:
        assert stage_key(name, version2, params, parent) != base
    if s2 != s1:
        assert stage_key(name, version, params, root_key("fp", s2)) != base
    assert stage_key(name, version, params, base) != base  # one stage deeper


def test_nested_mappings_never_pass_for_floats() -> None:
    # {"f": "0.1"} is how a float is written; a mapping of that shape must stay distinct.
    assert canonical_params({"a": 0.1}) != canonical_params({"a": {"f": "0.1"}})
    assert canonical_params({"a": {"m": {"f": "0.1"}}}) != canonical_params({"a": {"f": "0.1"}})
    # ...while ordinary parameters keep the canonical text they always had.
    assert canonical_params({"b": 2, "a": [0.5, "x"]}) == '{"a":[{"f":"0.5"},"x"],"b":2}'


def test_unkeyable_values_are_refused() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        canonical_params({"a": float("nan")})
    with pytest.raises(TypeError, match="names must be strings"):
        canonical_params({"a": {1: "x"}})
    with pytest.raises(TypeError, match="not keyable"):
        canonical_params({"a": object()})


# ---------------------------------------------------------------------- check_key
@given(st.text(max_size=20), _params, _names, st.one_of(st.none(), st.integers(-(2**40), 2**40)))
def test_check_key_accepts_every_key_the_cache_makes(
    fp: str, params: dict[str, Any], name: str, seed: int | None
) -> None:
    r = root_key(fp, seed)
    k = stage_key(name, "1", params, r)
    assert check_key(r) == r and check_key(k) == k


_TRAVERSAL = [
    "../victim/secret",
    "../victim/x",
    "..",
    "/etc/passwd",
    "objects/00/../../x",
    "0" * 30 + "/.",
    "..\\..\\x" + "0" * 25,
    "0" * 31 + "\x00",
    "\x00" * 32,
    "0" * 31 + "\n",
    "0" * 32 + "\n",
    "A" * 32,
    "0123456789ABCDEF0123456789abcdef",
    "0" * 31,
    "0" * 33,
    "",
    "g" * 32,
    "０" * 32,  # fullwidth digits are not hex
]


@pytest.mark.parametrize("bad", _TRAVERSAL)
def test_check_key_refuses_paths_nul_case_and_length(bad: str) -> None:
    with pytest.raises(InvalidKey):
        check_key(bad)


@given(st.text(max_size=40))
def test_check_key_accepts_only_32_lowercase_hex(s: str) -> None:
    ok = len(s) == 32 and all(c in "0123456789abcdef" for c in s)
    if ok:
        assert check_key(s) == s
    else:
        with pytest.raises(InvalidKey):
            check_key(s)


@given(st.one_of(st.none(), st.integers(), st.floats(), st.binary(), st.lists(st.text())))
def test_check_key_refuses_non_strings(value: object) -> None:
    with pytest.raises(InvalidKey):
        check_key(value)


def test_invalid_key_is_a_value_error_showing_a_truncated_repr() -> None:
    with pytest.raises(ValueError) as ei:
        check_key("../" * 200)
    msg = str(ei.value)
    assert isinstance(ei.value, InvalidKey)
    assert "'../../" in msg and "../" * 40 not in msg  # shown with repr, cut to 80 chars
    with pytest.raises(InvalidKey, match=r"\\x00"):
        check_key("ab\x00cd")
