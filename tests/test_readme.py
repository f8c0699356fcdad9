"""The README's examples run as written: its Python blocks, its CLI lines and its curl calls."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api._server import LiveServer, start_server

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
EXAMPLE_URL = "http://127.0.0.1:8765"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    text = block.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.split("  #")[0].strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def env_for(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["EEIPU_HOME"] = str(tmp / "home")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def eeipu_argv(cmd: str) -> list[str]:
    argv = shlex.split(cmd)
    assert argv[0] == ".venv/bin/eeipu", cmd
    return [sys.executable, "-m", "api.cli", *argv[1:]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("readme-server")
    srv = start_server(tmp, f"sqlite:///{tmp / 'eeipu.db'}", workers=1)
    yield srv
    srv.stop()


def test_the_first_two_commands_are_setup_and_tests() -> None:
    first = commands(blocks("bash")[0])
    assert len(first) == 2 and first[1] == "bash scripts/test.sh"
    setup, job = first[0].split(" && ")
    assert setup == "bash scripts/setup.sh"
    # the main job: the unlearning pipeline on the embedded defaults (SQLite file, local cache)
    assert job.startswith(".venv/bin/eeipu tune forget-mi ") and job.endswith(" --db")
    assert "--budget " in job and "--cache" not in job
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_quick_start_cli_lines_run(tmp_path: Path) -> None:
    lines = commands(blocks("bash")[1])
    assert len(lines) >= 5
    for line in lines:
        r = subprocess.run(
            eeipu_argv(line), cwd=tmp_path, env=env_for(tmp_path), capture_output=True, timeout=600
        )
        assert r.returncode == 0, (line, r.stderr.decode()[-2000:])
        if "--json" in line:
            json.loads(r.stdout.decode().strip().splitlines()[-1])


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_service_example_runs(server: LiveServer, tmp_path: Path) -> None:
    lines = commands(blocks("bash")[2])
    assert lines[0].startswith(".venv/bin/eeipu serve")
    hostport = server.url.removeprefix("http://")
    for line in lines[1:]:
        argv = [a.replace("localhost:8765", hostport) for a in shlex.split(line)]
        assert argv[0] == "curl"
        if argv[-1].endswith("/best"):
            server.wait_study(1, timeout=300)
        r = subprocess.run([*argv, "--fail-with-body"], capture_output=True, timeout=60)
        assert r.returncode == 0, (line, r.stdout.decode(), r.stderr.decode())
        body = json.loads(r.stdout)
        assert isinstance(body, dict)
    assert body["value"] is not None


def test_python_client_example_runs(server: LiveServer, tmp_path: Path) -> None:
    code = next(b for b in blocks("python") if "api.client" in b)
    code = code.replace(EXAMPLE_URL, server.url)
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env_for(tmp_path),
        capture_output=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    value = float(r.stdout.decode().split()[0])
    assert value == value  # a real number, not NaN


def test_own_pipeline_example_runs_and_reuses(tmp_path: Path) -> None:
    code = next(b for b in blocks("python") if "Pipeline(" in b)
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env_for(tmp_path),
        capture_output=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert r.stdout.decode().strip().endswith(" 3")  # the second run reused all three stages
    assert (tmp_path / "eeipu-data" / "toy-cache").is_dir()
