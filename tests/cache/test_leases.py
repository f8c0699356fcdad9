"""Leases end with their holder, and gc removes what dead holders and old runs leave behind."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cache import StageCache, stage_key
from tests.cache import _procs

REPO = str(Path(__file__).resolve().parents[2])


def K(i: int) -> str:
    return stage_key("s", "1", {"i": i}, "root")


@pytest.fixture(params=["local", "fsspec"])
def loc(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    root = tmp_path / "cache"
    return str(root) if request.param == "local" else f"file://{root}"


def _root(loc: str) -> Path:
    return Path(loc.removeprefix("file://"))


def _leases(loc: str) -> list[Path]:
    return sorted(p for p in (_root(loc) / "leases").glob("**/*") if p.is_file())


def _lease_dirs(loc: str) -> list[Path]:
    return sorted(p for p in (_root(loc) / "leases").glob("*") if p.is_dir())


@pytest.fixture
def child(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def _start(procs: list[subprocess.Popen[bytes]], fn: str, *args: str) -> subprocess.Popen[bytes]:
    """Run ``tests.cache._procs.<fn>(*args)`` in a child and wait until it says it is ready."""
    marker = Path(args[-1])
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        f"from tests.cache._procs import {fn}; {fn}(*sys.argv[2:])"
    )
    p = subprocess.Popen([sys.executable, "-c", code, REPO, *args])
    procs.append(p)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert p.poll() is None, "child exited early"
        assert time.monotonic() < deadline, "child never got ready"
        time.sleep(0.02)
    return p


def test_a_lease_records_its_holder_and_refresh_time(loc: str) -> None:
    c = StageCache(loc)
    c.put(K(1), 1)
    before = time.time()
    with c.pin([K(1)]):
        (path,) = _leases(loc)
        d = json.loads(path.read_text())
        assert d["pid"] == os.getpid() and d["host"] == c.host
        assert before <= d["refreshed"] <= time.time()
        assert c._pinned() == {K(1)}
    assert _leases(loc) == [] and c._pinned() == set()


def test_leases_of_a_killed_holder_expire_and_gc_removes_them(
    loc: str, tmp_path: Path, child: list[subprocess.Popen[bytes]]
) -> None:
    c = StageCache(loc)  # default TTL: minutes, so only the dead holder can end the lease
    c.put(K(1), np.zeros(20_000), compute_cost=0.001)
    c.put(K(2), np.zeros(20_000), compute_cost=100.0)
    p = _start(child, "hold_pin", loc, K(1), str(tmp_path / "pinned"))
    assert c._pinned() == {K(1)}  # alive: it pins
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert len(_leases(loc)) == 1  # the killed holder never released it...
    assert c._pinned() == set()  # ...but it no longer pins anything
    c.max_bytes = 200_000
    assert c.enforce_budget() == [K(1)]  # the cheap entry is evictable again at once
    res = c.gc(tmp_grace=0)
    assert res["expired_leases"] == 1 and res["lease_dirs"] == 1
    assert _leases(loc) == [] and _lease_dirs(loc) == []
    assert c.contains(K(2))


def _write_lease(c: StageCache, key: str, name: str, age: float, **holder: object) -> Path:
    body = {"host": "elsewhere", "pid": 1, "refreshed": time.time() - age, **holder}
    c.backend.write_atomic(f"leases/{key}/{name}.json", [json.dumps(body).encode()])
    path = Path(c.backend.url.removeprefix("file://")) / "leases" / key / f"{name}.json"
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_a_lease_that_stopped_refreshing_expires_whoever_holds_it(loc: str) -> None:
    c = StageCache(loc, lease_ttl=60.0)
    for i in range(3):
        c.put(K(i), i)
    _write_lease(c, K(0), "fresh", age=1.0)  # another host, refreshed lately: pins
    _write_lease(c, K(1), "stale", age=600.0)  # another host, silent for 10 min: does not
    _write_lease(c, K(2), "mine-stale", age=600.0, host=c.host, pid=os.getpid())
    assert c._pinned() == {K(0)}
    res = c.gc(tmp_grace=0)
    assert res["expired_leases"] == 2 and res["lease_dirs"] == 2
    assert [p.parent.name for p in _leases(loc)] == [K(0)]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_reused_pid_does_not_keep_a_dead_holder_alive(loc: str) -> None:
    c = StageCache(loc)
    c.put(K(0), 0)
    # Our own pid, but another process start time: the pid was reused, the holder is gone.
    _write_lease(c, K(0), "reused", 1.0, host=c.host, pidns=c._pidns, pid=os.getpid(), start="1")
    assert c._pinned() == set()


def test_a_live_holder_keeps_its_lease_by_refreshing(loc: str) -> None:
    c = StageCache(loc, lease_ttl=60.0)
    c.put(K(0), 0)
    with c.pin([K(0)]):
        assert c._keeper is not None and c._keeper.is_alive()
        (path,) = _leases(loc)
        old = time.time() - 600  # as if the holder had not refreshed for 10 minutes
        body = json.loads(path.read_text())
        path.write_text(json.dumps({**body, "refreshed": old}))
        os.utime(path, (old, old))
        assert c._pinned() == set()
        c._refresh_leases()  # what the keeper thread does every lease_ttl / 4
        assert c._pinned() == {K(0)}
    assert _leases(loc) == []
    c._refresh_leases()  # released leases are never rewritten
    assert _leases(loc) == []


def test_gc_removes_lock_files_nobody_holds_but_not_a_held_one(
    tmp_path: Path, child: list[subprocess.Popen[bytes]]
) -> None:
    loc = str(tmp_path / "cache")
    c = StageCache(loc)
    for i in range(20):
        with c.compute_lock(K(i)):
            c.put(K(i), i)
    locks = tmp_path / "cache" / "locks"
    assert len(list(locks.glob("*.lock"))) >= 20
    p = _start(child, "hold_lock", loc, K(99), str(tmp_path / "locked"))
    res = c.gc(tmp_grace=0)
    assert res["lock_files"] >= 20
    assert [f.name for f in locks.glob("*.lock")] == [f"{K(99)}.lock"]  # held: kept
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert c.gc(tmp_grace=0)["lock_files"] == 1
    assert list(locks.glob("*.lock")) == []
    assert len(c.keys()) == 20  # entries untouched


def test_removing_lock_files_never_lets_two_holders_in(tmp_path: Path) -> None:
    loc = str(tmp_path / "cache")
    c = StageCache(loc)
    counter = tmp_path / "counter"
    counter.write_text("0")
    ctx = mp.get_context("spawn")
    n = 150
    with ctx.Pool(2) as pool:
        job = pool.starmap_async(_procs.count_under_lock, [(loc, K(0), str(counter), n)] * 2)
        removed = 0
        while not job.ready():
            removed += c.backend.cleanup_locks()
        job.get()
    assert int(counter.read_text()) == 2 * n  # no increment lost: the lock stayed exclusive
    assert removed >= 1  # lock files really were removed under the workers


def test_fsspec_gc_removes_stale_lock_folders(tmp_path: Path) -> None:
    c = StageCache(f"file://{tmp_path / 'cache'}")
    locks = tmp_path / "cache" / "locks"
    with c.compute_lock(K(0)):
        assert (locks / f"{K(0)}.lockdir").is_dir()
    assert not (locks / f"{K(0)}.lockdir").exists()  # released: removed at once
    (locks / f"{K(1)}.lockdir").mkdir()  # left by a killed holder, long ago
    old = time.time() - 2 * 3600
    os.utime(locks / f"{K(1)}.lockdir", (old, old))
    (locks / f"{K(2)}.lockdir").mkdir()  # recent: may be held
    assert c.gc(tmp_grace=0)["lock_files"] == 1
    assert sorted(p.name for p in locks.iterdir()) == [f"{K(2)}.lockdir"]
