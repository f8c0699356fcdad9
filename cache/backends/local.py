"""The default backend: a directory on the local filesystem."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock

from cache.backends.base import CacheBackend


class LocalBackend(CacheBackend):
    """Files under ``root``; atomic via ``os.replace``; locks via ``filelock``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        self.url = str(self.root)

    def _p(self, relpath: str) -> Path:
        return self.root / relpath

    def write_atomic(
        self, relpath: str, chunks: Iterable[bytes | memoryview], durable: bool = True
    ) -> int:
        final = self._p(relpath)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.root / "tmp" / f"{final.name}.{os.getpid()}.{uuid.uuid4().hex}.part"
        n = 0
        try:
            with open(tmp, "wb") as f:
                for c in chunks:
                    f.write(c)
                    n += len(c) if isinstance(c, bytes) else c.nbytes
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return n

    def open_read(self, relpath: str) -> BinaryIO:
        return open(self._p(relpath), "rb", buffering=0)

    def exists(self, relpath: str) -> bool:
        return self._p(relpath).is_file()

    def delete(self, relpath: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._p(relpath).unlink()

    def list(self, reldir: str) -> list[tuple[str, int, float]]:
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

    def lock(self, name: str, timeout: float = 600.0) -> contextlib.AbstractContextManager[None]:
        path = self.root / "locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return _FileLockCtx(FileLock(str(path), timeout=timeout))

    def cleanup_tmp(self, older_than: float) -> int:
        now = time.time()
        n = 0
        for rel, _, mtime in self.list("tmp"):
            if now - mtime >= older_than:
                self.delete(rel)
                n += 1
        return n


class _FileLockCtx(contextlib.AbstractContextManager[None]):
    def __init__(self, lock: FileLock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
