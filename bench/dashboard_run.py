"""The measurements of ``eeipu bench dashboard`` (see ``bench.dashboard``)."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAGE = ("/dashboard/", "/dashboard/style.css", "/dashboard/js/app.js", "/dashboard/js/plot.js")


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _stats(samples: list[float]) -> dict[str, float]:
    return {"median_ms": _ms(statistics.median(samples)), "max_ms": _ms(max(samples))}


def _serve(db: str, home: Path) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = dict(os.environ)
    env.pop("EEIPU_API_TOKEN", None)
    env["EEIPU_HOME"] = str(home)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    args = [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--db", db]
    args += ["--cache", str(home / "cache"), "--workers", "0"]
    log = open(home / "server.log", "wb")  # noqa: SIM115 - kept open for the process
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {(home / 'server.log').read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not become ready")


def _timed(c: Any, path: str) -> tuple[float, Any]:
    t0 = time.perf_counter()
    r = c.get(path)
    dt = time.perf_counter() - t0
    r.raise_for_status()
    return dt, r


def _fill_like_the_page(c: Any, sid: int) -> tuple[list[float], int]:
    """The requests the page makes to open a study: ``after`` pages until complete."""
    after, times = -1, []
    for _ in range(1000):
        dt, r = _timed(c, f"/v1/dashboard/studies/{sid}?after={after}&limit=1000")
        times.append(dt)
        v = r.json()
        after = v["next_after"]
        if v["complete"] and not v["more"]:
            return times, int(v["loaded"])
    raise RuntimeError("the digest never completed")


def _repeat(fn: Callable[[], float], n: int) -> list[float]:
    return [fn() for _ in range(n)]


def _reader(url: str, sid: int, stop: threading.Event, reads: list[int]) -> None:
    """Poll a study's rows (a full page of 1,000) until ``stop``."""
    import httpx

    with httpx.Client(base_url=url, timeout=30) as c:
        while not stop.is_set():
            c.get(f"/v1/dashboard/studies/{sid}?after=-1&limit=1000")
            reads[0] += 1


def _writes_during_reads(db: str, url: str, sid: int, writes: int) -> dict[str, Any]:
    """Finish ``writes`` trials of an external study, alone and while a reader polls."""

    from api.store import NewTrial, StudySpec, TrialResult, TrialState, open_store

    store = open_store(db, run_migrations=False, pool_size=2)
    try:
        spec = StudySpec("synthetic-3stage-flat", "random", 1e6, "value", "maximize")
        spec.mode = "external"  # no scheduler proposes for it: this loop is its only writer
        wid = store.create_study(spec, None).id
        out: dict[str, Any] = {}
        for label, reading in (("alone", False), ("with_reads", True)):
            st = store.get_study(wid)
            assert st is not None
            added = store.add_trials(
                wid, [NewTrial({}) for _ in range(writes)], None, st.ask_version
            )
            assert added is not None
            claimed = [store.claim_trial("bench", study_id=wid) for _ in added]
            stop = threading.Event()
            reads = [0]

            th = threading.Thread(target=_reader, args=(url, sid, stop, reads), daemon=True)
            if reading:
                th.start()
                time.sleep(0.2)
            times = []
            for t in claimed:
                assert t is not None
                t0 = time.perf_counter()
                store.finish_trial(
                    t.id, "bench", TrialResult(TrialState.COMPLETE, {"value": 1.0}, 1.0, 1.0)
                )
                times.append(time.perf_counter() - t0)
            stop.set()
            if reading:
                th.join(30)
            out[f"write_{label}"] = {**_stats(times), "reads_meanwhile": reads[0]}
        return out
    finally:
        store.close()


def measure(db: str, home: Path, sid: int, repeats: int, writes: int) -> dict[str, Any]:
    """Start the server on ``db`` and time the dashboard's requests on study ``sid``."""
    import httpx

    proc, url = _serve(db, home)
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            res: dict[str, Any] = {}
            for path in PAGE:
                res[f"page {path}"] = _stats([_timed(c, path)[0] for _ in range(repeats)])
            cold_list = _timed(c, "/v1/dashboard/studies")[0]
            fill, loaded = _fill_like_the_page(c, sid)
            res["study_cold_fill"] = {
                "requests": len(fill),
                "total_ms": _ms(sum(fill)),
                "max_ms": _ms(max(fill)),
                "trials": loaded,
            }
            res["list_cold_ms"] = _ms(cold_list)
            res["list_warm"] = _stats(
                _repeat(lambda: _timed(c, "/v1/dashboard/studies")[0], repeats)
            )
            settled = c.get(f"/v1/dashboard/studies/{sid}?after=-1&limit=1").json()["settled"]
            poll = f"/v1/dashboard/studies/{sid}?after={settled}"
            res["poll_nothing_new"] = _stats(_repeat(lambda: _timed(c, poll)[0], repeats))
            page = f"/v1/dashboard/studies/{sid}?after=-1&limit=1000"
            res["page_of_1000_rows"] = _stats(_repeat(lambda: _timed(c, page)[0], repeats))
            full = f"/v1/dashboard/studies/{sid}?after=-1&limit=10000"
            res["all_rows_one_request"] = _stats(_repeat(lambda: _timed(c, full)[0], repeats))
            imp = f"/v1/dashboard/studies/{sid}/importance"
            time.sleep(3)  # the server imports scikit-learn in the background meanwhile
            res["importance_first_fit_ms"] = _ms(_timed(c, imp)[0])
            res["importance_cached"] = _stats(_repeat(lambda: _timed(c, imp)[0], repeats))
            csv = f"/v1/studies/{sid}/trials.csv"
            first, body = _timed(c, csv)
            res["trials_csv_ms"] = _ms(first)
            res["trials_csv"] = {
                **_stats([first, *(_timed(c, csv)[0] for _ in range(min(5, repeats) - 1))]),
                "requests": min(5, repeats),
                "rows": body.text.count("\r\n") - 1,
                "bytes": len(body.content),
            }
        res.update(_writes_during_reads(db, url, sid, writes))
        return res
    finally:
        proc.terminate()
        proc.wait(30)
