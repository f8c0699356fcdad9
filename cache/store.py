"""The stage cache: exact keys in, verified outputs out, with metadata, leases and eviction.

Files under the backend's root::

    objects/<k[:2]>/<key>.entry     one file per entry; its header holds ALL static metadata
    stats/<k[:2]>/<key>.json        hits, last use, measured load time (advisory)
    leases/<key>/<owner>.json       "in use until <expiry>" pins that eviction respects
    tmp/                            partial writes; never listed, removed by ``gc``
    secret.key                      the MAC key that proves an entry was written by this cache

Because an entry's metadata lives inside its own file, a listed entry always has its file and
an entry file is always listed: metadata and blobs cannot drift apart, whatever is interrupted.
Stats files are advisory; a stats file whose entry is gone is invisible and ``gc`` removes it.

Eviction keeps what is most expensive to recompute per byte: when the total exceeds
``max_bytes``, entries are removed in increasing order of ``compute_cost / bytes`` (least
recently used first among equals), skipping every entry that holds a live lease.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from cache import format as fmt
from cache.backends import CacheBackend, backend_for

log = logging.getLogger(__name__)

DEFAULT_READ_BANDWIDTH = 1.0e9  # bytes/s, used until loads have been measured
LOAD_OVERHEAD_S = 1e-3


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
        lease_ttl: seconds a pin lasts if its owner dies without releasing it.
    """

    def __init__(
        self,
        backend: CacheBackend | str | os.PathLike[str],
        max_bytes: int | None = None,
        lease_ttl: float = 6 * 3600.0,
    ) -> None:
        self.backend = backend if isinstance(backend, CacheBackend) else backend_for(str(backend))
        self.max_bytes = max_bytes
        self.lease_ttl = lease_ttl
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._secret = self._load_secret()
        self.events: list[str] = []  # human-readable warnings (corruption, evictions) for reports
        # Headers are immutable for a key (same key, same bytes), so listing can skip re-reading
        # them; presence is always taken from the backend's listing, never from this memo.
        self._headers: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ paths and secret
    @staticmethod
    def _obj(key: str) -> str:
        return f"objects/{key[:2]}/{key}.entry"

    @staticmethod
    def _stats(key: str) -> str:
        return f"stats/{key[:2]}/{key}.json"

    def _load_secret(self) -> bytes:
        with contextlib.suppress(FileNotFoundError):
            s = self.backend.read_bytes("secret.key")
            if len(s) >= 32:
                return s
        with self.backend.lock("secret"):
            with contextlib.suppress(FileNotFoundError):
                s = self.backend.read_bytes("secret.key")
                if len(s) >= 32:
                    return s
            s = secrets.token_bytes(32)
            self.backend.write_atomic("secret.key", [s])
            return s

    # ------------------------------------------------------------------ read
    def contains(self, key: str) -> bool:
        return self.backend.exists(self._obj(key))

    def info(self, key: str, listed: bool = False) -> EntryInfo | None:
        """Metadata of one entry (header only, nothing unpickled), or None if absent/corrupt.

        ``listed=True`` means the caller has just seen the file in a listing, so a memoised
        header may be used instead of opening it again."""
        if listed and key in self._headers:
            return self._info_from(self._headers[key], key)
        try:
            with self.backend.open_read(self._obj(key)) as f:
                header, _ = fmt.read_header(f, self._secret)
        except FileNotFoundError:
            return None
        except fmt.CorruptEntry as e:
            self._drop_corrupt(key, str(e))
            return None
        self._headers[key] = header
        return self._info_from(header, key)

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
        with contextlib.suppress(OSError):
            self.backend.write_atomic(self._stats(key), [json.dumps(st).encode()], durable=False)
        return st

    def get(self, key: str) -> Hit | None:
        """Load an entry, verifying it; a corrupt entry is reported, dropped and a miss."""
        t0 = time.perf_counter()
        try:
            with self.backend.open_read(self._obj(key)) as f:
                value, header = fmt.decode(f, self._secret)
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
        msg = f"cache entry {key} is corrupt ({why}); dropped, it will be recomputed"
        log.warning(msg)
        self.events.append(msg)
        self.delete(key)

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
        """Store ``value`` under ``key`` atomically, then enforce the size budget."""
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
        self.backend.write_atomic(self._obj(key), enc.chunks)
        info = self._info_from(enc.header, key)
        if self.max_bytes is not None:
            self.enforce_budget(protect={key})
        return info

    def compute_lock(self, key: str) -> contextlib.AbstractContextManager[None]:
        """Hold while checking for and computing ``key`` so it is computed once."""
        return self.backend.lock(key)

    # ------------------------------------------------------------------ delete, leases
    def delete(self, key: str) -> bool:
        """Remove an entry (stats first, so an interruption never leaves an orphan stats file
        pointing at nothing visible)."""
        existed = self.contains(key)
        self._headers.pop(key, None)
        self.backend.delete(self._stats(key))
        self.backend.delete(self._obj(key))
        return existed

    @contextlib.contextmanager
    def pin(self, keys: Iterable[str]) -> Iterator[None]:
        """Lease entries so eviction leaves them alone while a stage uses them."""
        token = uuid.uuid4().hex
        written: list[str] = []
        body = json.dumps({"owner": self.owner, "expires": time.time() + self.lease_ttl}).encode()
        try:
            for k in keys:
                rel = f"leases/{k}/{self.owner}-{token}.json"
                self.backend.write_atomic(rel, [body], durable=False)
                written.append(rel)
            yield
        finally:
            for rel in written:
                self.backend.delete(rel)

    def _pinned(self) -> set[str]:
        now = time.time()
        out: set[str] = set()
        for rel, _, _ in self.backend.list("leases"):
            parts = rel.split("/")
            if len(parts) != 3:
                continue
            try:
                exp = float(json.loads(self.backend.read_bytes(rel)).get("expires", 0))
            except (FileNotFoundError, ValueError):
                continue
            if exp > now:
                out.add(parts[1])
        return out

    # ------------------------------------------------------------------ listing and queries
    def keys(self) -> list[str]:
        out = []
        for rel, _, _ in self.backend.list("objects"):
            if rel.endswith(".entry"):
                out.append(rel.rsplit("/", 1)[-1][: -len(".entry")])
        return out

    def entries(self) -> list[EntryInfo]:
        out = []
        for k in self.keys():
            i = self.info(k, listed=True)
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
        """Remove stale temporaries, orphan stats, expired leases; optionally verify every
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
        for rel, _, _ in self.backend.list("leases"):
            try:
                exp = float(json.loads(self.backend.read_bytes(rel)).get("expires", 0))
            except (FileNotFoundError, ValueError):
                exp = 0.0
            if exp <= now:
                self.backend.delete(rel)
                expired += 1
        corrupt = 0
        if verify:
            for k in list(live):
                try:
                    with self.backend.open_read(self._obj(k)) as f:
                        fmt.decode(f, self._secret)
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
            "corrupt": corrupt,
            "evicted": evicted,
        }
