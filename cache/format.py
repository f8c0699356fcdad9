"""The on-disk format of one cache entry: authenticated header, pickle, raw buffers.

Layout (all offsets 64-byte aligned so buffers can be read straight into aligned arrays)::

    b"EEIPUCE1" | u64 header length | header JSON | pad | pickle bytes | pad | buffer 0 | pad ...

The output object is pickled with protocol 5 and out-of-band buffers, so a large NumPy array is
written and read as raw bytes (no copy through the pickle stream: a hit costs about what
``numpy.load`` costs). Integrity and provenance:

* the header carries a keyed BLAKE2b MAC over itself and over the pickle bytes, keyed by the
  cache's own secret: the store only unpickles files it wrote itself (pickles run code);
* every raw buffer carries an XXH3-64 checksum, verified chunk by chunk while it is read, so a
  corrupted or truncated entry is detected and never returned;
* the file's length must be exactly what the header implies (a cut anywhere, even in the
  trailing padding, or appended bytes are corruption), and the header names its own key, so
  an authentic entry filed under another key's name is refused, never served as that key.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import pickle
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import xxhash

MAGIC = b"EEIPUCE1"
ALIGN = 64
CHUNK = 4 << 20
SEGMENT = 8 << 20  # buffers are checksummed per segment so they can be read in parallel
_PAD = bytes(ALIGN)


class CorruptEntry(Exception):
    """The entry's bytes do not match what was written (or it was not written by us)."""


def _pad(n: int) -> int:
    return (-n) % ALIGN


def _mac(secret: bytes, data: bytes | memoryview) -> str:
    return hashlib.blake2b(data, key=secret, digest_size=16).hexdigest()


@dataclass
class Encoded:
    header: dict[str, Any]
    chunks: list[bytes | memoryview]
    payload_bytes: int


