"""Keys and paths never leave the cache root, whatever reaches the cache or a backend."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache import FsspecBackend, InvalidKey, LocalBackend, StageCache, stage_key
from cache.backends.base import check_relpath

HOSTILE_KEYS: list[Any] = [
    "../victim/secret",
    "../victim/x",
    "../../victim/x",
    "/tmp/victim/x",
    "00/../../../victim/x",
    "ab\x00cd" * 6 + "ab",
    "A" * 32,
    "0" * 31,
    "",
    None,
    123,
    b"0" * 32,
]


@pytest.fixture(params=["local", "fsspec"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[StageCache, Path]:
    """A cache at tmp/cache next to a victim folder tmp/victim holding files that must survive."""
    root = tmp_path / "cache"
    victim = tmp_path / "victim"
    victim.mkdir()
    for name in ("secret.entry", "x.entry", "secret.json", "x.json", "x.lock"):
        (victim / name).write_text("keep me")
    loc = str(root) if request.param == "local" else f"file://{root}"
    return StageCache(loc), victim


def _intact(victim: Path) -> bool:
    names = ("secret.entry", "x.entry", "secret.json", "x.json", "x.lock")
    return all((victim / n).read_text() == "keep me" for n in names)


@pytest.mark.parametrize("bad", HOSTILE_KEYS)
def test_every_cache_operation_refuses_a_hostile_key(
    setup: tuple[StageCache, Path], bad: Any
) -> None:
    c, victim = setup
    ops = [
        lambda: c.delete(bad),
        lambda: c.get(bad),
        lambda: c.info(bad),
        lambda: c.contains(bad),
        lambda: c.put(bad, 1),
        lambda: c.try_put(bad, 1),
    ]
    for op in ops:
        with pytest.raises(InvalidKey):
            op()
    with pytest.raises(InvalidKey), c.compute_lock(bad):
        pass
    with pytest.raises(InvalidKey), c.pin([stage_key("s", "1", {}, "p"), bad]):
        pass
    assert _intact(victim)
    assert not list(victim.parent.glob("**/leases/*/*"))  # a refused pin writes no lease


@pytest.mark.parametrize(
    "rel",
    [
        "../victim/x.entry",
        "objects/../../victim/x.entry",
        "/etc/passwd",
        "objects//x",
        "objects/./x",
        "objects/x\x00",
        "objects\\..\\..\\victim",
        "",
        ".secret",
    ],
)
def test_every_backend_refuses_paths_outside_plain_names(
    setup: tuple[StageCache, Path], rel: str
) -> None:
    c, victim = setup
    b = c.backend
    with pytest.raises(InvalidKey):
        b.delete(rel)
    with pytest.raises(InvalidKey):
        b.write_atomic(rel, [b"owned"])
    with pytest.raises(InvalidKey):
        b.open_read(rel)
    with pytest.raises(InvalidKey):
        b.exists(rel)
    with pytest.raises(InvalidKey):
        b.list(rel)
    with pytest.raises(InvalidKey):
        b.prune_dirs(rel)
    assert _intact(victim)


def test_lock_names_are_keys_or_internal(setup: tuple[StageCache, Path]) -> None:
    c, victim = setup
    for bad in ("../victim/x", "x", "../../victim/secret"):
        with pytest.raises(InvalidKey), c.backend.lock(bad):
            pass
    with c.backend.lock("__evict__"), c.backend.lock(stage_key("s", "1", {}, "p")):
        pass
    assert _intact(victim)


def test_path_building_refuses_escapes_even_behind_the_checks(
    setup: tuple[StageCache, Path],
) -> None:
    """Defence in depth: the function that builds real paths checks containment itself,
    so a subclass or caller that skips the public entrances still cannot leave the root."""
    c, victim = setup
    b = c.backend
    assert isinstance(b, LocalBackend | FsspecBackend)
    for rel in ("../victim/x.entry", "objects/../../victim/x.entry", "a/\x00"):
        with pytest.raises(InvalidKey):
            b._p(rel)
        with pytest.raises(InvalidKey):
            b._delete(rel)
        with pytest.raises(InvalidKey):
            b._write_atomic(rel, [b"owned"], False)
    assert _intact(victim)


def test_local_backend_refuses_a_symlink_out_of_the_root(tmp_path: Path) -> None:
    c = StageCache(str(tmp_path / "cache"))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "x.json").write_text("keep me")
    os.symlink(victim, tmp_path / "cache" / "evil")
    with pytest.raises(InvalidKey):
        c.backend.delete("evil/x.json")
    with pytest.raises(InvalidKey):
        c.backend.write_atomic("evil/y.json", [b"owned"])
    assert (victim / "x.json").read_text() == "keep me"
    assert not (victim / "y.json").exists()


def test_listing_ignores_files_whose_name_is_not_a_key(tmp_path: Path) -> None:
    c = StageCache(str(tmp_path / "cache"))
    k = stage_key("s", "1", {}, "p")
    c.put(k, 1)
    c.backend.write_atomic("objects/zz/not-a-key.entry", [b"junk"])
    assert c.keys() == [k]


@settings(max_examples=200)
@given(st.text(max_size=30))
def test_check_relpath_never_accepts_an_escape(rel: str) -> None:
    try:
        ok = check_relpath(rel)
    except InvalidKey:
        return
    parts = ok.split("/")
    assert "\x00" not in ok and "\\" not in ok and not ok.startswith("/")
    assert all(p and not p.startswith(".") for p in parts)
    assert os.path.normpath(os.path.join("/root", ok)).startswith("/root/")
