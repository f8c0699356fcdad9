"""The stage cache: exact keys in, verified outputs out, with metadata, leases and eviction.

Files under the backend's root::

    objects/<k[:2]>/<key>.entry     one file per entry; its header holds ALL static metadata
    stats/<k[:2]>/<key>.json        hits, last use, measured load time (advisory)
    leases/<key>/<token>.json       "in use by <host, pid>, refreshed at <t>": pins eviction
                                    respects while the holder lives and keeps refreshing
    locks/                          compute locks (one key computed once); ``gc`` removes the
                                    ones nobody holds
    tmp/                            partial writes; never listed, removed by ``gc``
    secret.key                      the MAC key that proves an entry was written by this cache

Because an entry's metadata lives inside its own file, a listed entry always has its file and
an entry file is always listed: metadata and blobs cannot drift apart, whatever is interrupted.
Stats files are advisory; a stats file whose entry is gone is invisible and ``gc`` removes it.

Eviction keeps what is most expensive to recompute per byte: when the total exceeds
``max_bytes``, entries are removed in increasing order of ``compute_cost / bytes`` (least
recently used first among equals), skipping every entry that holds a live lease.

Writing is best effort where it is only an optimisation: a full or read-only cache still
serves hits (stats and leases that cannot be written are skipped), ``try_put`` reports why an
output could not be stored instead of failing the caller, and ``check_writable`` probes it.
Every key is checked (``check_key``) before it names a file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from cache import format as fmt
from cache.backends import CacheBackend, backend_for
from cache.keys import check_key

log = logging.getLogger(__name__)

DEFAULT_READ_BANDWIDTH = 1.0e9  # bytes/s, used until loads have been measured
LOAD_OVERHEAD_S = 1e-3
DEFAULT_LEASE_TTL = 120.0  # seconds; holders refresh their leases every quarter of this
_PROBE = bytes(4096)
_NO_STATS = (-1, -1.0)  # a listing's stamp for an entry that has no stats file yet


def describe_os_error(e: OSError) -> str:
    """A short reason without file paths (it may reach users and readiness probes)."""
    if e.errno is not None:
        name = errno.errorcode.get(e.errno, str(e.errno))
        return f"{e.strerror or os.strerror(e.errno)} [{name}]"
    return str(e) or type(e).__name__


class CacheUnwritable(OSError):
    """The cache cannot store entries now (e.g. its secret could not be created)."""


def _proc_start(pid: int) -> str | None:
    """The start time of a process (Linux ``/proc``), so a reused pid is told apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else None


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _process_alive(pid: int, start: object) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    now_start = _proc_start(pid)
    return not (isinstance(start, str) and now_start is not None and now_start != start)


def _is_key(value: object) -> bool:
    try:
        check_key(value)
    except ValueError:
        return False
    return True


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


@dataclass
class EntryInfo:
    """What the cache knows about one entry (plain data; JSON-serialisable via ``asdict``)."""

    key: str
    pipeline: str
    stage: str
    params: dict[str, Any]
    parent: str
    bytes: int
    compute_cost: float
    created: float
    last_used: float
    hits: int = 0
    load_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Hit:
    value: Any
    info: EntryInfo
    load_seconds: float


