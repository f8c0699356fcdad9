"""Shared fixtures: every test gets its own data directory (no state leaks between tests)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("EEIPU_HOME", str(tmp_path / "eeipu-home"))
    monkeypatch.delenv("EEIPU_CACHE", raising=False)
    monkeypatch.delenv("EEIPU_DB", raising=False)
    yield
