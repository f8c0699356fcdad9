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
* ``cleanup_locks`` removes lock files nobody holds; ``prune_dirs`` removes empty folders.

Paths are checked HERE, in the public methods every backend inherits, before a subclass sees
them (``check_relpath``: plain segments only, so nothing can name a file outside the root),
and lock names are cache keys (``check_key``) or one of a few internal names. Subclasses check
again where they build real paths (containment in the root), so a path that slips past one
layer still cannot leave the cache.
"""

from __future__ import annotations

import contextlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from cache.keys import InvalidKey, check_key

__all__ = ["INTERNAL_LOCKS", "CacheBackend", "check_lock_name", "check_relpath"]

# Locks that guard the cache's own files rather than one key's computation.
INTERNAL_LOCKS = frozenset({"secret", "__evict__"})
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")
_MAX_PATH = 1024
Listing = list[tuple[str, int, float]]  # (relpath, size, mtime) of each file


def _shown(value: object) -> str:
    r = repr(value)
    return r if len(r) <= 80 else r[:77] + "..."


def check_relpath(relpath: object) -> str:
    """Return ``relpath`` if it is a safe relative path inside a backend, else ``InvalidKey``.

    Every segment must be a plain name (letters, digits, ``._-``, not starting with a dot):
    no ``..``, no absolute paths, no backslashes, no NUL bytes, no empty segments."""
    if (
        not isinstance(relpath, str)
        or not relpath
        or len(relpath) > _MAX_PATH
        or not all(_SEGMENT.fullmatch(seg) for seg in relpath.split("/"))
    ):
        raise InvalidKey(f"unsafe cache path {_shown(relpath)}: only plain relative names")
    return relpath


def check_lock_name(name: object) -> str:
    """Lock names become file names: a cache key, or one of ``INTERNAL_LOCKS``."""
    if isinstance(name, str) and name in INTERNAL_LOCKS:
        return name
    return check_key(name)


class CacheBackend(ABC):
    """Where cache files live. See the module docstring for the contract.

    Subclasses implement the underscored methods; the public ones check their arguments
    first, so no backend can forget to."""

    url: str

    # ------------------------------------------------------------------ checked entrances
    def write_atomic(
        self, relpath: str, chunks: Iterable[bytes | memoryview], durable: bool = True
    ) -> int:
        """Write the chunks to ``relpath`` atomically; return the bytes written.

        ``durable=False`` skips the fsync (advisory files: stats, leases)."""
        return self._write_atomic(check_relpath(relpath), chunks, durable)

    def open_read(self, relpath: str) -> BinaryIO:
        return self._open_read(check_relpath(relpath))

    def exists(self, relpath: str) -> bool:
        return self._exists(check_relpath(relpath))

    def delete(self, relpath: str) -> None:
        """Remove a file; a missing file is not an error."""
        self._delete(check_relpath(relpath))

    def list(self, reldir: str) -> Listing:
        return self._list(check_relpath(reldir))

    def lock(self, name: str, timeout: float = 600.0) -> contextlib.AbstractContextManager[None]:
        return self._lock(check_lock_name(name), timeout)

    def prune_dirs(self, reldir: str) -> int:
        """Remove the empty folders below ``reldir`` (not ``reldir`` itself); return how many."""
        return self._prune_dirs(check_relpath(reldir))

    def read_bytes(self, relpath: str) -> bytes:
        with self.open_read(relpath) as f:
            return f.read()

    def iter_files(self, reldir: str) -> Iterator[str]:
        for path, _, _ in self.list(reldir):
            yield path

    # ------------------------------------------------------------------ implementations
    @abstractmethod
    def _write_atomic(
        self, relpath: str, chunks: Iterable[bytes | memoryview], durable: bool
    ) -> int: ...

    @abstractmethod
    def _open_read(self, relpath: str) -> BinaryIO: ...

    @abstractmethod
    def _exists(self, relpath: str) -> bool: ...

    @abstractmethod
    def _delete(self, relpath: str) -> None: ...

    @abstractmethod
    def _list(self, reldir: str) -> Listing: ...

    @abstractmethod
    def _lock(self, name: str, timeout: float) -> contextlib.AbstractContextManager[None]: ...

    @abstractmethod
    def _prune_dirs(self, reldir: str) -> int: ...

    @abstractmethod
    def cleanup_tmp(self, older_than: float) -> int:
        """Delete temporary files older than ``older_than`` seconds; return how many."""

    @abstractmethod
    def cleanup_locks(self) -> int:
        """Delete lock files that no process holds now; return how many.

        Safe against a concurrent locker: a lock is only removed while this call holds it,
        and a locker that acquires an unlinked lock file retries on a fresh one."""
