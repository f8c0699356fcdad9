"""A shared backend on any fsspec filesystem (NFS mount, ``file://``, object stores...).

Several machines point at one URL. Atomicity comes from writing a temporary object and then
moving it into place (a rename on POSIX-like filesystems; on object stores a single-object
PUT is atomic too). Locks are lease directories created with an exclusive ``mkdir`` and broken
when older than their time-to-live, so a crashed holder cannot block the others forever.
"""

from __future__ import annotations

import contextlib
import posixpath
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO, cast

import fsspec

from cache.backends.base import CacheBackend, check_relpath
from cache.keys import InvalidKey


class FsspecBackend(CacheBackend):
    """Files under an fsspec URL such as ``file:///mnt/shared/cache`` or ``s3://bucket/c``."""

    def __init__(self, url: str, lock_ttl: float = 3600.0, **storage_options: Any) -> None:
        fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.fs = fs
        self.root = str(root).rstrip("/")
        self.url = url
        self.lock_ttl = lock_ttl
        self.fs.makedirs(self._p("tmp"), exist_ok=True)

    def _p(self, relpath: str) -> str:
        """The full path of ``relpath``, refused unless it stays under the root."""
        p = posixpath.normpath(f"{self.root}/{check_relpath(relpath)}")
        if not p.startswith(self.root + "/"):
            raise InvalidKey(f"cache path {relpath!r} resolves outside the cache root")
        return p

    def _write_atomic(
        self, relpath: str, chunks: Iterable[bytes | memoryview], durable: bool
    ) -> int:
        final = self._p(relpath)
        name = relpath.rsplit("/", 1)[-1]
        tmp = self._p(f"tmp/{name}.{uuid.uuid4().hex}.part")
        parent = final.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        n = 0
        try:
            with self.fs.open(tmp, "wb") as f:
                for c in chunks:
                    f.write(c)
                    n += len(c) if isinstance(c, bytes) else c.nbytes
            try:
                self.fs.mv(tmp, final)
            except FileNotFoundError:  # gc pruned the (empty) parent meanwhile: once more
                self.fs.makedirs(parent, exist_ok=True)
                self.fs.mv(tmp, final)
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm(tmp)
            raise
        return n

    def _open_read(self, relpath: str) -> BinaryIO:
        path = self._p(relpath)
        try:
            return cast(BinaryIO, self.fs.open(path, "rb"))
        except FileNotFoundError:
            raise
        except OSError as e:  # some filesystems raise a generic error for a missing object
            if not self.fs.exists(path):
                raise FileNotFoundError(path) from e
            raise

    def _exists(self, relpath: str) -> bool:
        return bool(self.fs.isfile(self._p(relpath)))

    def _delete(self, relpath: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._p(relpath))

    def _list(self, reldir: str) -> list[tuple[str, int, float]]:
        base = self._p(reldir)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return []
        out: list[tuple[str, int, float]] = []
        prefix = self.root + "/"
        for path, info in found.items():
            if info.get("type") != "file":
                continue
            rel = path[len(prefix) :] if path.startswith(prefix) else path
            mtime = info.get("mtime") or info.get("LastModified") or 0.0
            if not isinstance(mtime, int | float):
                try:
                    mtime = mtime.timestamp()
                except AttributeError:
                    mtime = 0.0
            out.append((rel, int(info.get("size") or 0), float(mtime)))
        return out

    @contextlib.contextmanager
    def _lease(self, name: str, timeout: float) -> Iterator[None]:
        path = self._p(f"locks/{name}.lockdir")
        self.fs.makedirs(self._p("locks"), exist_ok=True)
        deadline = time.monotonic() + timeout
        delay = 0.005
        vanished = 0
        while True:
            try:
                self.fs.mkdir(path, create_parents=False)
                break
            except (FileExistsError, OSError) as e:
                try:
                    info = self.fs.info(path)
                    mtime = info.get("mtime") or info.get("created") or time.time()
                    if time.time() - float(mtime) > self.lock_ttl:
                        with contextlib.suppress(Exception):
                            self.fs.rmdir(path)
                        continue
                except FileNotFoundError:
                    # Either the holder just released it, or the folder cannot be made at
                    # all (read-only or full filesystem): say so instead of spinning.
                    vanished += 1
                    if vanished >= 3 and not isinstance(e, FileExistsError):
                        raise e from None
                    continue
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not lock {name} within {timeout}s") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                self.fs.rmdir(path)

    def _lock(self, name: str, timeout: float) -> contextlib.AbstractContextManager[None]:
        return self._lease(name, timeout)

    def _prune_dirs(self, reldir: str) -> int:
        base = self._p(reldir)
        try:
            found = self.fs.find(base, withdirs=True, detail=True)
        except FileNotFoundError:
            return 0
        dirs = [p for p, i in found.items() if i.get("type") == "directory" and p != base]
        n = 0
        for d in sorted(dirs, key=lambda p: p.count("/"), reverse=True):
            try:
                if self.fs.ls(d, detail=False):
                    continue
                self.fs.rmdir(d)
                n += 1
            except (FileNotFoundError, OSError):
                continue
        return n

    def cleanup_locks(self) -> int:
        """Lock folders older than ``lock_ttl`` (what any locker would break anyway)."""
        now = time.time()
        n = 0
        try:
            found = self.fs.ls(self._p("locks"), detail=True)
        except FileNotFoundError:
            return 0
        for info in found:
            path = str(info.get("name", ""))
            if not path.endswith(".lockdir"):
                continue
            mtime = info.get("mtime") or info.get("created") or now
            if now - float(mtime) > self.lock_ttl:
                with contextlib.suppress(Exception):
                    self.fs.rmdir(path)
                    n += 1
        return n

    def cleanup_tmp(self, older_than: float) -> int:
        now = time.time()
        n = 0
        for rel, _, mtime in self.list("tmp"):
            if now - mtime >= older_than:
                self.delete(rel)
                n += 1
        return n
