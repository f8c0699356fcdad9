"""Where trials run: local worker processes (default) or a Dask distributed cluster.

``Executor`` is the contract: ``start()`` begins taking WAITING trials of managed studies from
the store and reporting them; ``stop()`` ends that (trials in hand finish, or are released);
``describe()`` is plain data for ``GET /v1/workers``. Whatever an executor does, the store
stays the source of truth: a trial whose executor vanished is found by its stale heartbeat.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class Executor(ABC):
    """Runs trials claimed from the store; see the package docstring for the contract."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self, timeout: float = 10.0) -> None: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]: ...

    @property
    @abstractmethod
    def capacity(self) -> int:
        """How many trials it can run at once (the default parallelism of a study)."""


class NoExecutor(Executor):
    """No workers in this server: trials are run by ``eeipu worker`` processes or clients."""

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 10.0) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"kind": "none", "workers": []}

    @property
    def capacity(self) -> int:
        return 1
