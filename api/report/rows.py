"""One flat row per trial: the columns of ``trials.csv`` and ``eeipu studies export``.

Columns, in this order:

* ``study_id``, ``trial_id``, ``number``, ``state``, ``value``, ``cost_seconds`` (what the
  trial paid), ``predicted_cost``, ``reuse_depth`` (the cached prefix the optimizer planned to
  reuse), ``reused_depth`` (the prefix really loaded), ``attempts``, ``worker``, ``error``;
* ``created_at``, ``started_at``, ``finished_at``: ISO 8601 in UTC (``...+00:00``), empty
  when unknown;
* ``param.<stage>.<name>`` for every parameter of every stage;
* ``metric.<name>`` for every metric any trial reported (sorted by name);
* ``stage.<stage>.hit``, ``stage.<stage>.cost_seconds``, ``stage.<stage>.load_seconds``,
  ``stage.<stage>.original_cost_seconds`` for every stage (empty for a trial that has not run).

CSV cells are safe to open in a spreadsheet: a text cell that starts with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return (which Excel, LibreOffice and Google Sheets would read as a
formula) is written with a leading ``'`` (``FORMULA_PREFIX``), as OWASP advises against CSV
injection; numbers are written as they are (``-1.5`` stays a number). Lists and dicts (a
parameter's value may be one) are written as JSON. Quoting is RFC 4180's (``csv`` module,
``\r\n`` line ends). The JSON export keeps every value as it is.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

BASE = (
    "study_id",
    "trial_id",
    "number",
    "state",
    "value",
    "cost_seconds",
    "predicted_cost",
    "reuse_depth",
    "reused_depth",
    "attempts",
    "worker",
    "error",
)
TIMES = ("created_at", "started_at", "finished_at")
STAGE_FIELDS = ("hit", "cost_seconds", "load_seconds", "original_cost_seconds")


def iso(ts: object) -> str | None:
    """A POSIX timestamp as ISO 8601 in UTC, ``None`` for a missing or absurd one."""
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not math.isfinite(ts):
        return None
    try:
        return datetime.fromtimestamp(float(ts), UTC).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return None


class Columns:
    """The columns of a set of trials, learnt by ``observe`` (stage order is kept as seen,
    or as given by the pipeline's declaration)."""

    def __init__(self, stages: Sequence[str] = ()) -> None:
        self.stages: list[str] = list(stages)
        self.params: dict[str, list[str]] = {s: [] for s in self.stages}
        self.metrics: set[str] = set()
        self.frozen: list[str] | None = None  # the header once written: rows keep to it

    def _stage(self, name: str) -> None:
        if name not in self.params:
            self.stages.append(name)
            self.params[name] = []

    def observe(self, trial: Mapping[str, Any]) -> None:
        for stage, ps in (trial.get("params") or {}).items():
            self._stage(str(stage))
            known = self.params[str(stage)]
            for name in ps or {}:
                if name not in known:
                    known.append(str(name))
        for run in trial.get("stages") or ():
            self._stage(str(run.get("stage")))
        self.metrics.update(str(k) for k in (trial.get("metrics") or {}))

    def freeze(self) -> list[str]:
        """The header, fixed from now on (what a trial observed later adds is left out)."""
        if self.frozen is None:
            self.frozen = self.header()
        return self.frozen

    def header(self) -> list[str]:
        if self.frozen is not None:
            return self.frozen
        cols = [*BASE, *TIMES]
        cols += [f"param.{s}.{p}" for s in self.stages for p in self.params[s]]
        cols += [f"metric.{m}" for m in sorted(self.metrics)]
        cols += [f"stage.{s}.{f}" for s in self.stages for f in STAGE_FIELDS]
        return cols

    def row(self, trial: Mapping[str, Any]) -> dict[str, Any]:
        """The trial as ``{column: value}`` over ``header()`` (missing values are ``None``)."""
        out: dict[str, Any] = {c: trial.get(c) for c in BASE if c != "trial_id"}
        out["trial_id"] = trial.get("id")
        for c in TIMES:
            out[c] = iso(trial.get(c))
        params = trial.get("params") or {}
        for s in self.stages:
            ps = params.get(s) or {}
            for p in self.params[s]:
                out[f"param.{s}.{p}"] = ps.get(p)
        metrics = trial.get("metrics") or {}
        for m in sorted(self.metrics):
            out[f"metric.{m}"] = metrics.get(m)
        runs = {str(r.get("stage")): r for r in trial.get("stages") or ()}
        for s in self.stages:
            run = runs.get(s) or {}
            for f in STAGE_FIELDS:
                out[f"stage.{s}.{f}"] = run.get(f)
        return {c: out.get(c) for c in self.header()}


def declared_stages(pipeline: str) -> list[str]:
    """The stages a built-in pipeline declares, in order (none if the name is not built in:
    the stages then come from the trials)."""
    try:
        from pipelines import get_pipeline

        return list(get_pipeline(pipeline, allowed_modules=()).stage_names)
    except Exception:  # unknown or no longer importable: fall back on the trials
        return []


def columns_of(trials: Iterable[Mapping[str, Any]], stages: Sequence[str] = ()) -> Columns:
    cols = Columns(stages)
    for t in trials:
        cols.observe(t)
    return cols


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
FORMULA_PREFIX = "'"


def safe_text(text: str) -> str:
    """``text`` as a spreadsheet shows it literally: with ``FORMULA_PREFIX`` before a leading
    ``=``, ``+``, ``-``, ``@``, tab or carriage return."""
    return FORMULA_PREFIX + text if text.startswith(FORMULA_START) else text


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else ""
    if isinstance(v, list | dict | tuple):
        v = json.dumps(v, separators=(",", ":"), default=str)
    return safe_text(str(v))


def csv_line(values: Iterable[Any]) -> str:
    """One CSV record (RFC 4180 quoting, ``\\r\\n`` line end; text cells made formula-safe)."""
    return csv_lines([values])


def csv_lines(records: Iterable[Iterable[Any]]) -> str:
    """Several CSV records as one text (as ``csv_line`` writes each)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    for values in records:
        w.writerow([_cell(v) for v in values])
    return buf.getvalue()


def to_csv(trials: Sequence[Mapping[str, Any]], stages: Sequence[str] = ()) -> str:
    """Every trial as CSV text with a header line."""
    cols = columns_of(trials, stages)
    head = cols.header()
    parts = [csv_line(head)]
    parts += [csv_line(cols.row(t).values()) for t in trials]
    return "".join(parts)


def to_records(
    trials: Sequence[Mapping[str, Any]], stages: Sequence[str] = ()
) -> tuple[list[str], list[dict[str, Any]]]:
    """The columns and one ``{column: value}`` record per trial (the JSON export)."""
    cols = columns_of(trials, stages)
    return cols.header(), [cols.row(t) for t in trials]
