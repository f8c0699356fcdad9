"""``eeipu bench api``: throughput, p50/p99 latency and server memory of the REST API.

For each database (PostgreSQL and SQLite) it starts ``eeipu serve`` (no workers) on a free
loopback port, creates one study through ``api.client.Client`` and fills it with trials
straight through the store (setup, not measured). Then, at each ``--clients`` level, it drives
the server with that many concurrent keep-alive connections over four workloads:

* ``study``: ``GET /v1/studies/{id}``, ``--requests`` times;
* ``trials_page``: ``GET .../trials`` (pages of 100), ``--requests`` times;
* ``tell``: tells of ``--tells`` RUNNING trials claimed at setup (a different one each);
* ``ask_tell``: ask+tell cycles, ``--requests / 2`` of them (``--requests`` requests): each
  client asks for a trial and tells its outcome, as an external worker does.

The server's resident memory (its process and its children) is read before the workloads
of each level and after each workload (``rss_mb``). ``api.client.Client`` is synchronous
(one blocking request at a time), so the measured loops use a small asyncio HTTP/1.1 client
instead: one cheap coroutine per connection keeps the client side from being what is
measured. Loopback only; every loop is bounded by its request count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from api.cli.common import emit_json

ROOT = Path(__file__).resolve().parents[1]
PG_DEFAULT = "postgresql://root@127.0.0.1:5432/test"
DEFAULT_CLIENTS = (32, 256)
STAGES = ("s1_beale", "s2_hartmann3", "s3_branin")
WORKLOADS = ("study", "trials_page", "tell", "ask_tell")


def register(sub: Any) -> None:
    p = sub.add_parser("api", help="REST API throughput and latency (SQLite and PostgreSQL)")
    p.add_argument(
        "--db",
        action="append",
        default=None,
        help="'sqlite', 'postgresql' or a database URL; repeat for several "
        "(default: sqlite and postgresql)",
    )
    p.add_argument(
        "--postgres",
        default=PG_DEFAULT,
        help="URL of a PostgreSQL database whose server gets a throw-away database for the "
        f"run (default {PG_DEFAULT})",
    )
    p.add_argument(
        "--clients",
        type=int,
        nargs="+",
        default=list(DEFAULT_CLIENTS),
        help="concurrent connections; several values run one level each (default 32 256)",
    )
    p.add_argument(
        "--requests",
        type=int,
        default=10000,
        help="requests per workload and level (ask_tell: half as many cycles; default 10000)",
    )
    p.add_argument("--tells", type=int, default=2000, help="tell requests (distinct trials)")
    p.add_argument("--trials", type=int, default=500, help="finished trials in the study")
    p.add_argument("--http-workers", type=int, default=1, help="server processes (default 1)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------ tiny client
class _Conn:
    """One keep-alive HTTP/1.1 connection (Content-Length responses only, as uvicorn sends)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.r: asyncio.StreamReader | None = None
        self.w: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send one request; its status and body."""
        if self.w is None:
            self.r, self.w = await asyncio.open_connection(self.host, self.port)
        assert self.r is not None
        self.w.write(raw)
        head = await self.r.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await self.r.readexactly(length) if length else b""
        return status, body

    async def close(self) -> None:
        if self.w is not None:
            self.w.close()
            self.w = None


def _get(host: str, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def _post(host: str, path: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data


class _Tally:
    """Latencies and errors of one workload."""

    def __init__(self) -> None:
        self.lat: list[float] = []
        self.errors = 0
        self.kinds: dict[str, int] = {}
        self.sent = 0

    def error(self, kind: str) -> None:
        self.errors += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    async def send(self, c: _Conn, raw: bytes) -> tuple[int, bytes] | None:
        """One timed request; ``None`` (counted as an error) if the connection broke."""
        self.sent += 1
        t0 = time.perf_counter()
        try:
            status, body = await c.request(raw)
        except (OSError, asyncio.IncompleteReadError) as e:
            self.error(type(e).__name__)
            await c.close()
            return None
        self.lat.append(time.perf_counter() - t0)
        if status != 200:
            self.error(str(status))
        return status, body


def _quantile_ms(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(1000 * s[min(len(s) - 1, int(q * len(s)))], 2)


def _figures(t: _Tally, n: int, wall: float) -> dict[str, Any]:
    return {
        "requests": n,
        "errors": t.errors,
        "error_kinds": t.kinds,
        "seconds": round(wall, 3),
        "rps": round(n / wall, 1),
        "p50_ms": round(1000 * statistics.median(t.lat), 2) if t.lat else None,
        "p99_ms": _quantile_ms(t.lat, 0.99),
    }


async def _clients(n: int, one: Callable[[_Conn], Awaitable[None]], host: str, port: int) -> float:
    """Run ``one`` on ``n`` connections at once; the wall time."""

    async def client() -> None:
        c = _Conn(host, port)
        try:
            await one(c)
        finally:
            await c.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(n)))
    return time.perf_counter() - t0


async def _drive(
    host: str, port: int, make: Callable[[int], bytes], n: int, clients: int
) -> dict[str, Any]:
    """``n`` requests ``make(0) .. make(n - 1)`` over ``clients`` connections."""
    tally = _Tally()
    counter = iter(range(n))

    async def one(c: _Conn) -> None:
        for i in counter:
            await tally.send(c, make(i))

    wall = await _clients(clients, one, host, port)
    return _figures(tally, n, wall)


async def _drive_ask_tell(
    host: str, port: int, sid: int, cycles: int, clients: int
) -> dict[str, Any]:
    """``cycles`` ask+tell cycles over ``clients`` connections (each client its own worker)."""
    tally = _Tally()
    cycle_lat: list[float] = []
    counter = iter(range(cycles))
    stages = [{"stage": s, "cost_seconds": 0.5} for s in STAGES]
    done = 0

    async def one(c: _Conn) -> None:
        nonlocal done
        worker = f"bench-{uuid.uuid4().hex[:8]}"
        ask = _post(host, f"/v1/studies/{sid}/ask", {"worker": worker})
        for i in counter:
            t0 = time.perf_counter()
            got = await tally.send(c, ask)
            if got is None or got[0] != 200:
                continue
            tid = int(json.loads(got[1])["id"])
            body = {"metrics": {"value": -float(i)}, "stages": stages, "worker": worker}
            told = await tally.send(c, _post(host, f"/v1/studies/{sid}/trials/{tid}/tell", body))
            if told is not None and told[0] == 200:
                cycle_lat.append(time.perf_counter() - t0)
                done += 1

    wall = await _clients(clients, one, host, port)
    out = _figures(tally, tally.sent, wall)
    out.update(
        cycles=cycles,
        completed_cycles=done,
        cycles_per_s=round(done / wall, 1),
        cycle_p50_ms=round(1000 * statistics.median(cycle_lat), 2) if cycle_lat else None,
        cycle_p99_ms=_quantile_ms(cycle_lat, 0.99),
    )
    return out


def _run_async(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coro

    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


def rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` and all its children, in MB (None if unreadable)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with dask.distributed
        return None
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
        total = 0
        for q in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += q.memory_info().rss
    except psutil.Error:
        return None
    return round(total / 1e6, 1)


# ------------------------------------------------------------------------------ setup
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(
    db: str, home: Path, http_workers: int = 1
) -> tuple[subprocess.Popen[bytes], int]:
    import httpx

    port = _free_port()
    env = dict(os.environ)
    env.pop("EEIPU_API_TOKEN", None)
    env["EEIPU_HOME"] = str(home)
    # The bench's trials are claimed at setup and told much later, by a "client" that does not
    # heartbeat: keep the reaper from (rightly) taking them back meanwhile.
    env["EEIPU_HEARTBEAT_TIMEOUT"] = "86400"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    args = [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--db", db]
    args += ["--cache", str(home / "cache"), "--workers", "0"]
    args += ["--http-workers", str(http_workers)]
    log = open(home / f"server-{port}.log", "wb")  # noqa: SIM115 - kept open for the process
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {(home / f'server-{port}.log').read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc, port
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not become ready")


def _fill(db: str, study_id: int, finished: int, running: int) -> list[int]:
    """Add finished trials (with stage runs) and RUNNING ones for tells; returns the latter."""
    from api.store import NewTrial, StageRun, TrialResult, TrialState, open_store
    from pipelines import get_pipeline

    pipe = get_pipeline("synthetic-3stage")
    rng = random.Random(0)
    store = open_store(db, run_migrations=False, pool_size=2)
    try:
        st = store.get_study(study_id)
        assert st is not None
        new = [NewTrial(pipe.space.sample(rng)) for _ in range(finished + running)]
        added = store.add_trials(study_id, new, st.optimizer_state, st.ask_version)
        assert added is not None
        ids = []
        for _ in added:
            c = store.claim_trial("bench", study_id=study_id)
            assert c is not None
            ids.append(c.id)
        for tid in ids[:finished]:
            stages = [
                StageRun(s, i, key=uuid.uuid4().hex, cost_seconds=1.0)
                for i, s in enumerate(pipe.stage_names)
            ]
            v = rng.uniform(-100, 0)
            store.finish_trial(
                tid, "bench", TrialResult(TrialState.COMPLETE, {"value": v}, v, 3.0, 0, stages)
            )
        return ids[finished:]
    finally:
        store.close()


def _pg_temp(admin: str) -> tuple[str, Callable[[], None]]:
    from sqlalchemy import create_engine, text

    from api.store.sql import normalize_url

    eng = create_engine(normalize_url(admin), isolation_level="AUTOCOMMIT")
    name = f"eeipu_bench_{uuid.uuid4().hex[:10]}"
    try:
        with eng.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:
        raise ValueError(f"cannot create a PostgreSQL database via {admin}: {e}") from None

    def drop() -> None:
        with eng.connect() as c:
            c.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        eng.dispose()

    return admin.rsplit("/", 1)[0] + "/" + name, drop


def _level(
    host: str, port: int, pid: int, sid: int, tells: list[int], pages: int, clients: int, n: int
) -> dict[str, Any]:
    """The four workloads at one concurrency level, with the server's RSS around them."""
    study_req = _get(host, f"/v1/studies/{sid}")
    stages = [{"stage": s, "cost_seconds": 0.5} for s in STAGES]

    def trials_req(i: int) -> bytes:
        return _get(host, f"/v1/studies/{sid}/trials?limit=100&offset={100 * (i % pages)}")

    def tell_req(i: int) -> bytes:
        body = {"metrics": {"value": -float(i)}, "stages": stages, "worker": "bench"}
        return _post(host, f"/v1/studies/{sid}/trials/{tells[i]}/tell", body)

    async def phases() -> dict[str, Any]:
        lp = "127.0.0.1"
        await _drive(lp, port, lambda i: study_req, 200, clients)  # warm-up
        rss = {"before": rss_mb(pid)}
        out: dict[str, Any] = {"clients": clients}
        out["study"] = await _drive(lp, port, lambda i: study_req, n, clients)
        rss["after_study"] = rss_mb(pid)
        out["trials_page"] = await _drive(lp, port, trials_req, n, clients)
        rss["after_trials_page"] = rss_mb(pid)
        out["tell"] = await _drive(lp, port, tell_req, len(tells), clients)
        rss["after_tell"] = rss_mb(pid)
        out["ask_tell"] = await _drive_ask_tell(lp, port, sid, max(1, n // 2), clients)
        rss["after"] = rss_mb(pid)
        out["rss_mb"] = rss
        return out

    res: dict[str, Any] = _run_async(phases())
    return res


def bench_one(db: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every ``--clients`` level against one fresh server on ``db``; one result per level."""
    from api.client import Client

    label = db if db in ("sqlite", "postgresql") else "url"
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="eeipu-bench-api-") as tmp:
        home = Path(tmp)
        cleanup: Callable[[], None] = lambda: None  # noqa: E731
        if db == "sqlite":
            url = f"sqlite:///{home / 'bench.db'}"
        elif db == "postgresql":
            url, cleanup = _pg_temp(args.postgres)
        else:
            url = db
        try:
            proc, port = _start_server(url, home, args.http_workers)
            try:
                host = f"127.0.0.1:{port}"
                with Client(f"http://{host}", timeout=60) as cl:
                    sid = cl.create_study("synthetic-3stage", 1e6, "random", mode="external").id
                    pages = max(1, args.trials // 100)
                    expected = args.trials
                    for i, clients in enumerate(args.clients):
                        tells = _fill(url, sid, args.trials if i == 0 else 0, args.tells)
                        before = cl.study(sid).n_complete
                        r = _level(host, port, proc.pid, sid, tells, pages, clients, args.requests)
                        expected = before + len(tells) + r["ask_tell"]["completed_cycles"]
                        r["check"] = {
                            "n_complete": cl.study(sid).n_complete,
                            "expected": expected,
                        }
                        results.append({"db": label, **r})
            finally:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        finally:
            cleanup()
    return results


def run(args: argparse.Namespace) -> int:
    if not args.clients or not all(1 <= c <= 1024 for c in args.clients):
        raise ValueError("--clients must be 1..1024")
    if not 1 <= args.http_workers <= 64:
        raise ValueError("--http-workers must be 1..64")
    if args.requests < 2 or args.tells < 1 or args.trials < 100:
        raise ValueError("--requests must be >= 2, --tells >= 1, --trials >= 100")
    dbs = args.db or ["sqlite", "postgresql"]
    results = [r for db in dbs for r in bench_one(db, args)]
    summary = {
        "clients": list(args.clients),
        "http_workers": args.http_workers,
        "requests": args.requests,
        "trials_in_study": args.trials,
        "results": results,
    }
    if args.json:
        emit_json(summary)
        return 0
    print(
        f"eeipu bench api: {' and '.join(map(str, args.clients))} concurrent clients, study "
        f"with {args.trials} trials, {args.http_workers} server process(es)"
    )
    print(
        f"{'db':<11} {'clients':>7} {'workload':<12} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>7}"
    )
    for r in results:
        for ep in WORKLOADS:
            m = r[ep]
            p50 = "-" if m["p50_ms"] is None else f"{m['p50_ms']:.2f}"
            p99 = "-" if m["p99_ms"] is None else f"{m['p99_ms']:.2f}"
            print(
                f"{r['db']:<11} {r['clients']:>7} {ep:<12} {m['rps']:>8.0f} {p50:>8} {p99:>8} "
                f"{m['errors']:>7}"
            )
        rss = r["rss_mb"]
        print(
            f"{r['db']:<11} {r['clients']:>7} server RSS {rss['before']} MB before, "
            f"{rss['after']} MB after; trials complete {r['check']['n_complete']} "
            f"(expected {r['check']['expected']})"
        )
    return 0
