from __future__ import annotations

from cache import canonical_params, root_key, stage_key


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
