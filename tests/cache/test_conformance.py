"""ONE conformance suite for the stage cache, run against every backend."""

from __future__ import annotations

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

from cache import CacheBackend, FsspecBackend, LocalBackend, StageCache
from cache import format as fmt
from tests.cache import _procs

BACKENDS = ["local", "fsspec"]


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
        cache.put(k, v, stage="s", compute_cost=0.5)
    for k, v in values.items():
        hit = cache.get(k)
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
    assert sorted(cache.keys()) == sorted(values)


def test_missing_key_is_a_miss(cache: StageCache) -> None:
    assert cache.get("nope") is None
    assert cache.info("nope") is None
    assert not cache.contains("nope")


def test_metadata_and_stats(cache: StageCache) -> None:
    before = time.time()
    cache.put(
        "k1",
        np.ones(1000),
        pipeline="toy",
        stage="fit",
        params={"lr": 0.1},
        parent="p0",
        compute_cost=2.5,
    )
    info = cache.info("k1")
    assert info is not None
    assert (info.key, info.pipeline, info.stage, info.params, info.parent) == (
        "k1",
        "toy",
        "fit",
        {"lr": 0.1},
        "p0",
    )
    assert info.bytes >= 8000 and info.compute_cost == 2.5
    assert info.created >= before and info.hits == 0
    for _ in range(3):
        assert cache.get("k1") is not None
    info = cache.info("k1")
    assert info is not None and info.hits == 3 and info.last_used >= info.created
    assert info.load_seconds is not None and info.load_seconds > 0
    assert json.loads(json.dumps(info.to_dict()))["stage"] == "fit"


def test_corrupted_buffer_is_detected_dropped_and_a_miss(cache: StageCache, loc: str) -> None:
    arr = np.arange(100_000, dtype=np.float64)
    cache.put("k", arr, compute_cost=1.0)
    path = _root(loc) / cache._obj("k")
    data = bytearray(path.read_bytes())
    data[-5000] ^= 0xFF  # inside the raw array buffer
    path.write_bytes(bytes(data))
    assert cache.get("k") is None
    assert any("corrupt" in e for e in cache.events)
    assert not cache.contains("k")  # dropped, so the next run recomputes it


def test_truncated_entry_is_a_miss(cache: StageCache, loc: str) -> None:
    cache.put("k", np.arange(50_000, dtype=np.float64))
    path = _root(loc) / cache._obj("k")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert cache.get("k") is None
    assert not cache.contains("k")


def test_corrupted_header_is_a_miss(cache: StageCache, loc: str) -> None:
    cache.put("k", {"x": 1})
    path = _root(loc) / cache._obj("k")
    data = bytearray(path.read_bytes())
    data[20] ^= 0x01
    path.write_bytes(bytes(data))
    assert cache.get("k") is None


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch /tmp/eeipu-pwned-by-foreign-pickle",))


def test_foreign_files_are_never_unpickled(cache: StageCache, loc: str, tmp_path: Path) -> None:
    marker = Path("/tmp/eeipu-pwned-by-foreign-pickle")
    marker.unlink(missing_ok=True)
    # A well-formed entry, but written with another cache's secret.
    other = StageCache(str(tmp_path / "other"))
    enc = fmt.encode(_Evil(), {"key": "k"}, other._secret)
    cache.backend.write_atomic(cache._obj("k"), enc.chunks)
    assert cache.get("k") is None
    # And a raw pickle dropped in place of an entry.
    cache.backend.write_atomic(cache._obj("k2"), [pickle.dumps(_Evil())])
    assert cache.get("k2") is None
    assert not marker.exists()


def test_concurrent_processes_computing_one_key_make_one_entry(loc: str, tmp_path: Path) -> None:
    counter = tmp_path / "computations"
    counter.mkdir()
    StageCache(loc)  # create the secret once, as a real deployment would
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.starmap(_procs.compute_same_key, [(loc, "kk", str(counter), 1000)] * 4)
    assert all(r == [float(sum(range(1000))), 1000.0] for r in results)
    assert len(list(counter.iterdir())) == 1  # computed exactly once
    c = StageCache(loc)
    assert c.keys() == ["kk"]
    assert list((_root(loc) / "tmp").iterdir()) == []


def test_kill_9_mid_write_leaves_nothing_visible(loc: str) -> None:
    c = StageCache(loc)
    root = _root(loc)
    code = (
        "import sys; sys.path.insert(0, sys.argv[3]);"
        "from tests.cache._procs import slow_writer; slow_writer(sys.argv[1], sys.argv[2])"
    )
    repo = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen([sys.executable, "-c", code, loc, "kill", repo])
    deadline = time.time() + 60
    while not (root / "WRITING").exists():
        assert proc.poll() is None, "writer exited early"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not c.contains("kill")
    assert c.get("kill") is None
    assert "kill" not in set(c.keys())
    assert any((root / "tmp").iterdir())  # the partial write is only a temporary
    removed = c.gc(tmp_grace=0)
    assert removed["tmp_files"] >= 1
    assert list((root / "tmp").iterdir()) == []
    c.put("kill", np.ones(10))
    hit = c.get("kill")
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
        c.put(k, np.zeros(n // 8), compute_cost=cost)
    per_byte = {k: cost / n for k, (n, cost) in sizes_costs.items()}
    budget = 330_000
    c.max_bytes = budget
    evicted = c.enforce_budget()
    kept = set(c.keys())
    assert c.total_bytes() <= budget + 5_000  # headers are small
    assert kept and evicted
    assert min(per_byte[k] for k in kept) >= max(per_byte[k] for k in evicted)
    assert "dear_small" in kept and "dear_big" in kept


def test_pinned_entries_are_never_evicted(loc: str) -> None:
    c = StageCache(loc)
    c.put("a", np.zeros(50_000), compute_cost=0.001)
    c.put("b", np.zeros(50_000), compute_cost=100.0)
    c.max_bytes = 500_000
    with c.pin(["a"]):
        c.max_bytes = 1000
        c.enforce_budget()
        assert c.contains("a")  # in use: kept although cheapest
        assert not c.contains("b")
    c.enforce_budget()
    assert not c.contains("a")


def test_budget_enforced_automatically_on_put(loc: str) -> None:
    c = StageCache(loc, max_bytes=300_000)
    for i in range(10):
        c.put(f"k{i}", np.zeros(10_000), compute_cost=float(i))
    assert c.total_bytes() <= 300_000
    assert c.contains("k9") and not c.contains("k0")


def test_gc_removes_orphans_and_expired_leases(cache: StageCache, loc: str) -> None:
    cache.put("a", 1)
    cache.get("a")
    cache.backend.write_atomic("stats/zz/zzorphan.json", [b"{}"])
    cache.backend.write_atomic(
        "leases/a/dead-owner.json", [json.dumps({"expires": time.time() - 1}).encode()]
    )
    res = cache.gc(tmp_grace=0, verify=True)
    assert res["orphan_stats"] == 1 and res["expired_leases"] == 1 and res["corrupt"] == 0
    assert cache.contains("a")
    assert not cache.backend.exists("stats/zz/zzorphan.json")


def test_no_listed_entry_without_its_file(cache: StageCache, loc: str) -> None:
    for i in range(5):
        cache.put(f"k{i}", i)
    (_root(loc) / cache._obj("k2")).unlink()  # a file vanishes behind our back
    listed = {e.key for e in cache.entries()}
    assert listed == {"k0", "k1", "k3", "k4"}
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
    with b.lock("l1"), b.lock("l2"):
        pass