def encode(obj: Any, meta: dict[str, Any], secret: bytes) -> Encoded:
    """Serialise ``obj`` with ``meta`` into the chunks of one entry file."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    payload = len(data) + sum(r.nbytes for r in raws)
    meta = {**meta, "bytes": payload}
    header: dict[str, Any] = {
        "meta": meta,
        "pickle_len": len(data),
        "pickle_mac": _mac(secret, data),
        "buffers": [{"len": r.nbytes, "seg": SEGMENT, "xxh3": _seg_hashes(r)} for r in raws],
    }
    header["payload_bytes"] = payload
    body = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    header["mac"] = _mac(secret, body)
    hbytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    first = MAGIC + struct.pack("<Q", len(hbytes)) + hbytes
    chunks: list[bytes | memoryview] = [
        first,
        _PAD[: _pad(len(first))],
        data,
        _PAD[: _pad(len(data))],
    ]
    for r in raws:
        chunks.append(r)
        chunks.append(_PAD[: _pad(r.nbytes)])
    return Encoded(header, chunks, header["payload_bytes"])


def read_header(f: BinaryIO, secret: bytes, key: str | None = None) -> tuple[dict[str, Any], int]:
    """Read and authenticate the header; return it and the offset of the pickle bytes.

    With ``key``, the header must name that key (files can be renamed; MACs do not see it)."""
    first = _read_exact(f, len(MAGIC) + 8)
    if first[: len(MAGIC)] != MAGIC:
        raise CorruptEntry("bad magic: not an eeipu cache entry")
    (hlen,) = struct.unpack("<Q", first[len(MAGIC) :])
    if hlen > 64 << 20:
        raise CorruptEntry("implausible header length")
    hbytes = _read_exact(f, hlen)
    try:
        header = json.loads(hbytes)
        mac = header.pop("mac")
    except (ValueError, KeyError, AttributeError) as e:
        raise CorruptEntry(f"unreadable header: {e}") from None
    body = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    if not hmac.compare_digest(mac, _mac(secret, body)):
        raise CorruptEntry("header MAC mismatch (corrupted, or written by another cache)")
    if key is not None and header.get("meta", {}).get("key") != key:
        raise CorruptEntry("entry belongs to another key (file renamed or copied)")
    off = len(first) + hlen
    _skip(f, _pad(off))
    return header, off + _pad(off)


def decode(f: BinaryIO, secret: bytes, key: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Read a whole entry, verifying everything before anything is unpickled."""
    header, off0 = read_header(f, secret, key)
    plen = int(header["pickle_len"])
    data = _read_exact(f, plen)
    if not hmac.compare_digest(header["pickle_mac"], _mac(secret, data)):
        raise CorruptEntry("pickle MAC mismatch")
    _skip(f, _pad(plen))
    off = off0 + plen + _pad(plen)
    fd = _fileno(f)
    bufs: list[memoryview] = []
    for spec in header["buffers"]:
        n = int(spec["len"])
        seg = int(spec["seg"])
        hashes = list(spec["xxh3"])
        if len(hashes) != max(1, -(-n // seg)):
            raise CorruptEntry("bad segment table")
        arr = np.empty(n, dtype=np.uint8)
        mv = arr.data
        if fd is not None:
            _pread_verify(fd, mv, off, seg, hashes)
        else:
            for i, part in enumerate(_fill(f, mv, seg)):
                if xxhash.xxh3_64_hexdigest(part) != hashes[i]:
                    raise CorruptEntry("buffer checksum mismatch")
            _skip(f, _pad(n))
        off += n + _pad(n)
        bufs.append(mv)
    _check_length(f, fd, off)
    try:
        obj = pickle.loads(data, buffers=bufs)
    except Exception as e:  # authenticated but unloadable (e.g. class moved)
        raise CorruptEntry(f"cannot unpickle: {e}") from None
    return obj, header


_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="eeipu-cache-read")


def _seg_hashes(buf: memoryview) -> list[str]:
    n = buf.nbytes
    if n == 0:
        return [xxhash.xxh3_64_hexdigest(b"")]
    return [xxhash.xxh3_64_hexdigest(buf[i : i + SEGMENT]) for i in range(0, n, SEGMENT)]


def _fileno(f: BinaryIO) -> int | None:
    try:
        fd = f.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def _pread_verify(fd: int, mv: memoryview, offset: int, seg: int, hashes: list[str]) -> None:
    """Read segments with ``pread`` on two threads, each checking its segment's XXH3 right
    after reading it (while it is still in cache); both calls release the GIL."""

    def job(i: int) -> bool:
        part = mv[i * seg : (i + 1) * seg]
        got = 0
        while got < part.nbytes:
            k = os.preadv(fd, [part[got:]], offset + i * seg + got)
            if k <= 0:
                return False
            got += k
        return xxhash.xxh3_64_hexdigest(part) == hashes[i]

    n_seg = len(hashes)
    if mv.nbytes == 0:
        if hashes[0] != xxhash.xxh3_64_hexdigest(b""):
            raise CorruptEntry("buffer checksum mismatch")
        return
    ok = [job(0)] if n_seg == 1 else list(_POOL.map(job, range(n_seg)))
    if not all(ok):
        raise CorruptEntry("buffer truncated or checksum mismatch")


def _check_length(f: BinaryIO, fd: int | None, end: int) -> None:
    """The file must end exactly where the header says the entry ends."""
    if fd is not None:
        size = os.fstat(fd).st_size
        if size != end:
            raise CorruptEntry(f"entry is {size} bytes, its header says {end}")
    elif f.read(1):
        raise CorruptEntry("trailing bytes after the entry")


def _fill(f: BinaryIO, mv: memoryview, chunk: int = CHUNK) -> Iterator[memoryview]:
    pos = 0
    n = mv.nbytes
    readinto = getattr(f, "readinto", None)
    while pos < n:
        end = min(pos + chunk, n)
        part = mv[pos:end]
        if readinto is not None:
            got = 0
            while got < part.nbytes:
                k = readinto(part[got:])
                if not k:
                    raise CorruptEntry("truncated entry")
                got += k
        else:
            b = f.read(part.nbytes)
            if len(b) != part.nbytes:
                raise CorruptEntry("truncated entry")
            part[:] = b
        yield part
        pos = end


def _read_exact(f: BinaryIO, n: int) -> bytes:
    buf = io.BytesIO()
    while buf.tell() < n:
        b = f.read(n - buf.tell())
        if not b:
            raise CorruptEntry("truncated entry")
        buf.write(b)
    return buf.getvalue()


def _skip(f: BinaryIO, n: int) -> None:
    if n:
        _read_exact(f, n)
