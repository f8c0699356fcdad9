"""``eeipu studies list|show|best|export``: look at studies, through a server or straight
from the store.

``--server URL`` asks a running service through ``api.client``; otherwise the store at
``--db`` (default: the embedded SQLite file) is read directly, so this works without a server.
``export`` writes every trial as CSV or JSON with the columns of ``api.report.rows`` (those of
``GET /v1/studies/{id}/trials.csv``).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from api.cli.common import add_db_arg, db_url_from, emit_json

MAX_STUDY_ID = 2**31 - 1  # api.schemas.MAX_ID (ids are 32-bit in every backend)


def _study_id(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a study id is a positive integer, got {text!r}"
        ) from None
    if not 1 <= v <= MAX_STUDY_ID:
        raise argparse.ArgumentTypeError(
            f"a study id is an integer from 1 to {MAX_STUDY_ID}, got {text!r}"
        )
    return v


def register(sub: Any) -> None:
    p = sub.add_parser("studies", help="list studies, show one, print its best trial")
    ssub = p.add_subparsers(dest="studies_cmd", required=True, parser_class=type(p))
    for name, help_ in (
        ("list", "list studies"),
        ("show", "a study with its trials"),
        ("best", "the best trial of a study"),
    ):
        q = ssub.add_parser(name, help=help_)
        if name != "list":
            q.add_argument("study_id", type=_study_id)
        else:
            q.add_argument(
                "--state",
                choices=("running", "completed", "stopped", "failed"),
                help="only studies in this state (default: all)",
            )
        q.add_argument("--server", default=None, help="service URL (default: read --db)")
        q.add_argument(
            "--token",
            default=None,
            help="the server's API token (default: $EEIPU_API_TOKEN)",
        )
        add_db_arg(q, "database URL, read when no --server is given")
        q.add_argument("--json", action="store_true", help="print one JSON line")
        q.set_defaults(func=globals()[f"_{name}"])
    _register_export(ssub)


def _add_source_args(q: Any) -> None:
    q.add_argument("--server", default=None, help="service URL (default: read --db)")
    q.add_argument(
        "--token", default=None, help="the server's API token (default: $EEIPU_API_TOKEN)"
    )
    add_db_arg(q, "database URL, read when no --server is given")


def _register_export(ssub: Any) -> None:
    q = ssub.add_parser("export", help="every trial of a study as CSV or JSON")
    q.add_argument("study_id", type=_study_id)
    q.add_argument("--format", choices=("csv", "json"), default="csv", help="output format")
    q.add_argument("--out", default=None, help="file to write (default: standard output)")
    _add_source_args(q)
    q.set_defaults(func=_export)


class _Source:
    """The same reads, through ``api.client.Client`` or straight from the store."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.client: Any = None
        self.store: Any = None
        if args.server is not None:
            from api.client import Client

            token = args.token or os.environ.get("EEIPU_API_TOKEN") or None
            self.client = Client(args.server, token=token)
        else:
            from api.store import open_store

            self.store = open_store(db_url_from(args))

    def studies(self, state: str | None) -> list[dict[str, Any]]:
        from api.schemas import study_out
        from api.store import StudyState

        if self.client is not None:
            return [s.to_dict() for s in self.client.studies(state)]
        st = StudyState(state) if state else None
        return [study_out(s) for s in self.store.list_studies(st, limit=1_000_000)]

    def study(self, sid: int) -> dict[str, Any]:
        from api.schemas import study_out

        if self.client is not None:
            return dict(self.client.study(sid).to_dict())
        s = self.store.get_study(sid)
        if s is None:
            raise ValueError(f"study {sid} not found")
        return study_out(s)

    def trials(self, sid: int, stages: bool = False) -> list[dict[str, Any]]:
        from api.schemas import trial_out

        if self.client is not None:
            return [t.to_dict() for t in self.client.trials(sid, stages=stages)]
        return [trial_out(t) for t in self.store.list_trials(sid, with_stages=stages)]

    def best(self, sid: int) -> dict[str, Any]:
        if self.client is not None:
            return dict(self.client.best(sid).to_dict())
        s = self.study(sid)
        if s["best_trial_id"] is None:
            raise ValueError(f"study {sid} has no completed trial yet")
        t = self.store.get_trial(s["best_trial_id"])
        return {
            "value": t.value,
            "trial_id": t.id,
            "number": t.number,
            "params": t.params,
            "metrics": t.metrics,
            "cost_seconds": t.cost_seconds,
        }

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        if self.client is not None:
            self.client.close()


