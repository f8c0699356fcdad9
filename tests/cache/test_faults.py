"""Fault injection: a full or read-only cache, and damaged entries, never fail a run or lose
what is stored; each test says what it injects and checks that nothing is lost."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cache import StageCache
from pipelines import Float, Pipeline, Stage

N = 150_000  # float64 elements: 1.2 MB per output, so two never fit on a 2 MiB disk


def make_pipe(calls: Counter[str]) -> Pipeline:
    def load(parent: Any, *, a: float) -> np.ndarray:
        calls["load"] += 1
        return np.full(N, a)

    def feat(parent: np.ndarray, *, b: float) -> np.ndarray:
        calls["feat"] += 1
        return parent * b

    def score(parent: np.ndarray, *, t: float) -> dict[str, float]:
        calls["score"] += 1
        return {"value": float(parent.sum()) + t}

    return Pipeline(
        "faulty",
        [
            Stage("load", load, space={"a": Float(0.0, 1.0)}),
            Stage("feat", feat, space={"b": Float(0.0, 4.0)}),
            Stage("score", score, space={"t": Float(-1.0, 1.0)}),
        ],
    )


def cfg(a: float = 0.5, b: float = 2.0, t: float = 0.0) -> dict[str, dict[str, float]]:
    return {"load": {"a": a}, "feat": {"b": b}, "score": {"t": t}}


def expected(a: float = 0.5, b: float = 2.0, t: float = 0.0) -> float:
    return float(np.full(N, a * b).sum()) + t


def _root(c: StageCache) -> Path:
    return Path(c.backend.url.removeprefix("file://"))


# ---------------------------------------------------------------------- a real tiny disk
_NOT_PERMITTED = ("permission denied", "not permitted", "must be superuser", "only root")


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs. Skips ONLY when mounting is not permitted here; any other failure to
    mount fails the test, so this fault is never silently untested where it can be."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except PermissionError as e:
        pytest.skip(f"mounting a tmpfs is not permitted here ({e})")
    if r.returncode != 0:
        if os.geteuid() != 0 or any(s in r.stderr.lower() for s in _NOT_PERMITTED):
            pytest.skip(f"mounting a tmpfs is not permitted here: {r.stderr.strip()}")
        pytest.fail(f"could not mount a tmpfs: {r.stderr.strip()}")
    try:
        (mnt / "filler").touch()
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=30)


def _fill(disk: Path) -> Path:
    """Fill the disk to the last byte; return the filler file (made at mount time, since a
    nearly full tmpfs may have no room left even for a new empty file)."""
    filler = disk / "filler"
    with open(filler, "ab", buffering=0) as f:
        for size in (64 << 10, 1):
            with contextlib.suppress(OSError):
                while f.write(bytes(size)):
                    pass
    return filler


def test_full_real_disk_runs_complete_uncached_and_hits_still_load(tiny_disk: Path) -> None:
    calls: Counter[str] = Counter()
    p = make_pipe(calls)
    c = StageCache(str(tiny_disk / "cache"))
    # 20 trials on a disk that holds one output: every "feat" write hits ENOSPC for real.
    for i in range(20):
        b = 0.1 * (i + 1)
        r = p.run(cfg(b=b), cache=c)
        assert r.metrics["value"] == pytest.approx(expected(b=b))
        feat = r.stages[1]
        assert feat.cache_error is not None and "ENOSPC" in feat.cache_error
        assert feat.bytes == 0 and not c.contains(feat.key)
        assert r.cache_errors == [f"feat: {feat.cache_error}"]
    assert calls["load"] == 1 and calls["feat"] == 20  # load was stored once and reused
    assert list((tiny_disk / "cache" / "tmp").iterdir()) == []  # no partial write left
    first = p.run(cfg(b=0.1), cache=c)
    assert first.reused_depth == 3 and first.cache_errors == []

    # Now not one byte is free: hits still load, new configurations still run.
    filler = _fill(tiny_disk)
    reason = c.check_writable()
    assert reason is not None and "ENOSPC" in reason
    calls.clear()
    r = p.run(cfg(b=0.1), cache=c)
    assert calls == Counter() and r.reused_depth == 3
    assert r.metrics["value"] == pytest.approx(expected(b=0.1))
    assert any("lease not written" in e for e in r.events)  # recorded, not fatal
    r = p.run(cfg(b=3.5, t=0.5), cache=c)
    assert r.metrics["value"] == pytest.approx(expected(b=3.5, t=0.5))
    assert [s.stage for s in r.stages if s.cache_error] == ["feat", "score"]

    # Nothing stored was lost: space back, every entry verifies and loads.
    filler.unlink()
    assert c.check_writable() is None
    assert c.gc(tmp_grace=0, verify=True)["corrupt"] == 0
    hit = c.get(first.stages[0].key)
    assert hit is not None and float(hit.value[0]) == 0.5


def test_fresh_cache_on_a_full_real_disk_runs_uncached(tiny_disk: Path) -> None:
    filler = _fill(tiny_disk)
    (tiny_disk / "cache").mkdir()  # an existing, empty cache folder (no secret yet)
    c = StageCache(str(tiny_disk / "cache"))
    reason = c.check_writable()
    assert reason is not None and "secret" in reason
    p = make_pipe(Counter())
    r = p.run(cfg(), cache=c)
    assert r.metrics["value"] == pytest.approx(expected())
    assert len(r.cache_errors) == 3
    filler.unlink()
    assert c.check_writable() is None  # recovers once there is space
    r = p.run(cfg(), cache=c)
    # Room for one big output again: load and score are stored, feat still does not fit.
    assert [s.stage for s in r.stages if s.cache_error] == ["feat"]
    assert set(c.keys()) == {r.stages[0].key, r.stages[2].key}
    assert StageCache(str(tiny_disk / "cache")).get(r.stages[2].key) is not None


# ---------------------------------------------------------------------- simulated faults
class Injector:
    """Makes chosen backend writes fail part-way with ``OSError(code)``, through the real
    write path (so its clean-up of partial files runs), and counts what it injected."""

    def __init__(self, c: StageCache, code: int, prefixes: tuple[str, ...]) -> None:
        self.code = code
        self.prefixes = prefixes
        self.injected: Counter[str] = Counter()
        self.on = True
        real: Callable[..., int] = c.backend._write_atomic

        def write(relpath: str, chunks: Iterable[bytes | memoryview], durable: bool) -> int:
            if not (self.on and relpath.startswith(self.prefixes)):
                return real(relpath, chunks, durable)
            self.injected[relpath.split("/", 1)[0]] += 1

            def failing() -> Iterator[bytes | memoryview]:
                it = iter(chunks)
                yield next(it)
                raise OSError(self.code, os.strerror(self.code))

            return real(relpath, failing(), durable)

        c.backend._write_atomic = write  # type: ignore[method-assign]


@pytest.fixture(params=["local", "fsspec"])
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> StageCache:
    root = tmp_path / "c"
    return StageCache(str(root) if request.param == "local" else f"file://{root}")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EIO])
def test_failing_writes_never_fail_a_run(cache: StageCache, code: int) -> None:
    calls: Counter[str] = Counter()
    p = make_pipe(calls)
    stored = p.run(cfg(b=9.0 / 4), cache=cache)  # stored before the fault
    inj = Injector(cache, code, ("objects/", "stats/", "leases/", "tmp/"))
    name = errno.errorcode[code]
    for i in range(10):
        b = 0.25 * (i + 1)
        r = p.run(cfg(a=0.25, b=b), cache=cache)
        assert r.metrics["value"] == pytest.approx(expected(a=0.25, b=b))
        assert all(s.cache_error and name in s.cache_error for s in r.stages)
        assert len(r.cache_errors) == 3
    assert inj.injected["objects"] == 30 and inj.injected["leases"] == 10
    assert cache.check_writable() is not None
    # Reading a hit needs no write: leases and stats fail, the hit loads all the same.
    calls.clear()
    r = p.run(cfg(b=9.0 / 4), cache=cache)
    assert calls == Counter() and r.reused_depth == 3
    assert r.metrics["value"] == pytest.approx(expected(b=9.0 / 4))
    assert inj.injected["stats"] >= 1
    # Nothing lost, nothing partial left; writing resumes when the fault clears.
    assert set(cache.keys()) == {s.key for s in stored.stages}
    assert list((_root(cache) / "tmp").iterdir()) == []
    inj.on = False
    assert cache.check_writable() is None
    r = p.run(cfg(a=0.25, b=0.5), cache=cache)
    assert r.cache_errors == [] and len(cache.keys()) == 6


def test_unavailable_locks_and_deletes_never_fail_a_run(cache: StageCache) -> None:
    """A read-only cache: no lock file can be made, no file removed; runs still complete."""
    p = make_pipe(Counter())
    good = p.run(cfg(), cache=cache)
    bad = p.run(cfg(b=1.0), cache=cache)
    path = _root(cache) / cache._obj(bad.stages[2].key)
    path.write_bytes(path.read_bytes()[:40])  # truncated: will be found corrupt

    def no_lock(name: str, timeout: float) -> Any:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    def no_delete(relpath: str) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    Injector(cache, errno.EROFS, ("objects/", "stats/", "leases/", "tmp/"))
    cache.backend._lock = no_lock  # type: ignore[method-assign]
    cache.backend._delete = no_delete  # type: ignore[method-assign]
    r = p.run(cfg(b=1.0), cache=cache)
    assert r.metrics["value"] == pytest.approx(expected(b=1.0))
    assert r.reused_depth == 2 and r.stages[2].cache_error is not None
    assert any("compute lock unavailable" in e for e in r.events)
    assert any("cannot drop corrupt" in e for e in r.events)
    r = p.run(cfg(b=3.0), cache=cache)
    assert r.metrics["value"] == pytest.approx(expected(b=3.0))
    assert {s.key for s in good.stages} <= set(cache.keys())


# ---------------------------------------------------------------------- damaged entries
@pytest.mark.parametrize("damage", ["appended", "cut_padding", "misfiled"])
def test_damaged_entries_are_detected_and_recomputed_by_a_run(
    cache: StageCache, damage: str
) -> None:
    """Damage the cached feat and score outputs of one configuration; the next run must
    notice, fall back to the intact load output and recompute the right metrics."""
    calls: Counter[str] = Counter()
    p = make_pipe(calls)
    other = p.run(cfg(b=3.0), cache=cache)
    r1 = p.run(cfg(), cache=cache)
    for s, o in zip(r1.stages[1:], other.stages[1:], strict=True):
        path = _root(cache) / cache._obj(s.key)
        data = path.read_bytes()
        if damage == "appended":
            data += b"junk"
        elif damage == "cut_padding":
            data = data[:-1] if data.endswith(b"\0") else data + b"\0"  # length now wrong
        else:  # an authentic entry of another configuration, filed under this key
            data = (_root(cache) / cache._obj(o.key)).read_bytes()
        path.write_bytes(data)
    calls.clear()
    r2 = p.run(cfg(), cache=cache)
    assert r2.metrics == r1.metrics == {"value": pytest.approx(expected())}
    assert r2.reused_depth == 1 and calls == Counter(feat=1, score=1)
    assert sum("corrupt" in e for e in r2.events) >= 1
    calls.clear()
    r3 = p.run(cfg(), cache=cache)  # recomputed entries were stored again, whole
    assert r3.reused_depth == 3 and calls == Counter() and r3.metrics == r1.metrics
    assert p.run(cfg(b=3.0), cache=cache).metrics == other.metrics  # the source is intact
