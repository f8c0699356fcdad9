"""Functions run in child processes by the cache tests (spawned, so importable by path)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from cache import StageCache, backend_for


def compute_same_key(location: str, key: str, counter_dir: str, n: int) -> list[float]:
    """Get-or-compute one key the way the pipeline runner does; record real computations."""
    c = StageCache(backend_for(location))
    with c.compute_lock(key):
        hit = c.get(key)
        if hit is None:
            Path(counter_dir, f"{os.getpid()}-{time.time_ns()}").touch()
            time.sleep(0.2)  # widen the race window
            value = np.arange(n, dtype=np.float64)
            c.put(key, value, stage="s", compute_cost=1.0)
        else:
            value = hit.value
    return [float(value.sum()), float(value.size)]


def slow_writer(location: str, key: str) -> None:
    """Write a large entry through a generator that stalls half way (to be killed)."""
    c = StageCache(backend_for(location))
    from cache import format as fmt

    enc = fmt.encode(np.ones(4_000_000), {"key": key}, c._secret)

    def chunks() -> Any:
        for i, ch in enumerate(enc.chunks):
            yield ch
            if i == 2:
                Path(location.removeprefix("file://"), "WRITING").touch()
                time.sleep(60)

    c.backend.write_atomic(c._obj(key), chunks())


def hold_pin(location: str, key: str, marker: str) -> None:
    """Pin ``key`` and wait (to be killed while holding the lease)."""
    c = StageCache(backend_for(location))
    with c.pin([key]):
        Path(marker).touch()
        time.sleep(120)


def hold_lock(location: str, key: str, marker: str) -> None:
    """Hold the compute lock of ``key`` and wait (to be killed while holding it)."""
    c = StageCache(backend_for(location))
    with c.compute_lock(key):
        Path(marker).touch()
        time.sleep(120)


def count_under_lock(location: str, key: str, counter: str, n: int) -> None:
    """Increment a counter file ``n`` times with a deliberately racy read-modify-write that
    only the lock makes correct."""
    c = StageCache(backend_for(location))
    for _ in range(n):
        with c.compute_lock(key):
            p = Path(counter)
            v = int(p.read_text() or "0")
            time.sleep(0.0005)
            p.write_text(str(v + 1))
