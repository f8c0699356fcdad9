"""``eeipu bench workers``: how long each worker of a server waits for a proposal.

It starts ``eeipu serve --workers N`` on a free loopback port over a fresh SQLite file or a
throw-away PostgreSQL database, creates one managed study of the pipeline ``sleepy`` below
(one stage that sleeps ``--seconds``, about a second by default: the trial's cost is the
measured sleep), with ``parallelism = N`` and ``--trials`` trials, and waits for it to end.

A worker's idle time is read from the store afterwards: for each worker, the gaps between
the end of one of its trials and the start of its next one (that is the time it spent
reporting, claiming and waiting for a proposal), over its working span (start of its first
trial to the end of its last). The spawn of the worker processes before their first trial
is not counted. It prints each worker's trials, busy and idle seconds and idle share, and
the largest share.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from api.cli.common import emit_json
from pipelines import Float, Pipeline, Stage

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = "bench.workers:sleepy"
SLEEP_ENV = "EEIPU_BENCH_SLEEP_SECONDS"
PG_DEFAULT = "postgresql://root@127.0.0.1:5432/test"


def _sleep_stage(parent: Any, x: float, y: float) -> dict[str, float]:
    """Sleep ``$EEIPU_BENCH_SLEEP_SECONDS`` (default 1 s); a smooth objective of ``x, y``."""
    time.sleep(float(os.environ.get(SLEEP_ENV, "1.0")))
    return {"value": -((x - 0.3) ** 2) - (y - 0.6) ** 2}


# The benchmark's pipeline, named ``bench.workers:sleepy`` (allowed by the server it starts).
sleepy = Pipeline(
    "sleepy",
    [Stage("sleep", _sleep_stage, {"x": Float(0.0, 1.0), "y": Float(0.0, 1.0)})],
    objective="value",
    direction="maximize",
    fingerprint="bench-sleepy",
    description="one stage that sleeps about a second (eeipu bench workers)",
)


def register(sub: Any) -> None:
    p = sub.add_parser("workers", help="idle time of the server's workers waiting for proposals")
    p.add_argument("--db", default="sqlite", help="'sqlite', 'postgresql' or a database URL")
    p.add_argument(
        "--postgres",
        default=PG_DEFAULT,
        help=f"PostgreSQL URL whose server gets a throw-away database (default {PG_DEFAULT})",
    )
    p.add_argument("--workers", type=int, default=8, help="local worker processes (default 8)")
    p.add_argument("--trials", type=int, default=80, help="trials of the study (default 80)")
    p.add_argument(
        "--seconds", type=float, default=1.0, help="seconds each trial sleeps (default 1.0)"
    )
    p.add_argument("--optimizer", default="eeipu", help="the study's optimizer (default eeipu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1200.0, help="give up after this many s")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def idle_shares(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per worker, from finished trials (``worker``, ``started_at``, ``finished_at``): trials,
    busy seconds, idle seconds between its trials, and idle share of its working span."""
    by: dict[str, list[tuple[float, float]]] = {}
    for t in trials:
        w, a, b = t.get("worker"), t.get("started_at"), t.get("finished_at")
        if w and a is not None and b is not None:
            by.setdefault(str(w), []).append((float(a), float(b)))
    out = []
    for w, spans in sorted(by.items()):
        spans.sort()
        busy = sum(b - a for a, b in spans)
        idle = sum(max(0.0, nxt[0] - cur[1]) for cur, nxt in itertools.pairwise(spans))
        span = spans[-1][1] - spans[0][0]
        out.append(
            {
                "worker": w,
                "trials": len(spans),
                "busy_seconds": round(busy, 3),
                "idle_seconds": round(idle, 3),
                "idle_share": round(idle / span, 4) if span > 0 else 0.0,
            }
        )
    return out


def _start_server(url: str, home: Path, workers: int, seconds: float) -> tuple[Any, str]:
    import httpx

    from bench.api_load import _free_port

    port = _free_port()
    env = dict(os.environ)
    env.pop("EEIPU_API_TOKEN", None)
    env["EEIPU_HOME"] = str(home)
    env["EEIPU_ALLOWED_PIPELINE_MODULES"] = "bench.workers"
    env[SLEEP_ENV] = str(seconds)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    args = [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--db", url]
    args += ["--cache", str(home / "cache"), "--workers", str(workers)]
    log = open(home / "server.log", "wb")  # noqa: SIM115 - kept open for the process
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {(home / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not become ready")


def _database(args: argparse.Namespace, home: Path) -> tuple[str, Callable[[], None]]:
    if args.db == "sqlite":
        return f"sqlite:///{home / 'workers.db'}", lambda: None
    if args.db == "postgresql":
        from bench.api_load import _pg_temp

        return _pg_temp(args.postgres)
    return str(args.db), lambda: None


def bench_workers(args: argparse.Namespace) -> dict[str, Any]:
    from api.client import Client

    with tempfile.TemporaryDirectory(prefix="eeipu-bench-workers-") as tmp:
        home = Path(tmp)
        url, cleanup = _database(args, home)
        try:
            proc, base = _start_server(url, home, args.workers, args.seconds)
            try:
                with Client(base, timeout=60) as cl:
                    t0 = time.monotonic()
                    st = cl.create_study(
                        PIPELINE,
                        1e6,  # trials end the study (the server's limit is 30 days)
                        args.optimizer,
                        max_trials=args.trials,
                        parallelism=args.workers,
                        seed=args.seed,
                    )
                    done = cl.wait(st.id, timeout=args.timeout)
                    wall = time.monotonic() - t0
                    trials: list[dict[str, Any]] = []
                    offset: int | None = 0
                    while offset is not None:
                        page = cl.request(
                            "GET",
                            f"/v1/studies/{st.id}/trials",
                            params={"limit": 1000, "offset": offset},
                        )
                        trials += page["items"]
                        offset = page.get("next_offset")
            finally:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        finally:
            cleanup()
    rows = idle_shares(trials)
    return {
        "db": args.db if args.db in ("sqlite", "postgresql") else "url",
        "workers": args.workers,
        "trials": args.trials,
        "seconds_per_trial": args.seconds,
        "optimizer": args.optimizer,
        "state": done.state,
        "n_complete": done.n_complete,
        "wall_seconds": round(wall, 2),
        "per_worker": rows,
        "max_idle_share": max((r["idle_share"] for r in rows), default=None),
    }


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.workers <= 64:
        raise ValueError("--workers must be 1..64")
    if not 1 <= args.trials <= 10_000:
        raise ValueError("--trials must be 1..10000")
    if not 0 <= args.seconds <= 60:
        raise ValueError("--seconds must be 0..60")
    res = bench_workers(args)
    if args.json:
        emit_json(res)
        return 0
    print(
        f"eeipu bench workers: {res['workers']} workers, {res['trials']} trials of "
        f"{res['seconds_per_trial']:g} s, {res['optimizer']}, {res['db']}: study {res['state']} "
        f"({res['n_complete']} complete) in {res['wall_seconds']:.1f} s"
    )
    print(f"{'worker':<40} {'trials':>6} {'busy s':>8} {'idle s':>8} {'idle':>7}")
    for r in res["per_worker"]:
        print(
            f"{r['worker'][-40:]:<40} {r['trials']:>6} {r['busy_seconds']:>8.2f} "
            f"{r['idle_seconds']:>8.2f} {100 * r['idle_share']:>6.1f}%"
        )
    share = res["max_idle_share"]
    print("max idle share: " + ("-" if share is None else f"{100 * share:.1f}%"))
    return 0
