"""Starting the real server (``eeipu serve``) in a subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from api.client import Client, ClientError

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    proc: subprocess.Popen[bytes]
    args: list[str]
    env: dict[str, str]
    log: Path
    token: str | None = None
    # Raw HTTP, for tests of status codes and bodies; ``api_client`` for everything else.
    client: httpx.Client = field(init=False)
    api_client: Client = field(init=False)

    def __post_init__(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        self.api_client = Client(self.url, token=self.token)

    def close_clients(self) -> None:
        self.client.close()
        self.api_client.close()

    def kill(self) -> None:
        """SIGKILL the server (its worker processes notice and exit on their own)."""
        self.close_clients()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        self.close_clients()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_study(self, study_id: int, timeout: float = 90.0) -> dict[str, Any]:
        """Poll until the study leaves ``running`` (a bound, not a timing assertion)."""
        try:
            return self.api_client.wait(study_id, timeout=timeout, poll=0.1).to_dict()
        except TimeoutError:
            raise AssertionError(
                f"study {study_id} still running; server log:\n{self.output()}"
            ) from None


def _ready(url: str) -> bool:
    with Client(url, timeout=2) as c:
        try:
            return c.request("GET", "/readyz") is not None
        except ClientError:  # not listening yet, or not ready (503)
            return False


def start_server(
    tmp: Path,
    db_url: str,
    workers: int = 2,
    token: str | None = None,
    extra_env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    cache: str | None = None,
    port: int | None = None,
) -> LiveServer:
    port = port or free_port()
    env = dict(os.environ)
    env.pop("EEIPU_API_TOKEN", None)
    env.update(
        {
            "EEIPU_HOME": str(tmp / "home"),
            "EEIPU_HEARTBEAT_INTERVAL": "0.2",
            "EEIPU_HEARTBEAT_TIMEOUT": "3",
            "EEIPU_SCHEDULER_INTERVAL": "0.05",
            "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        }
    )
    if token:
        env["EEIPU_API_TOKEN"] = token
    env.update(extra_env or {})
    args = [
        sys.executable,
        "-m",
        "api.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--db",
        db_url,
        "--cache",
        cache or str(tmp / "cache"),
        "--workers",
        str(workers),
        *(extra_args or []),
    ]
    log = tmp / f"server-{port}-{time.time_ns()}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(args, env=env, cwd=str(ROOT), stdout=fh, stderr=subprocess.STDOUT)
    srv = LiveServer(f"http://127.0.0.1:{port}", proc, args, env, log, token)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{srv.output()}")
        if _ready(srv.url):
            return srv
        time.sleep(0.1)
    srv.stop()
    raise RuntimeError(f"server did not become ready:\n{srv.output()}")


def restart(srv: LiveServer) -> LiveServer:
    """Start the same server again (same port, database and cache)."""
    env = srv.env
    with open(srv.log, "ab") as fh:
        proc = subprocess.Popen(
            srv.args, env=env, cwd=str(ROOT), stdout=fh, stderr=subprocess.STDOUT
        )
    new = LiveServer(srv.url, proc, srv.args, env, srv.log, srv.token)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{new.output()}")
        if _ready(new.url):
            return new
        time.sleep(0.1)
    new.stop()
    raise RuntimeError("server did not come back")
