"""``eeipu bench dashboard``: response times of the dashboard's data endpoints on a big study.

It fills a SQLite store with a study of ``--trials`` finished trials of
``synthetic-3stage-flat`` (random parameters, a random reused prefix and per-stage costs, all
written through the store: setup, not measured), starts ``eeipu serve`` on it (no workers) on
a free loopback port and times, over ``--repeats`` requests each (median and max, in ms):

* the page itself (``/dashboard/`` and its modules);
* ``/v1/dashboard/studies`` (the study list), ``/v1/dashboard/studies/{id}`` (summary with
  the per-stage costs), ``.../importance``;
* ``.../trials`` first fill: the pages the dashboard fetches when it opens the study cold
  (``cold_fill_ms``: all of them together, and the slowest one), then the incremental poll
  (``?after=N``, nothing new) and a full fetch from the warm digest;
* ``/v1/studies/{id}/trials.csv``: the whole study as CSV (``trials_csv_ms``: the first
  request; ``trials_csv``: median and max of up to 5);
* a write while the page polls: ``finish_trials`` latency of a trial finished during a burst
  of reads (SQLite in WAL: readers do not block the writer).
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

STAGES = ("s1_beale", "s2_hartmann3", "s3_branin")
PIPELINE = "synthetic-3stage-flat"


def fill_study(
    store: Any, n_trials: int, seed: int = 0, batch: int = 500, complete: bool = True
) -> int:
    """Create a study of ``n_trials`` COMPLETE trials (a few FAILED) in ``store``; its id.

    Each trial has random parameters of the pipeline's space, a random reused prefix (hit
    stages cost their load time only) and a value; every 50th trial fails. The study is
    left ``completed`` (a server's scheduler proposes nothing more), or ``running``.
    """
    from api.store import NewTrial, StudySpec, StudyState
    from pipelines import get_pipeline

    pipe = get_pipeline(PIPELINE)
    rng = random.Random(seed)
    spec = StudySpec(PIPELINE, "random", 1e6, "value", "maximize", name=f"bench-{n_trials}")
    sid = int(store.create_study(spec, None).id)
    done = 0
    while done < n_trials:
        st = store.get_study(sid)
        k = min(batch, n_trials - done)
        news = [NewTrial(pipe.space.sample(rng), reuse_depth=rng.randint(0, 2)) for _ in range(k)]
        added = store.add_trials(sid, news, None, st.ask_version)
        assert added is not None
        items = []
        for _ in added:
            t = store.claim_trial("bench", study_id=sid)
            assert t is not None
            items.append((t.id, "bench", _result(rng, t.number), sid))
        store.finish_trials(items)
        done += k
    if complete:
        store.set_study_state(sid, StudyState.COMPLETED)
    return sid


def _result(rng: random.Random, number: int) -> Any:
    from api.store import StageRun, TrialResult, TrialState

    if number % 50 == 49:
        return TrialResult(TrialState.FAILED, error="synthetic failure")
    depth = rng.randint(0, 2)
    stages = []
    for i, name in enumerate(STAGES):
        full = rng.uniform(0.5, 3.0)
        hit = i < depth
        stages.append(
            StageRun(
                name,
                i,
                key=uuid.uuid4().hex,
                hit=hit,
                cost_seconds=0.0 if hit else full,
                load_seconds=0.01 if hit else 0.0,
                original_cost_seconds=full,
            )
        )
    value = -abs(rng.gauss(50.0, 20.0))
    cost = sum(s.cost_seconds + s.load_seconds for s in stages)
    return TrialResult(
        TrialState.COMPLETE, {"value": value, "raw_sum": -value}, value, cost, depth, stages
    )


# ------------------------------------------------------------------------------ the command
def register(sub: Any) -> None:
    """Add ``dashboard`` to the ``eeipu bench`` sub-parsers."""
    p = sub.add_parser(
        "dashboard", help="dashboard page and data endpoint times on a big SQLite study"
    )
    p.add_argument("--trials", type=int, default=5000, help="finished trials in the study")
    p.add_argument("--repeats", type=int, default=20, help="requests per warm measurement")
    p.add_argument("--writes", type=int, default=100, help="trials finished during reads")
    p.add_argument("--db", default=None, help="SQLite file to fill (default: a temporary one)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: Any) -> int:
    """``eeipu bench dashboard``."""
    import tempfile
    from pathlib import Path

    from api.cli.common import emit_json

    if args.trials < 1 or args.repeats < 1 or args.writes < 1:
        raise ValueError("--trials, --repeats and --writes must be positive")
    with tempfile.TemporaryDirectory(prefix="eeipu-bench-dash-") as tmp:
        path = Path(args.db) if args.db else Path(tmp) / "dash.db"
        if path.exists():
            raise ValueError(f"--db {path} exists: give a new file")
        res = bench_dashboard(
            f"sqlite:///{path}", Path(tmp), args.trials, args.repeats, args.writes
        )
    if args.json:
        emit_json(res)
    else:
        for k, v in res.items():
            print(f"{k:>34}: {v}")
    return 0


def bench_dashboard(db: str, home: Any, n_trials: int, repeats: int, writes: int) -> dict[str, Any]:
    """Fill ``db`` with a study of ``n_trials`` and measure; the figures as a dict."""
    import os

    from api.store import open_store
    from bench.dashboard_run import measure

    t0 = time.perf_counter()
    store = open_store(db)
    try:
        sid = fill_study(store, n_trials)
    finally:
        store.close()
    res: dict[str, Any] = {
        "trials": n_trials,
        "setup_s": round(time.perf_counter() - t0, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    res.update(measure(db, home, sid, repeats, writes))
    res["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    return res
