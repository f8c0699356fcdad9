"""Storage backends for the stage cache.

A backend is a flat namespace of files under one root, addressed by relative POSIX paths. The
cache's guarantees rest on this contract, which every backend must honour and which the ONE
conformance suite in ``tests/cache/test_conformance.py`` checks against each of them:

* ``write_atomic`` makes a file appear whole or not at all: it writes under ``tmp/`` and then
  renames, so readers never see a partial file, and a writer killed mid-way leaves only a
  temporary file that listings ignore and ``cleanup_tmp`` removes.
* ``open_read`` raises ``FileNotFoundError`` for a missing file.
* ``list`` returns ``(relpath, size, mtime)`` for the files under a directory, recursively.
* ``lock`` is a mutual-exclusion context across processes (and, for shared backends, across
  machines as far as the filesystem allows), used so that one key is computed once.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import BinaryIO


class CacheBackend(ABC):
    """Where cache files live. See the module docstring for the contract."""

    url: str

    @abstractmethod
    def write_atomic(
        self, relpath: str, chunks: Iterable[bytes | memoryview], durable: bool = True
    ) -> int:
        """Write the chunks to ``relpath`` atomically; return the bytes written.

        ``durable=False`` skips the fsync (advisory files: stats, leases)."""

    @abstractmethod
    def open_read(self, relpath: str) -> BinaryIO: ...

    @abstractmethod
    def exists(self, relpath: str) -> bool: ...

    @abstractmethod
    def delete(self, relpath: str) -> None:
        """Remove a file; a missing file is not an error."""

    @abstractmethod
    def list(self, reldir: str) -> list[tuple[str, int, float]]: ...

    @abstractmethod
    def lock(
        self, name: str, timeout: float = 600.0
    ) -> contextlib.AbstractContextManager[None]: ...

    @abstractmethod
    def cleanup_tmp(self, older_than: float) -> int:
        """Delete temporary files older than ``older_than`` seconds; return how many."""

    def read_bytes(self, relpath: str) -> bytes:
        with self.open_read(relpath) as f:
            return f.read()

    def iter_files(self, reldir: str) -> Iterator[str]:
        for path, _, _ in self.list(reldir):
            yield path
