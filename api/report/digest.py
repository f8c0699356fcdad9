"""An in-memory digest of a study for the dashboard, kept up to date incrementally.

Finished trials never change (the store's contract), so a digest fetches each of them once:
``refresh`` asks the store for the trials numbered above the highest it has seen (``after``,
a page of ``CHUNK`` with their stage runs) and re-reads only the trials it saw unfinished.
It keeps compact rows, per-stage totals and the importance of the last fit, so a poll of a
5,000-trial study costs a couple of small queries, not a scan. A cold digest fills a page per
step: ``refresh_for`` steps until it is caught up or its time box is spent, so no request
waits long and the page shows the study filling in.

Reads use the store's read path only (SQLite in WAL: they never block the running study's
writes; PostgreSQL: MVCC reads).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from api.report.analysis import FINISHED, StageTotals, cache_share, compact, importance
from api.report.export import trial_dict
from api.store import Trial, TrialStore

CHUNK = 250
MAX_PENDING_REREADS = 64
MAX_DIGESTS = 32


class StudyDigest:
    """Compact rows and totals of one study (thread-safe)."""

    def __init__(self, study_id: int) -> None:
        self.study_id = study_id
        self.rows: dict[int, dict[str, Any]] = {}  # number -> compact row
        self.pending: dict[int, int] = {}  # number -> trial id, seen unfinished
        self.cursor = -1  # highest trial number fetched
        self.settled = -1  # every trial numbered <= settled is finished
        self.caught_up = False
        self.stages: dict[str, StageTotals] = {}
        self.n_complete = 0
        self._importance: tuple[int, list[dict[str, Any]], int] | None = None
        self.lock = threading.Lock()

    @property
    def warm(self) -> bool:
        """Whether the digest has been filled at least once."""
        return self.cursor >= 0 or self.caught_up

    def _take(self, t: Trial) -> None:
        d = trial_dict(t)  # no dataclass deep copies: a cold fill reads thousands
        row = compact(d)
        self.rows[t.number] = row
        if row["state"] in FINISHED:
            self.pending.pop(t.number, None)
            if row["state"] == "COMPLETE":
                self.n_complete += 1
            for run in d["stages"]:
                tot = self.stages.get(run["stage"])
                if tot is None:
                    tot = self.stages[run["stage"]] = StageTotals(run["stage"], run["position"])
                tot.add(run)
        else:
            self.pending[t.number] = t.id

    def step(self, store: TrialStore) -> None:
        """One page of new trials, then the unfinished ones seen before."""
        new = store.list_trials(self.study_id, limit=CHUNK, after=self.cursor, with_stages=True)
        seen = {t.number for t in new}
        for t in new:
            self._take(t)
            self.cursor = max(self.cursor, t.number)
        self.caught_up = len(new) < CHUNK
        for number, tid in list(self.pending.items())[:MAX_PENDING_REREADS]:
            if number in seen:
                continue
            again = store.get_trial(tid, with_stages=True)
            if again is not None:
                self._take(again)
        while (n := self.settled + 1) in self.rows and n not in self.pending:
            self.settled = n

    def refresh_for(self, store: TrialStore, seconds: float) -> None:
        """Step until caught up, or until another step (as long as the last one) would end
        past ``seconds`` from now (at least one step)."""
        start = time.perf_counter()
        with self.lock:
            self.step(store)
            last = time.perf_counter() - start
            while not self.caught_up:
                now = time.perf_counter()
                if now - start + last > seconds:
                    return
                self.step(store)
                last = time.perf_counter() - now

    def rows_after(self, after: int, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """Rows numbered above ``after`` in number order, at most ``limit``; and whether
        more remain."""
        with self.lock:
            numbers = sorted(n for n in self.rows if n > after)
            more = len(numbers) > limit
            return [self.rows[n] for n in numbers[:limit]], more

    def totals(self) -> dict[str, Any]:
        with self.lock:
            stages = sorted(self.stages.values(), key=lambda s: s.position)
            return {
                "stages": [s.to_dict() for s in stages],
                "cache_share": cache_share(stages),
                "saved_seconds": sum(s.saved_seconds for s in stages),
                "compute_seconds": sum(s.compute_seconds for s in stages),
                "load_seconds": sum(s.load_seconds for s in stages),
                "loaded": len(self.rows),
                "settled": self.settled,
                "complete": self.caught_up,
            }

    def importance(self) -> tuple[list[dict[str, Any]], int]:
        """The forest's importances, refitted only when completed trials were added."""
        with self.lock:
            if self._importance is not None and self._importance[0] == self.n_complete:
                return self._importance[1], self._importance[2]
            rows = list(self.rows.values())
            n = self.n_complete
        scores, fitted = importance(rows)
        with self.lock:
            self._importance = (n, scores, fitted)
        return scores, fitted


def _import_forest() -> None:
    import sklearn.ensemble  # noqa: F401 - importing scikit-learn takes a second or two


def preload() -> None:
    """Import scikit-learn in a background thread (call at startup: the first importance
    request then does not pay for the import, nor do other requests share the GIL with it)."""
    threading.Thread(target=_import_forest, name="eeipu-import-sklearn", daemon=True).start()


class Digests:
    """The digests of the most recently viewed studies (at most ``MAX_DIGESTS``)."""

    def __init__(self) -> None:
        self._items: OrderedDict[int, StudyDigest] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, study_id: int) -> StudyDigest:
        with self._lock:
            d = self._items.get(study_id)
            if d is None:
                d = self._items[study_id] = StudyDigest(study_id)
            self._items.move_to_end(study_id)
            while len(self._items) > MAX_DIGESTS:
                self._items.popitem(last=False)
            return d

    def drop(self, study_id: int) -> None:
        with self._lock:
            self._items.pop(study_id, None)