def _line(s: dict[str, Any]) -> str:
    best = "-" if s["best_value"] is None else f"{s['best_value']:.6g}"
    return (
        f"{s['id']:>5} {s['state']:<9} {s['pipeline']:<24} {s['optimizer']:<7} "
        f"trials={s['trials_done']:<5} cost={s['cost_spent']:.1f}/{s['budget_seconds']:g}s "
        f"best={best}"
    )


def _list(args: argparse.Namespace) -> int:
    src = _Source(args)
    try:
        items = src.studies(args.state)
    finally:
        src.close()
    if args.json:
        emit_json({"items": items})
    else:
        for s in items:
            print(_line(s))
        print(f"{len(items)} studies")
    return 0


def _show(args: argparse.Namespace) -> int:
    src = _Source(args)
    try:
        s = src.study(args.study_id)
        trials = src.trials(args.study_id)
    finally:
        src.close()
    if args.json:
        emit_json({**s, "trials": trials})
        return 0
    print(_line(s))
    if s.get("error"):
        print(f"  error: {s['error']}")
    for t in trials:
        v = "-" if t["value"] is None else f"{t['value']:.6g}"
        cost = "-" if t["cost_seconds"] is None else f"{t['cost_seconds']:.3f}s"
        print(
            f"  #{t['number']:<4} {t['state']:<8} value={v:<12} cost={cost:<10} "
            f"reused={t['reused_depth'] if t['reused_depth'] is not None else '-'} "
            f"attempts={t['attempts']}"
        )
    return 0


def _best(args: argparse.Namespace) -> int:
    src = _Source(args)
    try:
        b = src.best(args.study_id)
    finally:
        src.close()
    if args.json:
        emit_json(b)
        return 0
    print(f"best value {b['value']:.6g} (trial {b['trial_id']}, #{b['number']})")
    for stage, params in b["params"].items():
        print(f"  {stage}: " + ", ".join(f"{k}={v}" for k, v in params.items()))
    return 0


def _export(args: argparse.Namespace) -> int:
    """Stream the trials to ``--out`` (written atomically) or standard output: from the
    store page by page; through a server, its ``trials.csv`` as it arrives (JSON: the
    trials' pages, then one document)."""
    import sys
    from collections.abc import Iterable

    from api.report import export, files
    from api.report.rows import declared_stages

    out = None if args.out is None else files.out_file(args.out)
    src = _Source(args)
    try:
        s = src.study(args.study_id)  # a bad id or an unreachable server: before any write
        stages = declared_stages(str(s["pipeline"]))
        chunks: Iterable[str]
        if src.store is not None and args.format == "csv":
            chunks = export.csv_chunks(src.store, args.study_id, stages)
        elif src.store is not None:
            chunks = export.json_chunks(src.store, s, stages)
        elif args.format == "csv":
            chunks = _server_csv(args, args.study_id)
        else:
            chunks = _server_json(src, s, stages)
        if out is None:
            for c in chunks:
                sys.stdout.write(c)
        else:
            files.write_text(out, chunks)
            print(f"wrote study {args.study_id}'s trials to {out}", file=sys.stderr)
    finally:
        src.close()
    return 0


def _server_csv(args: argparse.Namespace, sid: int) -> Any:
    """The server's ``GET /v1/studies/{id}/trials.csv``, chunk by chunk."""
    import httpx

    token = args.token or os.environ.get("EEIPU_API_TOKEN") or None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{args.server.rstrip('/')}/v1/studies/{sid}/trials.csv"
    try:
        with httpx.stream("GET", url, headers=headers, timeout=60.0) as r:
            if r.status_code >= 400:
                r.read()
                raise ValueError(f"{url}: HTTP {r.status_code}: {r.text[:300]}")
            yield from r.iter_text()
    except httpx.HTTPError as e:
        raise ValueError(f"{url}: {e or type(e).__name__}") from None


def _server_json(src: _Source, s: dict[str, Any], stages: list[str]) -> list[str]:
    import json

    from api.report.rows import to_records

    cols, rows = to_records(src.trials(int(s["id"]), stages=True), stages)
    return [
        json.dumps(
            {"study": s, "columns": cols, "trials": rows}, separators=(",", ":"), default=str
        )
        + "\n"
    ]
