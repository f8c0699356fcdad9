"""The report's markdown summary of one study, or a comparison of several.

It names, per study: its pipeline, optimizer, state, trials (complete and failed), best
value, budget spent and the compute the cache saved; the best configuration; the compute
per stage; the five most important parameters; and, where the best trial reports them, its
metrics next to the retrained (``retrained_<metric>``) and original (``original_<metric>``)
models' (the unlearning pipelines).

Every text that comes from a user (names, pipeline and stage names, parameter values, error
strings, metric names) goes through ``md``: a markdown viewer shows it as plain text, with no
HTML of its own, no link or emphasis, and a table row stays one row.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from api.report.analysis import cache_share
from api.report.plots import StudyData

PREFIXES = ("retrained_", "original_")
BAND_LOW = "_band_low"


_MD_SPECIAL = str.maketrans(
    {
        "\\": "\\\\",
        "`": "\\`",
        "*": "\\*",
        "_": "\\_",
        "[": "\\[",
        "]": "\\]",
        "|": "\\|",
        "<": "&lt;",
        ">": "&gt;",
        "&": "&amp;",
    }
)
_WORD_UNDERSCORE = re.compile(r"(?<=\w)\\_(?=\w)")


def md(text: object) -> str:
    """``text`` as markdown that shows it literally on one line (whitespace collapsed,
    HTML and markdown syntax escaped; ``_`` inside a word, never emphasis, is kept)."""
    out = " ".join(str(text).split()).translate(_MD_SPECIAL)
    return _WORD_UNDERSCORE.sub("_", out)


def _finite(v: object) -> float | None:
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
        return None
    return float(v)


def num(v: object) -> str:
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
        return "–"
    return f"{v:.6g}"


def _best(d: StudyData) -> dict[str, Any] | None:
    bid = d.study.get("best_trial_id")
    return next((t for t in d.trials if t.get("id") == bid), None)


def _overview(studies: Sequence[StudyData]) -> list[str]:
    lines = [
        "| study | pipeline | optimizer | state | trials (complete / failed) | best | "
        "budget spent (s) | saved by the cache (s) | cache share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in studies:
        s = d.study
        saved = sum(st.saved_seconds for st in d.stages)
        share = cache_share(d.stages)
        lines.append(
            f"| {md(d.label)} | {md(s['pipeline'])} | {md(s['optimizer'])} | {md(s['state'])} | "
            f"{s['trials_done']} ({s['n_complete']} / {s['n_failed']}) | {num(s['best_value'])} | "
            f"{num(s['cost_spent'])} of {num(s['budget_seconds'])} | {num(saved)} | "
            f"{'–' if share is None else f'{100 * share:.1f}%'} |"
        )
    return lines


def unlearning_rows(metrics: Mapping[str, Any]) -> list[tuple[str, Any, Any, Any, str, str]]:
    """``(metric, unlearned, retrained, original, band, inside)`` for each metric that has a
    retrained or original counterpart or a pass band (``<m>_band_low`` / ``_high``: the
    retrained models' band the evaluate stage reports)."""
    bases = {k[len(p) :] for k in metrics for p in PREFIXES if k.startswith(p)}
    bases |= {k.removesuffix(BAND_LOW) for k in metrics if k.endswith(BAND_LOW)}
    out = []
    for b in sorted(bases):
        v = metrics.get(b)
        lo, hi = _finite(metrics.get(f"{b}{BAND_LOW}")), _finite(metrics.get(f"{b}_band_high"))
        value = _finite(v)
        band, inside = "–", "–"
        if lo is not None and hi is not None:
            band = f"{num(lo)}–{num(hi)}"
            if value is not None:
                inside = "yes" if lo <= value <= hi else "no"
        out.append(
            (b, v, metrics.get(f"retrained_{b}"), metrics.get(f"original_{b}"), band, inside)
        )
    return out


def _study_section(d: StudyData) -> list[str]:
    s = d.study
    out = [f"## {md(d.label)}", ""]
    out.append(
        f"{md(s['pipeline'])}, {md(s['direction'])} {md(s['objective'])}; state {md(s['state'])}"
        + (f" ({md(s['error'])})" if s.get("error") else "")
        + "."
    )
    best = _best(d)
    if best is not None:
        out += ["", f"Best value {num(best.get('value'))} (trial #{best.get('number')}):", ""]
        for stage, ps in (best.get("params") or {}).items():
            items = ", ".join(f"{md(k)}={md(v)}" for k, v in (ps or {}).items())
            out.append(f"- {md(stage)}: {items}")
        rows = unlearning_rows(best.get("metrics") or {})
        if rows:
            out += [
                "",
                "| metric | unlearned (best) | retrained | original | retrained models' band "
                "| inside |",
                "|---|---|---|---|---|---|",
            ]
            out += [
                f"| {md(m)} | {num(a)} | {num(b)} | {num(c)} | {bd} | {ok} |"
                for m, a, b, c, bd, ok in rows
            ]
    if d.stages:
        out += ["", "| stage | runs | cache hits | computed (s) | loaded (s) | saved (s) |"]
        out.append("|---|---|---|---|---|---|")
        out += [
            f"| {md(st.stage)} | {st.runs} | {st.hits} | {num(st.compute_seconds)} | "
            f"{num(st.load_seconds)} | {num(st.saved_seconds)} |"
            for st in d.stages
        ]
    imp = d.importance()[:5]
    if imp:
        out += [
            "",
            "Most important parameters: "
            + ", ".join(f"{md(i['param'])} ({i['importance']:.2f})" for i in imp)
            + ".",
        ]
    return [*out, ""]


def summary_markdown(studies: Sequence[StudyData], images: Mapping[str, str]) -> str:
    """The summary; ``images``: caption -> file name (relative to the summary)."""
    title = (
        f"# Study {studies[0].study['id']}"
        if len(studies) == 1
        else "# Comparison of studies " + ", ".join(str(d.study["id"]) for d in studies)
    )
    lines = [title, "", *_overview(studies), ""]
    for caption, name in images.items():
        lines += [f"![{caption}]({name})", ""]
    for d in studies:
        lines += _study_section(d)
    return "\n".join(lines)
