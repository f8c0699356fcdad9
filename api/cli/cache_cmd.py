"""``eeipu cache ls|gc|rm``: inspect and maintain the stage cache."""

from __future__ import annotations

import argparse
import time
from typing import Any

from api.cli.common import add_cache_arg, add_db_arg, db_url_from, emit_json, open_cache_from


def register(sub: Any) -> None:
    p = sub.add_parser("cache", help="inspect and maintain the stage cache")
    csub = p.add_subparsers(dest="cache_cmd", required=True, parser_class=type(p))
    ls = csub.add_parser("ls", help="list cached stage outputs")
    ls.add_argument("--pipeline", default=None, help="only this pipeline's entries (default: all)")
    ls.add_argument("--json", action="store_true", help="print one JSON line")
    add_cache_arg(ls)
    ls.set_defaults(func=_ls)
    gc = csub.add_parser("gc", help="remove temporaries/orphans, verify, enforce the budget")
    gc.add_argument("--verify", action="store_true", help="check every entry's checksums")
    gc.add_argument(
        "--tmp-grace",
        type=float,
        default=3600.0,
        help="seconds a temporary file may live before it is removed",
    )
    gc.add_argument("--json", action="store_true", help="print one JSON line")
    add_cache_arg(gc)
    gc.set_defaults(func=_gc)
    rm = csub.add_parser("rm", help="evict entries by key, or every entry a study computed")
    rm.add_argument("keys", nargs="*", help="cache keys (32 lowercase hex characters)")
    rm.add_argument(
        "--study", type=int, default=None, help="evict what this study computed (default: none)"
    )
    add_db_arg(rm, "trial store URL for --study")
    add_cache_arg(rm)
    rm.set_defaults(func=_rm)


def _ls(args: argparse.Namespace) -> int:
    c = open_cache_from(args, must_exist=True)
    ents = [e for e in c.entries() if args.pipeline is None or e.pipeline == args.pipeline]
    if args.json:
        emit_json(
            {
                "entries": [e.to_dict() for e in ents],
                "bytes": sum(e.bytes for e in ents),
                "hits": sum(e.hits for e in ents),
                "compute_seconds_saved": sum(e.hits * e.compute_cost for e in ents),
            }
        )
        return 0
    for e in sorted(ents, key=lambda e: e.created):
        age = time.time() - e.created
        print(
            f"{e.key[:12]} {e.pipeline:<18} {e.stage:<16} {e.bytes:>12} B "
            f"cost={e.compute_cost:.3f}s hits={e.hits} age={age:.0f}s"
        )
    print(f"{len(ents)} entries, {sum(e.bytes for e in ents)} bytes")
    return 0


def _gc(args: argparse.Namespace) -> int:
    if args.tmp_grace < 0:
        raise ValueError("--tmp-grace must be >= 0")
    c = open_cache_from(args, must_exist=True)
    res = c.gc(tmp_grace=args.tmp_grace, verify=args.verify)
    if args.json:
        emit_json(res)
    else:
        print(" ".join(f"{k}={v}" for k, v in res.items()))
    return 0


def _rm(args: argparse.Namespace) -> int:
    """Evict entries. Every key is checked to be a cache key before anything is deleted: a
    key is a file name in the cache, so a malformed one could name a file outside it."""
    from cache.keys import check_key

    if not args.keys and args.study is None:
        raise ValueError("give cache keys, or --study ID")
    if args.study is not None and args.study < 1:
        raise ValueError(f"--study must be a positive study id, got {args.study}")
    keys = [check_key(k) for k in args.keys]  # InvalidKey (a ValueError): exit 2, none deleted
    study_keys: list[str] = []
    skipped = 0
    if args.study is not None:
        from api.store import open_store

        store = open_store(db_url_from(args))
        try:
            if store.get_study(args.study) is None:
                raise ValueError(f"study {args.study} not found")
            stored = store.stage_keys(args.study)
        finally:
            store.close()
        for k in stored:
            try:
                study_keys.append(check_key(k))
            except ValueError:
                skipped += 1  # written by an older version: never used as a path
    c = open_cache_from(args, must_exist=True)
    missing = [k for k in keys if not c.delete(k)]
    if args.study is not None:
        n = sum(1 for k in dict.fromkeys(study_keys) if c.delete(k))
        note = f" (skipped {skipped} invalid stored keys)" if skipped else ""
        print(f"evicted {n} entries computed by study {args.study}{note}")
    if missing:
        raise ValueError(f"no such cache entries: {', '.join(missing)}")
    return 0
