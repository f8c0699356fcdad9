"""``eeipu studies list|show|best``: look at studies, through a server or straight from the store.

``--server URL`` asks a running service through ``api.client``; otherwise the store at
``--db`` (default: the embedded SQLite file) is read directly, so this works without a server.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from api.cli.common import add_db_arg, db_url_from, emit_json


def _study_id(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a study id is a positive integer, got {text!r}"
        ) from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"a study id is a positive integer, got {v}")
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

    def trials(self, sid: int) -> list[dict[str, Any]]:
        from api.schemas import trial_out

        if self.client is not None:
            return [t.to_dict() for t in self.client.trials(sid)]
        return [trial_out(t) for t in self.store.list_trials(sid)]

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
