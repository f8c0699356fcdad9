"""A study's trials as CSV or JSON, streamed from the store in pages (bounded memory).

Both read the study twice: a first pass over the trials' stored JSON (the store's fast path,
``PAGE_HEADER`` at a time, nothing kept but the column names) learns the header; the second
reads ``PAGE`` trials at a time with their stage runs (one query for the trials and one for
their stage runs per page) and yields one chunk of text per page. Trials proposed after the
first pass are left for the next export, so every row fits the header. Memory stays that of
one page, whatever the study's size.

``GET /v1/studies/{id}/trials.csv`` and ``eeipu studies export`` (with ``--db``) use the same
generators, so their bytes are the same.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Sequence
from typing import Any

from api.report.rows import Columns, csv_line, csv_lines
from api.store import Trial, TrialStore

PAGE = 500
PAGE_HEADER = 1000


def trial_dict(t: Trial) -> dict[str, Any]:
    """What ``Columns`` reads of a trial: ``Trial.to_dict()`` with its stage runs as plain
    dicts built directly (``dataclasses.asdict`` deep-copies each: the export's hot loop)."""
    d = copy.copy(t)
    d.stages = None
    out = d.to_dict()
    out["stages"] = [
        {
            "stage": r.stage,
            "position": r.position,
            "hit": r.hit,
            "cost_seconds": r.cost_seconds,
            "load_seconds": r.load_seconds,
            "original_cost_seconds": r.original_cost_seconds,
        }
        for r in t.stages or ()
    ]
    return out


def columns(store: TrialStore, study_id: int, stages: Sequence[str]) -> tuple[Columns, int]:
    """The columns of every trial now in the study, and the highest trial number (-1: none)."""
    cols = Columns(stages)
    last = -1
    while True:
        page = store.trials_json(study_id, limit=PAGE_HEADER, after=last)
        if not page:
            return cols, last
        for text in page:
            t = json.loads(text)
            cols.observe(t)
            last = max(last, int(t["number"]))


def rows(store: TrialStore, study_id: int, end: int) -> Iterator[list[Trial]]:
    """The trials numbered up to ``end``, a page at a time, with their stage runs."""
    after = -1
    while after < end:
        page = store.list_trials(study_id, limit=PAGE, after=after, with_stages=True)
        page = [t for t in page if t.number <= end]
        if not page:
            return
        yield page
        after = page[-1].number


def csv_chunks(store: TrialStore, study_id: int, stages: Sequence[str] = ()) -> Iterator[str]:
    """The CSV of a study's trials: the header line, then one chunk of records per page."""
    cols, end = columns(store, study_id, stages)
    yield csv_line(cols.freeze())
    for page in rows(store, study_id, end):
        yield csv_lines(cols.row(trial_dict(t)).values() for t in page)


def json_chunks(
    store: TrialStore, study: dict[str, Any], stages: Sequence[str] = ()
) -> Iterator[str]:
    """``{"study": ..., "columns": [...], "trials": [{column: value}, ...]}`` plus a newline,
    in chunks (one per page of trials)."""
    dumps = json.JSONEncoder(separators=(",", ":"), default=str).encode
    cols, end = columns(store, int(study["id"]), stages)
    head = cols.freeze()
    yield f'{{"study":{dumps(study)},"columns":{dumps(head)},"trials":['
    first = True
    for page in rows(store, int(study["id"]), end):
        text = ",".join(dumps(cols.row(trial_dict(t))) for t in page)
        yield text if first else "," + text
        first = False
    yield "]}\n"