class StageCache:
    """Content store for stage outputs keyed by ``cache.keys.stage_key``.

    Args:
        backend: where files live (``LocalBackend`` or ``FsspecBackend``), or a path / URL.
        max_bytes: size budget; ``None`` means unbounded (``gc`` can still be asked to trim).
        lease_ttl: seconds a pin outlives its last refresh. Holders refresh every
            ``lease_ttl / 4``, so a pin lasts while its holder lives and ends soon after it
            dies (at once, for a dead process on this host).
    """

    def __init__(
        self,
        backend: CacheBackend | str | os.PathLike[str],
        max_bytes: int | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL,
    ) -> None:
        if not (math.isfinite(lease_ttl) and lease_ttl > 0):
            raise ValueError(f"lease_ttl must be a finite number > 0, got {lease_ttl!r}")
        self.backend = backend if isinstance(backend, CacheBackend) else backend_for(str(backend))
        self.max_bytes = max_bytes
        self.lease_ttl = float(lease_ttl)
        self.host = socket.gethostname()
        self._pidns = _pid_namespace()
        self.owner = f"{self.host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.events: list[str] = []  # human-readable warnings (corruption, evictions) for reports
        # Why the secret could not be stored (full or read-only cache); entries are then not
        # written, since no other process could verify them.
        self._unwritable: str | None = None
        self._secret = self._load_secret()
        # Headers are immutable for a key (same key, same bytes), so listing can skip re-reading
        # them; presence is always taken from the backend's listing, never from this memo.
        self._headers: dict[str, dict[str, Any]] = {}
        # Each entry's stats (hits, last use, load time) with the (size, mtime) of the file
        # they were read from: a listing of the stats folder says which changed since.
        self._stats_memo: dict[str, tuple[tuple[int, float], dict[str, Any]]] = {}
        # Lease files this process holds, refreshed by one background thread while any exist.
        self._held: set[str] = set()
        self._held_lock = threading.Lock()
        self._keeper: threading.Thread | None = None

    # ------------------------------------------------------------------ paths and secret
    @staticmethod
    def _obj(key: str) -> str:
        k = check_key(key)
        return f"objects/{k[:2]}/{k}.entry"

    @staticmethod
    def _stats(key: str) -> str:
        k = check_key(key)
        return f"stats/{k[:2]}/{k}.json"

    def _warn(self, msg: str) -> None:
        log.warning(msg)
        self.events.append(msg)

    def _load_secret(self) -> bytes:
        with contextlib.suppress(FileNotFoundError):
            s = self.backend.read_bytes("secret.key")
            if len(s) >= 32:
                return s
        try:
            with self.backend.lock("secret"):
                with contextlib.suppress(FileNotFoundError):
                    s = self.backend.read_bytes("secret.key")
                    if len(s) >= 32:
                        return s
                s = secrets.token_bytes(32)
                self.backend.write_atomic("secret.key", [s])
                self._unwritable = None
                return s
        except OSError as e:
            if isinstance(e, TimeoutError):
                raise
            self._unwritable = f"cannot create the cache secret: {describe_os_error(e)}"
            self._warn(f"cache is read-only for now ({self._unwritable})")
            return secrets.token_bytes(32)  # matches no entry: nothing is trusted or written

    def check_writable(self) -> str | None:
        """None when a small probe file can be written and removed, else why not (for
        readiness checks: a full or read-only cache still serves hits, but stores nothing)."""
        if self._unwritable is not None:
            self._secret = self._load_secret()
            if self._unwritable is not None:
                return self._unwritable
        rel = f"tmp/probe.{os.getpid()}.{uuid.uuid4().hex}"
        try:
            self.backend.write_atomic(rel, [_PROBE])
            self.backend.delete(rel)
        except OSError as e:
            with contextlib.suppress(OSError):
                self.backend.delete(rel)
            return f"cache is not writable: {describe_os_error(e)}"
        return None

    # ------------------------------------------------------------------ read
    def contains(self, key: str) -> bool:
        return self.backend.exists(self._obj(key))

    def info(
        self, key: str, listed: bool = False, stats_stamp: tuple[int, float] | None = None
    ) -> EntryInfo | None:
        """Metadata of one entry (header only, nothing unpickled), or None if absent/corrupt.

        ``listed=True`` means the caller has just seen the file in a listing, so a memoised
        header may be used instead of opening it again; ``stats_stamp``: the (size, mtime)
        the same listing gave the entry's stats file, so memoised stats may be used too."""
        rel = self._obj(key)
        if listed and key in self._headers:
            return self._info_from(self._headers[key], key, self._listed_stats(key, stats_stamp))
        try:
            with self.backend.open_read(rel) as f:
                header, _ = fmt.read_header(f, self._secret, key)
        except FileNotFoundError:
            return None
        except fmt.CorruptEntry as e:
            self._drop_corrupt(key, str(e))
            return None
        self._headers[key] = header
        return self._info_from(header, key, self._listed_stats(key, stats_stamp))

    def _info_from(
        self, header: Mapping[str, Any], key: str, stats: Mapping[str, Any] | None = None
    ) -> EntryInfo:
        m = header["meta"]
        st = self._read_stats(key) if stats is None else stats
        created = float(m.get("created", 0.0))
        return EntryInfo(
            key=key,
            pipeline=str(m.get("pipeline", "")),
            stage=str(m.get("stage", "")),
            params=dict(m.get("params", {})),
            parent=str(m.get("parent", "")),
            bytes=int(m.get("bytes", header.get("payload_bytes", 0))),
            compute_cost=float(m.get("compute_cost", 0.0)),
            created=created,
            last_used=float(st.get("last_used", created)),
            hits=int(st.get("hits", 0)),
            load_seconds=st.get("load_seconds"),
            extra=dict(m.get("extra", {})),
        )

    def _listed_stats(self, key: str, stamp: tuple[int, float] | None) -> dict[str, Any] | None:
        """The stats of ``key`` from the memo when the listing's ``stamp`` matches it
        (``None``: read them)."""
        if stamp is None:
            return None
        if stamp == _NO_STATS:
            return {}
        memo = self._stats_memo.get(key)
        if memo is not None and memo[0] == stamp:
            return memo[1]
        st = self._read_stats(key)
        self._stats_memo[key] = (stamp, st)
        return st

    def _read_stats(self, key: str) -> dict[str, Any]:
        try:
            d = json.loads(self.backend.read_bytes(self._stats(key)))
            return d if isinstance(d, dict) else {}
        except (FileNotFoundError, ValueError):
            return {}

    def _touch(self, key: str, load_seconds: float | None) -> dict[str, Any]:
        st = self._read_stats(key)
        st["hits"] = int(st.get("hits", 0)) + 1
        st["last_used"] = time.time()
        if load_seconds is not None:
            prev = st.get("load_seconds")
            st["load_seconds"] = (
                load_seconds if prev is None else 0.5 * float(prev) + 0.5 * load_seconds
            )
        with contextlib.suppress(OSError):  # advisory: a full disk must not spoil a hit
            self.backend.write_atomic(self._stats(key), [json.dumps(st).encode()], durable=False)
        return st

    def get(self, key: str) -> Hit | None:
        """Load an entry, verifying it; a corrupt entry is reported, dropped and a miss."""
        rel = self._obj(key)
        t0 = time.perf_counter()
        try:
            with self.backend.open_read(rel) as f:
                value, header = fmt.decode(f, self._secret, key)
        except FileNotFoundError:
            return None
        except fmt.CorruptEntry as e:
            self._drop_corrupt(key, str(e))
            return None
        dt = time.perf_counter() - t0
        st = self._touch(key, dt)
        info = self._info_from(header, key, st)
        return Hit(value, info, dt)

    def _drop_corrupt(self, key: str, why: str) -> None:
        self._warn(f"cache entry {key} is corrupt ({why}); dropped, it will be recomputed")
        try:
            self.delete(key)
        except OSError as e:  # read-only cache: it stays a miss, and is reported again
            self._warn(f"cannot drop corrupt cache entry {key}: {describe_os_error(e)}")

    # ------------------------------------------------------------------ write
    def put(
        self,
        key: str,
        value: Any,
        *,
        pipeline: str = "",
        stage: str = "",
        params: Mapping[str, Any] | None = None,
        parent: str = "",
        compute_cost: float = 0.0,
        extra: Mapping[str, Any] | None = None,
    ) -> EntryInfo:
        """Store ``value`` under ``key`` atomically, then enforce the size budget.

        Raises ``OSError`` when the entry cannot be stored (nothing partial is left behind);
        ``try_put`` turns that into a reason for callers that can go on without caching."""
        rel = self._obj(key)
        if self._unwritable is not None:
            self._secret = self._load_secret()
            if self._unwritable is not None:
                raise CacheUnwritable(errno.EROFS, self._unwritable)
        now = time.time()
        meta: dict[str, Any] = {
            "key": key,
            "pipeline": pipeline,
            "stage": stage,
            "params": dict(params or {}),
            "parent": parent,
            "compute_cost": float(compute_cost),
            "created": now,
            "extra": dict(extra or {}),
        }
        enc = fmt.encode(value, meta, self._secret)
        self.backend.write_atomic(rel, enc.chunks)
        info = self._info_from(enc.header, key)
        if self.max_bytes is not None:
            try:
                self.enforce_budget(protect={key})
            except OSError as e:  # the entry is stored; trimming waits for the next put/gc
                if isinstance(e, TimeoutError):
                    raise
                self._warn(f"cache budget not enforced: {describe_os_error(e)}")
        return info

    def try_put(self, key: str, value: Any, **meta: Any) -> tuple[EntryInfo | None, str | None]:
        """``put`` for callers that can go on uncached: ``(info, None)`` when stored, else
        ``(None, why)``; a full or read-only cache then costs a recomputation later, not the
        caller's work now."""
        try:
            return self.put(key, value, **meta), None
        except OSError as e:
            if isinstance(e, TimeoutError):
                raise
            why = (
                str(e.strerror)
                if isinstance(e, CacheUnwritable)
                else f"cache write failed: {describe_os_error(e)}"
            )
            self._warn(f"stage output {key} not cached ({why})")
            return None, why

    @contextlib.contextmanager
    def compute_lock(self, key: str) -> Iterator[str | None]:
        """Hold while checking for and computing ``key`` so it is computed once.

        Yields None, or why the lock could not be taken (a read-only or full cache): the
        caller then computes without it, since the lock only saves duplicate work."""
        check_key(key)
        why: str | None = None
        try:
            ctx = self.backend.lock(key)
            ctx.__enter__()
        except OSError as e:
            if isinstance(e, TimeoutError):
                raise
            why = f"compute lock unavailable: {describe_os_error(e)}"
            self._warn(f"cache key {key}: {why}")
        if why is not None:
            yield why
            return
        try:
            yield None
        finally:
            ctx.__exit__(None, None, None)

    # ------------------------------------------------------------------ delete, leases
    def delete(self, key: str) -> bool:
        """Remove an entry (stats first, so an interruption never leaves an orphan stats file
        pointing at nothing visible)."""
        rel = self._obj(key)
        existed = self.backend.exists(rel)
        self._headers.pop(key, None)
        self.backend.delete(self._stats(key))
        self.backend.delete(rel)
        return existed

    def _lease_body(self) -> bytes:
        return json.dumps(
            {
                "owner": self.owner,
                "host": self.host,
                "pidns": self._pidns,
                "pid": os.getpid(),
                "start": _proc_start(os.getpid()),
                "refreshed": time.time(),
                "ttl": self.lease_ttl,
            }
        ).encode()

    @contextlib.contextmanager
    def pin(self, keys: Iterable[str]) -> Iterator[str | None]:
        """Lease entries so eviction leaves them alone while a stage uses them.

        Yields None, or why some lease could not be written (full or read-only cache): the
        entries are then merely unpinned, and reading them still works."""
        checked = [check_key(k) for k in keys]
        token = uuid.uuid4().hex
        written: list[str] = []
        why: str | None = None
        body = self._lease_body()
        try:
            for k in checked:
                rel = f"leases/{k}/{token}.json"
                try:
                    self.backend.write_atomic(rel, [body], durable=False)
                except OSError as e:
                    why = f"lease not written: {describe_os_error(e)}"
                    self._warn(f"cache entries used unpinned ({why})")
                    break
                written.append(rel)
            self._hold(written)
            yield why
        finally:
            self._release(written)

    def _hold(self, rels: list[str]) -> None:
        if not rels:
            return
        with self._held_lock:
            self._held.update(rels)
            if self._keeper is None or not self._keeper.is_alive():
                self._keeper = threading.Thread(
                    target=self._keep_leases, name="eeipu-cache-leases", daemon=True
                )
                self._keeper.start()

    def _release(self, rels: list[str]) -> None:
        with self._held_lock:  # no refresh can rewrite a lease after it is released
            self._held.difference_update(rels)
        for rel in rels:
            with contextlib.suppress(OSError):
                self.backend.delete(rel)

    def _keep_leases(self) -> None:
        """Refresh held leases until none is held (then the thread ends)."""
        while True:
            time.sleep(self.lease_ttl / 4)
            with self._held_lock:
                if not self._held:
                    self._keeper = None
                    return
            self._refresh_leases()

    def _refresh_leases(self) -> None:
        # Under the lock, so a lease released meanwhile is never written back.
        with self._held_lock:
            body = self._lease_body()
            for rel in list(self._held):
                with contextlib.suppress(OSError):  # full disk: it may lapse, never fails
                    self.backend.write_atomic(rel, [body], durable=False)

    def _lease_live(self, rel: str, mtime: float, now: float) -> bool:
        """Whether one lease file still pins its entry: refreshed within its TTL and, when
        its holder ran on this host (same pid namespace), that process still running."""
        try:
            d = json.loads(self.backend.read_bytes(rel))
        except FileNotFoundError:
            return False
        except (ValueError, OSError):
            d = None
        if not isinstance(d, dict):
            return now - mtime <= self.lease_ttl
        refreshed = _finite(d.get("refreshed"))
        if refreshed is None:  # older format: a fixed expiry, never refreshed
            exp = _finite(d.get("expires"))
            return exp is not None and exp > now and now - mtime <= self.lease_ttl
        ttl = _finite(d.get("ttl"))
        ttl = self.lease_ttl if ttl is None or not 0 < ttl <= 86400 else ttl
        if now - max(refreshed, mtime) > ttl:
            return False
        pid = d.get("pid")
        if d.get("host") == self.host and d.get("pidns", "") == self._pidns:
            return isinstance(pid, int) and _process_alive(pid, d.get("start"))
        return True

    def _lease_files(self) -> Iterator[tuple[str, str | None, float]]:
        """``(relpath, key or None if the folder is not a key, mtime)`` of every lease file."""
        for rel, _, mtime in self.backend.list("leases"):
            parts = rel.split("/")
            yield rel, parts[1] if len(parts) == 3 and _is_key(parts[1]) else None, mtime

    def _pinned(self) -> set[str]:
        now = time.time()
        return {
            k
            for rel, k, mtime in self._lease_files()
            if k is not None and self._lease_live(rel, mtime, now)
        }

    # ------------------------------------------------------------------ listing and queries
    def keys(self) -> list[str]:
        """Keys of the entries present (files whose name is not a key are not entries)."""
        out = []
        for rel, _, _ in self.backend.list("objects"):
            if rel.endswith(".entry"):
                k = rel.rsplit("/", 1)[-1][: -len(".entry")]
                if _is_key(k):
                    out.append(k)
        return out

    def entries(self) -> list[EntryInfo]:
        """Every entry's metadata. A study lists the cache at every proposal: headers and
        stats are read once and again only when their files changed (one listing each)."""
        stamps = {rel: (size, mtime) for rel, size, mtime in self.backend.list("stats")}
        out = []
        for k in self.keys():
            i = self.info(k, listed=True, stats_stamp=stamps.get(self._stats(k), _NO_STATS))
            if i is not None:
                out.append(i)
        return out

    def total_bytes(self) -> int:
        return sum(size for rel, size, _ in self.backend.list("objects") if rel.endswith(".entry"))

    def read_bandwidth(self, entries: Iterable[EntryInfo] | None = None) -> float:
        """Bytes/s measured from past loads (median), or a default before any load."""
        rates = sorted(
            e.bytes / e.load_seconds
            for e in (entries if entries is not None else self.entries())
            if e.load_seconds and e.load_seconds > 0 and e.bytes > 0
        )
        return rates[len(rates) // 2] if rates else DEFAULT_READ_BANDWIDTH

    def estimate_load_seconds(self, info: EntryInfo, bandwidth: float | None = None) -> float:
        """Measured load time of this entry, else bytes / measured bandwidth."""
        if info.load_seconds is not None:
            return float(info.load_seconds)
        bw = bandwidth or DEFAULT_READ_BANDWIDTH
        return LOAD_OVERHEAD_S + info.bytes / bw

    # ------------------------------------------------------------------ eviction and gc
    def enforce_budget(self, protect: Iterable[str] = ()) -> list[str]:
        """Evict lowest recompute-cost-per-byte entries until within ``max_bytes``."""
        if self.max_bytes is None:
            return []
        if self.total_bytes() <= self.max_bytes:  # one listing; headers only when over budget
            return []
        with self.backend.lock("__evict__"):
            ents = self.entries()
            total = sum(e.bytes for e in ents)
            if total <= self.max_bytes:
                return []
            keep = set(protect) | self._pinned()
            order = sorted(
                (e for e in ents if e.key not in keep),
                key=lambda e: (e.compute_cost / max(e.bytes, 1), e.last_used),
            )
            evicted = []
            for e in order:
                if total <= self.max_bytes:
                    break
                self.delete(e.key)
                total -= e.bytes
                evicted.append(e.key)
            if evicted:
                self.events.append(f"evicted {len(evicted)} entries to fit {self.max_bytes} bytes")
            return evicted

    def gc(self, tmp_grace: float = 3600.0, verify: bool = False) -> dict[str, int]:
        """Remove stale temporaries, orphan stats, leases whose holder is gone or stopped
        refreshing, empty lease folders and lock files nobody holds; optionally verify every
        entry's checksums; then enforce the budget. Returns counts of what was removed."""
        removed_tmp = self.backend.cleanup_tmp(tmp_grace)
        live = set(self.keys())
        orphan_stats = 0
        for rel, _, _ in self.backend.list("stats"):
            k = rel.rsplit("/", 1)[-1].removesuffix(".json")
            if k not in live:
                self.backend.delete(rel)
                orphan_stats += 1
        expired = 0
        now = time.time()
        for rel, lease_key, mtime in self._lease_files():
            if lease_key is None or not self._lease_live(rel, mtime, now):
                self.backend.delete(rel)
                expired += 1
        lease_dirs = self.backend.prune_dirs("leases")
        lock_files = self.backend.cleanup_locks()
        corrupt = 0
        if verify:
            for k in list(live):
                try:
                    with self.backend.open_read(self._obj(k)) as f:
                        fmt.decode(f, self._secret, k)
                except FileNotFoundError:
                    continue
                except fmt.CorruptEntry as e:
                    self._drop_corrupt(k, str(e))
                    corrupt += 1
        evicted = len(self.enforce_budget())
        return {
            "tmp_files": removed_tmp,
            "orphan_stats": orphan_stats,
            "expired_leases": expired,
            "lease_dirs": lease_dirs,
            "lock_files": lock_files,
            "corrupt": corrupt,
            "evicted": evicted,
        }
