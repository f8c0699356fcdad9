"""``eeipu bench api``: requests/s and p50/p99 latency of the REST API, SQLite and PostgreSQL.

For each database it starts ``eeipu serve`` (no workers) on a free loopback port, fills one
study with trials straight through the store (setup, not measured), then drives it with
``--clients`` concurrent keep-alive connections from a small asyncio HTTP/1.1 client (so the
client, not only the server, is cheap): ``GET /v1/studies/{id}``, ``GET .../trials`` (pages
of 100) and tell (each a different RUNNING trial, as a real client would). Loopback only; every
loop is bounded by ``--requests``.
"""

from __future__ import annotations

import argparse
import asyncio
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from api.cli.common import emit_json

ROOT = Path(__file__).resolve().parents[2]
PG_DEFAULT = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def register(sub: Any) -> None:
    p = sub.add_parser("api", help="REST API throughput and latency (SQLite and PostgreSQL)")
    p.add_argument(
        "--db",
        action="append",
        default=None,
        help="'sqlite', 'postgresql' or a database URL; repeat for several "
        "(default: sqlite and postgresql)",
    )
    p.add_argument("--postgres", default=PG_DEFAULT, help="admin URL to create a temp database")
    p.add_argument("--clients", type=int, default=32, help="concurrent connections (32)")
    p.add_argument("--requests", type=int, default=4000, help="requests per read endpoint")
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

    async def request(self, raw: bytes) -> int:
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
        if length:
            await self.r.readexactly(length)
        return status

    async def close(self) -> None:
        if self.w is not None:
            self.w.close()


def _get(host: str, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def _post(host: str, path: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data


async def _drive(
    host: str, port: int, make: Callable[[int], bytes], n: int, clients: int
) -> dict[str, Any]:
    lat: list[float] = []
    errors = 0
    kinds: dict[str, int] = {}
    counter = iter(range(n))

    async def client() -> None:
        nonlocal errors
        c = _Conn(host, port)
        try:
            for i in counter:
                t0 = time.perf_counter()
                try:
                    status = await c.request(make(i))
                except (OSError, asyncio.IncompleteReadError) as e:
                    errors += 1
                    kinds[type(e).__name__] = kinds.get(type(e).__name__, 0) + 1
                    await c.close()
                    c = _Conn(host, port)
                    continue
                lat.append(time.perf_counter() - t0)
                if status != 200:
                    errors += 1
                    kinds[str(status)] = kinds.get(str(status), 0) + 1
        finally:
            await c.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    lat.sort()
    return {
        "requests": n,
        "errors": errors,
        "error_kinds": kinds,
        "seconds": round(wall, 3),
        "rps": round(n / wall, 1),
        "p50_ms": round(1000 * statistics.median(lat), 2) if lat else None,
        "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2) if lat else None,
    }


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

    eng = create_engine(admin, isolation_level="AUTOCOMMIT")
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


def bench_one(db: str, args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    with tempfile.TemporaryDirectory(prefix="eeipu-bench-api-") as tmp:
        home = Path(tmp)
        cleanup: Callable[[], None] = lambda: None  # noqa: E731
        label = db
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
                body = {
                    "pipeline": "synthetic-3stage",
                    "optimizer": "random",
                    "budget_seconds": 1e6,
                    "mode": "external",
                }
                r = httpx.post(f"http://{host}/v1/studies", json=body, timeout=30)
                r.raise_for_status()
                sid = r.json()["id"]
                tells = _fill(url, sid, args.trials, args.tells)
                pages = max(1, args.trials // 100)
                study_req = _get(host, f"/v1/studies/{sid}")

                def trials_req(i: int) -> bytes:
                    return _get(
                        host, f"/v1/studies/{sid}/trials?limit=100&offset={100 * (i % pages)}"
                    )

                stages = [
                    {"stage": s, "cost_seconds": 0.5}
                    for s in ("s1_beale", "s2_hartmann3", "s3_branin")
                ]

                def tell_req(i: int) -> bytes:
                    return _post(
                        host,
                        f"/v1/studies/{sid}/trials/{tells[i]}/tell",
                        {"metrics": {"value": -float(i)}, "stages": stages, "worker": "bench"},
                    )

                async def all_phases() -> dict[str, Any]:
                    await _drive("127.0.0.1", port, lambda i: study_req, 200, args.clients)
                    out = {
                        "study": await _drive(
                            "127.0.0.1", port, lambda i: study_req, args.requests, args.clients
                        )
                    }
                    out["trials_page"] = await _drive(
                        "127.0.0.1", port, trials_req, args.requests, args.clients
                    )
                    out["tell"] = await _drive(
                        "127.0.0.1", port, tell_req, len(tells), args.clients
                    )
                    return out

                try:
                    import uvloop

                    res = uvloop.run(all_phases())
                except ImportError:
                    res = asyncio.run(all_phases())
                final = httpx.get(f"http://{host}/v1/studies/{sid}", timeout=30).json()
                res["check"] = {
                    "n_complete": final["n_complete"],
                    "expected": args.trials + len(tells),
                }
            finally:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        finally:
            cleanup()
    return {"db": label if db in ("sqlite", "postgresql") else "url", **res}


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.clients <= 1024:
        raise ValueError("--clients must be 1..1024")
    if not 1 <= args.http_workers <= 64:
        raise ValueError("--http-workers must be 1..64")
    if args.requests < 1 or args.tells < 1 or args.trials < 100:
        raise ValueError("--requests and --tells must be >= 1, --trials >= 100")
    dbs = args.db or ["sqlite", "postgresql"]
    results = [bench_one(db, args) for db in dbs]
    summary = {
        "clients": args.clients,
        "http_workers": args.http_workers,
        "trials_in_study": args.trials,
        "results": results,
    }
    if args.json:
        emit_json(summary)
        return 0
    print(
        f"eeipu bench api: {args.clients} concurrent clients, study with {args.trials} trials, "
        f"{args.http_workers} server process(es)"
    )
    print(f"{'db':<11} {'endpoint':<12} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for r in results:
        for ep in ("study", "trials_page", "tell"):
            m = r[ep]
            print(
                f"{r['db']:<11} {ep:<12} {m['rps']:>8.0f} {m['p50_ms']:>8.2f} "
                f"{m['p99_ms']:>8.2f} {m['errors']:>7}"
            )
    return 0
