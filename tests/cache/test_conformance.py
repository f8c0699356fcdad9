"""ONE conformance suite for the stage cache, run against every backend."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cache import CacheBackend, FsspecBackend, LocalBackend, StageCache
from cache import format as fmt
from tests.cache import _procs

BACKENDS = ["local", "fsspec"]


def K(name: str) -> str:
    """A valid cache key named after ``name`` (keys must be exactly what the cache makes)."""
    return hashlib.blake2b(name.encode(), digest_size=16).hexdigest()


def _location(kind: str, root: Path) -> str:
    return str(root) if kind == "local" else f"file://{root}"


@pytest.fixture(params=BACKENDS)
def loc(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _location(request.param, tmp_path / "cache")


@pytest.fixture
def cache(loc: str) -> Iterator[StageCache]:
    c = StageCache(loc)
    assert isinstance(c.backend, LocalBackend if "://" not in loc else FsspecBackend)
    yield c


def _root(loc: str) -> Path:
    return Path(loc.removeprefix("file://"))


def test_roundtrip_of_varied_outputs(cache: StageCache) -> None:
    arr = np.random.default_rng(0).random((300, 7)).astype(np.float32)
    values = {
        "k_array": arr,
        "k_dict": {"a": arr, "b": [1, 2, "x"], "c": None},
        "k_noncontig": arr[:, ::2],
        "k_empty": np.zeros((0, 3)),
        "k_tensor": {"w": torch.arange(6.0).reshape(2, 3)},
        "k_scalar": 3.5,
    }
    for k, v in values.items():
        cache.put(K(k), v, stage="s", compute_cost=0.5)
    for k, v in values.items():
        hit = cache.get(K(k))
        assert hit is not None, k
        got = hit.value
        if k == "k_dict":
            np.testing.assert_array_equal(got["a"], arr)
            assert got["b"] == [1, 2, "x"] and got["c"] is None
        elif k == "k_tensor":
            assert torch.equal(got["w"], v["w"])  # type: ignore[index]
        elif isinstance(v, np.ndarray):
            np.testing.assert_array_equal(got, v)
            assert got.dtype == v.dtype and got.shape == v.shape
        else:
            assert got == v
    assert sorted(cache.keys()) == sorted(K(k) for k in values)


def test_missing_key_is_a_miss(cache: StageCache) -> None:
    assert cache.get(K("nope")) is None
    assert cache.info(K("nope")) is None
    assert not cache.contains(K("nope"))


def test_metadata_and_stats(cache: StageCache) -> None:
    before = time.time()
    cache.put(
        K("k1"),
        np.ones(1000),
        pipeline="toy",
        stage="fit",
        params={"lr": 0.1},
        parent=K("p0"),
        compute_cost=2.5,
    )
    info = cache.info(K("k1"))
    assert info is not None
    assert (info.key, info.pipeline, info.stage, info.params, info.parent) == (
        K("k1"),
        "toy",
        "fit",
        {"lr": 0.1},
        K("p0"),
    )
    assert info.bytes >= 8000 and info.compute_cost == 2.5
    assert info.created >= before and info.hits == 0
    for _ in range(3):
        assert cache.get(K("k1")) is not None
    info = cache.info(K("k1"))
    assert info is not None and info.hits == 3 and info.last_used >= info.created
    assert info.load_seconds is not None and info.load_seconds > 0
    assert json.loads(json.dumps(info.to_dict()))["stage"] == "fit"


def test_corrupted_buffer_is_detected_dropped_and_a_miss(cache: StageCache, loc: str) -> None:
    arr = np.arange(100_000, dtype=np.float64)
    cache.put(K("k"), arr, compute_cost=1.0)
    path = _root(loc) / cache._obj(K("k"))
    data = bytearray(path.read_bytes())
    data[-5000] ^= 0xFF  # inside the raw array buffer
    path.write_bytes(bytes(data))
    assert cache.get(K("k")) is None
    assert any("corrupt" in e for e in cache.events)
    assert not cache.contains(K("k"))  # dropped, so the next run recomputes it


def test_truncated_entry_is_a_miss(cache: StageCache, loc: str) -> None:
    cache.put(K("k"), np.arange(50_000, dtype=np.float64))
    path = _root(loc) / cache._obj(K("k"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert cache.get(K("k")) is None
    assert not cache.contains(K("k"))


def test_corrupted_header_is_a_miss(cache: StageCache, loc: str) -> None:
    cache.put(K("k"), {"x": 1})
    path = _root(loc) / cache._obj(K("k"))
    data = bytearray(path.read_bytes())
    data[20] ^= 0x01
    path.write_bytes(bytes(data))
    assert cache.get(K("k")) is None


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch /tmp/eeipu-pwned-by-foreign-pickle",))


def test_foreign_files_are_never_unpickled(cache: StageCache, loc: str, tmp_path: Path) -> None:
    marker = Path("/tmp/eeipu-pwned-by-foreign-pickle")
    marker.unlink(missing_ok=True)
    # A well-formed entry, but written with another cache's secret.
    other = StageCache(str(tmp_path / "other"))
    enc = fmt.encode(_Evil(), {"key": K("k")}, other._secret)
    cache.backend.write_atomic(cache._obj(K("k")), enc.chunks)
    assert cache.get(K("k")) is None
    # And a raw pickle dropped in place of an entry.
    cache.backend.write_atomic(cache._obj(K("k2")), [pickle.dumps(_Evil())])
    assert cache.get(K("k2")) is None
    assert not marker.exists()


def test_concurrent_processes_computing_one_key_make_one_entry(loc: str, tmp_path: Path) -> None:
    counter = tmp_path / "computations"
    counter.mkdir()
    StageCache(loc)  # create the secret once, as a real deployment would
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.starmap(_procs.compute_same_key, [(loc, K("kk"), str(counter), 1000)] * 4)
    assert all(r == [float(sum(range(1000))), 1000.0] for r in results)
    assert len(list(counter.iterdir())) == 1  # computed exactly once
    c = StageCache(loc)
    assert c.keys() == [K("kk")]
    assert list((_root(loc) / "tmp").iterdir()) == []


def test_kill_9_mid_write_leaves_nothing_visible(loc: str) -> None:
    c = StageCache(loc)
    root = _root(loc)
    code = (
        "import sys; sys.path.insert(0, sys.argv[3]);"
        "from tests.cache._procs import slow_writer; slow_writer(sys.argv[1], sys.argv[2])"
    )
    repo = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen([sys.executable, "-c", code, loc, K("kill"), repo])
    deadline = time.time() + 60
    while not (root / "WRITING").exists():
        assert proc.poll() is None, "writer exited early"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not c.contains(K("kill"))
    assert c.get(K("kill")) is None
    assert K("kill") not in set(c.keys())
    assert any((root / "tmp").iterdir())  # the partial write is only a temporary
    removed = c.gc(tmp_grace=0)
    assert removed["tmp_files"] >= 1
    assert list((root / "tmp").iterdir()) == []
    c.put(K("kill"), np.ones(10))
    hit = c.get(K("kill"))
    assert hit is not None and hit.value.sum() == 10


def test_eviction_keeps_highest_recompute_cost_per_byte(loc: str) -> None:
    c = StageCache(loc)
    # Same sizes, different costs; plus a big cheap one and a small expensive one.
    sizes_costs = {
        "cheap_big": (200_000, 1.0),
        "dear_big": (200_000, 100.0),
        "cheap_small": (20_000, 0.01),
        "dear_small": (20_000, 50.0),
        "mid": (100_000, 5.0),
    }
    for k, (n, cost) in sizes_costs.items():
        c.put(K(k), np.zeros(n // 8), compute_cost=cost)
    per_byte = {k: cost / n for k, (n, cost) in sizes_costs.items()}
    budget = 330_000
    c.max_bytes = budget
    evicted_keys = set(c.enforce_budget())
    kept = {k for k in sizes_costs if c.contains(K(k))}
    evicted = [k for k in sizes_costs if K(k) in evicted_keys]
    assert c.total_bytes() <= budget + 5_000  # headers are small
    assert kept and evicted
    assert min(per_byte[k] for k in kept) >= max(per_byte[k] for k in evicted)
    assert "dear_small" in kept and "dear_big" in kept


def test_pinned_entries_are_never_evicted(loc: str) -> None:
    c = StageCache(loc)
    c.put(K("a"), np.zeros(50_000), compute_cost=0.001)
    c.put(K("b"), np.zeros(50_000), compute_cost=100.0)
    c.max_bytes = 500_000
    with c.pin([K("a")]):
        c.max_bytes = 1000
        c.enforce_budget()
        assert c.contains(K("a"))  # in use: kept although cheapest
        assert not c.contains(K("b"))
    c.enforce_budget()
    assert not c.contains(K("a"))


def test_budget_enforced_automatically_on_put(loc: str) -> None:
    c = StageCache(loc, max_bytes=300_000)
    for i in range(10):
        c.put(K(f"k{i}"), np.zeros(10_000), compute_cost=float(i))
    assert c.total_bytes() <= 300_000
    assert c.contains(K("k9")) and not c.contains(K("k0"))


def test_gc_removes_orphans_and_expired_leases(cache: StageCache, loc: str) -> None:
    cache.put(K("a"), 1)
    cache.get(K("a"))
    cache.backend.write_atomic("stats/zz/zzorphan.json", [b"{}"])
    cache.backend.write_atomic(
        f"leases/{K('a')}/dead-owner.json", [json.dumps({"expires": time.time() - 1}).encode()]
    )
    res = cache.gc(tmp_grace=0, verify=True)
    assert res["orphan_stats"] == 1 and res["expired_leases"] == 1 and res["corrupt"] == 0
    assert cache.contains(K("a"))
    assert not cache.backend.exists("stats/zz/zzorphan.json")


def test_no_listed_entry_without_its_file(cache: StageCache, loc: str) -> None:
    for i in range(5):
        cache.put(K(f"k{i}"), i)
    (_root(loc) / cache._obj(K("k2"))).unlink()  # a file vanishes behind our back
    listed = {e.key for e in cache.entries()}
    assert listed == {K(f"k{i}") for i in (0, 1, 3, 4)}
    for k in listed:
        assert cache.get(k) is not None


def test_backend_contract(loc: str) -> None:
    c = StageCache(loc)
    b: CacheBackend = c.backend
    b.write_atomic("x/y/z.bin", [b"abc", memoryview(b"def")])
    assert b.exists("x/y/z.bin") and b.read_bytes("x/y/z.bin") == b"abcdef"
    assert ("x/y/z.bin", 6) in [(p, s) for p, s, _ in b.list("x")]
    with pytest.raises(FileNotFoundError):
        b.open_read("x/none")
    b.delete("x/y/z.bin")
    b.delete("x/y/z.bin")  # idempotent
    assert not b.exists("x/y/z.bin")
    with b.lock(K("l1")), b.lock(K("l2")):
        pass
    # empty folders are pruned below the given one, never the folder itself or a full one
    b.write_atomic("x/keep/f.bin", [b"1"])
    assert b.prune_dirs("x") == 1  # x/y
    assert b.exists("x/keep/f.bin")
    assert b.cleanup_locks() >= 0  # released locks may go; nothing raises
    with b.lock(K("l1")):
        pass


_ENTRY_VALUES = {"array": np.arange(1001, dtype=np.float64), "plain": {"a": [1, 2.5, "x"]}}


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(sorted(_ENTRY_VALUES)), where=st.floats(0.0, 1.0), bit=st.integers(0, 7)
)
@example(kind="array", where=1.0, bit=0)  # cut inside the trailing padding
@example(kind="plain", where=1.0, bit=0)
def test_any_cut_is_detected_and_no_flip_yields_a_wrong_value(
    cache: StageCache, loc: str, kind: str, where: float, bit: int
) -> None:
    value = _ENTRY_VALUES[kind]
    key = K(f"damage-{kind}")
    cache.put(key, value)
    path = _root(loc) / cache._obj(key)
    data = path.read_bytes()
    pos = min(int(where * len(data)), len(data) - 1)
    path.write_bytes(data[:pos])  # every cut, anywhere, is corruption
    assert cache.get(key) is None and not cache.contains(key)
    cache.put(key, value)
    flipped = bytearray(data)
    flipped[pos] ^= 1 << bit
    path.write_bytes(bytes(flipped))
    hit = cache.get(key)  # detected, or (a padding byte) harmless: never a wrong value
    if hit is not None:
        if kind == "array":
            np.testing.assert_array_equal(hit.value, value)
        else:
            assert hit.value == value


def test_an_entry_filed_under_another_key_is_refused(cache: StageCache, loc: str) -> None:
    cache.put(K("a"), "value of a")
    cache.put(K("b"), "value of b")
    src = _root(loc) / cache._obj(K("a"))
    (_root(loc) / cache._obj(K("b"))).write_bytes(src.read_bytes())  # renamed or copied
    assert cache.get(K("b")) is None and cache.info(K("b")) is None
    hit = cache.get(K("a"))
    assert hit is not None and hit.value == "value of a"


def test_appended_bytes_are_corruption(cache: StageCache, loc: str) -> None:
    cache.put(K("a"), np.ones(64))
    path = _root(loc) / cache._obj(K("a"))
    path.write_bytes(path.read_bytes() + b"\0")
    assert cache.get(K("a")) is None


def test_entries_read_stats_again_only_when_their_file_changed(
    cache: StageCache, loc: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(4):
        cache.put(K(f"s{i}"), i)
    cache.get(K("s1"))  # a hit writes the entry's stats
    reads: list[str] = []
    original = cache._read_stats

    def counting(key: str) -> dict:
        reads.append(key)
        return original(key)

    monkeypatch.setattr(cache, "_read_stats", counting)
    first = {e.key: e.hits for e in cache.entries()}
    assert first[K("s1")] == 1 and first[K("s0")] == 0
    assert reads == [K("s1")]  # entries without a stats file read none
    reads.clear()
    assert {e.key: e.hits for e in cache.entries()} == first and reads == []  # the memo
    time.sleep(0.01)  # a later mtime even on a coarse clock
    cache.get(K("s1"))
    cache.get(K("s2"))
    reads.clear()
    again = {e.key: e.hits for e in cache.entries()}
    assert again[K("s1")] == 2 and again[K("s2")] == 1
    assert sorted(reads) == sorted([K("s1"), K("s2")])
