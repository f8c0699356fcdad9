"""The default backend: a directory on the local filesystem."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock, Timeout

from cache.backends.base import CacheBackend, check_relpath
from cache.keys import InvalidKey


class LocalBackend(CacheBackend):
    """Files under ``root``; atomic via ``os.replace``; locks via ``filelock``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        self.url = str(self.root)
        self._prefix = str(self.root).rstrip(os.sep) + os.sep

    def _p(self, relpath: str) -> Path:
        """The real path of ``relpath``, refused unless it lies inside the root (after
        resolving symlinks), whatever reached this point."""
        p = os.path.realpath(os.path.join(self.root, check_relpath(relpath)))
        if not p.startswith(self._prefix):
            raise InvalidKey(f"cache path {relpath!r} resolves outside the cache root")
        return Path(p)

    def _write_atomic(
        self, relpath: str, chunks: Iterable[bytes | memoryview], durable: bool
    ) -> int:
        final = self._p(relpath)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._p(f"tmp/{final.name}.{os.getpid()}.{uuid.uuid4().hex}.part")
        n = 0
        try:
            with open(tmp, "wb") as f:
                for c in chunks:
                    f.write(c)
                    n += len(c) if isinstance(c, bytes) else c.nbytes
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            try:
                os.replace(tmp, final)
            except FileNotFoundError:  # gc pruned the (empty) parent meanwhile: once more
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return n

    def _open_read(self, relpath: str) -> BinaryIO:
        return open(self._p(relpath), "rb", buffering=0)

    def _exists(self, relpath: str) -> bool:
        return self._p(relpath).is_file()

    def _delete(self, relpath: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._p(relpath).unlink()

    def _list(self, reldir: str) -> list[tuple[str, int, float]]:
        base = self._p(reldir)
        out: list[tuple[str, int, float]] = []
        if not base.is_dir():
            return out
        stack = [base]
        while stack:
            d = stack.pop()
            try:
                it = os.scandir(d)
            except FileNotFoundError:
                continue
            with it:
                for e in it:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(Path(e.path))
                        elif e.is_file(follow_symlinks=False):
                            st = e.stat()
                            rel = os.path.relpath(e.path, self.root).replace(os.sep, "/")
                            out.append((rel, st.st_size, st.st_mtime))
                    except FileNotFoundError:
                        continue
        return out

    def _lock_path(self, name: str) -> Path:
        return self._p(f"locks/{name}.lock")

    def _lock(self, name: str, timeout: float) -> contextlib.AbstractContextManager[None]:
        path = self._lock_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return _FileLockCtx(FileLock(str(path), timeout=timeout))

    def _prune_dirs(self, reldir: str) -> int:
        top = os.fspath(self._p(reldir))
        n = 0
        for d, _, _ in os.walk(top, topdown=False):
            if d == top:
                continue
            try:
                os.rmdir(d)  # fails (and is skipped) unless the folder is empty
                n += 1
            except OSError:
                continue
        return n

    def cleanup_tmp(self, older_than: float) -> int:
        now = time.time()
        n = 0
        for rel, _, mtime in self.list("tmp"):
            if now - mtime >= older_than:
                self.delete(rel)
                n += 1
        return n

    def cleanup_locks(self) -> int:
        n = 0
        for rel, _, _ in self.list("locks"):
            if not rel.endswith(".lock"):
                continue
            path = self._p(rel)
            lock = FileLock(str(path), timeout=0)
            try:
                lock.acquire()
            except (Timeout, OSError):
                continue  # held by someone (or unreadable): leave it
            try:
                # Unlinked while we hold it: a waiter that then gets this inode sees it has no
                # name any more and takes a fresh file (filelock checks ``st_nlink``).
                path.unlink(missing_ok=True)
                n += 1
            finally:
                lock.release()
        return n


class _FileLockCtx(contextlib.AbstractContextManager[None]):
    def __init__(self, lock: FileLock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
