"""``eeipu bench cache``: what a hit costs next to ``numpy.load``, and what a key costs."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cache.keys import root_key, stage_key
from cache.store import StageCache


def bench_cache(
    size_mb: int = 100, repeats: int = 21, location: str | None = None
) -> dict[str, Any]:
    """Median warm hit time over ``repeats`` against ``numpy.load`` of the same bytes.

    Both read the same float32 array from the page cache (warm), interleaved run by run so
    that machine noise hits both alike; the ratio is taken per run and its median reported.
    """
    n = size_mb * 1_000_000 // 4
    arr = np.random.default_rng(0).random(n, dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="eeipu-bench-") as tmp:
        root = location or str(Path(tmp) / "cache")
        c = StageCache(root)
        key = stage_key("bench", "1", {"size_mb": size_mb}, root_key("bench"))
        t0 = time.perf_counter()
        c.put(key, arr, stage="bench", compute_cost=1.0)
        put_s = time.perf_counter() - t0
        npy = Path(tmp) / "plain.npy"
        np.save(npy, arr)
        c.get(key)
        np.load(npy)
        jl_get = _joblib_getter(Path(tmp) / "joblib", arr)
        hits, loads, ratios, jl_ratios = [], [], [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            h = c.get(key)
            t1 = time.perf_counter()
            assert h is not None
            del h
            t2 = time.perf_counter()
            x = np.load(npy)
            t3 = time.perf_counter()
            del x
            hits.append(t1 - t0)
            loads.append(t3 - t2)
            ratios.append((t1 - t0) / (t3 - t2))
            if jl_get is not None:
                t4 = time.perf_counter()
                y = jl_get()
                t5 = time.perf_counter()
                del y
                jl_ratios.append((t5 - t4) / (t3 - t2))
        params = {"lr": 0.1, "depth": 7, "kind": "gbm"}
        parent = root_key("data", 0)
        m = 20000
        t0 = time.perf_counter()
        for _ in range(m):
            stage_key("train", "1", params, parent)
        key_s = (time.perf_counter() - t0) / m
    return {
        "size_mb": size_mb,
        "hit_seconds": statistics.median(hits),
        "numpy_load_seconds": statistics.median(loads),
        "hit_over_numpy_load_ratio": statistics.median(ratios),
        "joblib_memory_hit_over_numpy_load_ratio": (
            statistics.median(jl_ratios) if jl_ratios else None
        ),
        "put_seconds": put_s,
        "key_seconds": key_s,
        "repeats": repeats,
    }


def _joblib_getter(where: Path, arr: np.ndarray) -> Any:
    """A warm ``joblib.Memory`` hit of the same array, for comparison (None if unavailable)."""
    try:
        import joblib
    except ImportError:  # pragma: no cover - joblib is a dependency
        return None
    mem = joblib.Memory(str(where), verbose=0)

    def compute(size: int) -> np.ndarray:
        return arr

    produce = mem.cache(compute)

    produce(arr.size)
    produce(arr.size)
    return lambda: produce(arr.size)
