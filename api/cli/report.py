"""``eeipu report STUDY [STUDY...] --out DIR``: PNG plots and a markdown summary.

One study: its report; several: a comparison (one line, bar group or point colour per
study). Read from the store at ``--db`` or through a server (``--server URL``). Writes into
``DIR``: ``best_so_far.png``, ``stage_costs.png``, ``reuse.png``, ``importance.png`` and
``summary.md`` (see ``api.report.plots`` and ``api.report.summary``), and prints their paths.
Every study is read before ``DIR`` is created; each file is written to a temporary name and
renamed (``api.report.files``), so a link already in ``DIR`` is replaced, never followed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from api.cli.studies import _add_source_args, _Source, _study_id

PLOTS = (
    ("best so far against compute", "best_so_far.png", "plot_best"),
    ("compute per stage", "stage_costs.png", "plot_stage_costs"),
    ("reuse over time", "reuse.png", "plot_reuse"),
    ("parameter importance", "importance.png", "plot_importance"),
)


def register(sub: Any) -> None:
    p = sub.add_parser("report", help="PNG plots and a markdown summary of studies")
    p.add_argument("study_ids", type=_study_id, nargs="+", metavar="STUDY", help="study ids")
    p.add_argument("--out", required=True, help="directory to write the report into")
    _add_source_args(p)
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from api.report import files, plots
    from api.report.summary import summary_markdown

    if len(set(args.study_ids)) != len(args.study_ids):
        raise ValueError("a study is named twice")
    out = files.out_dir(args.out)
    src = _Source(args)
    try:  # every study is read before anything is written
        studies = [
            plots.StudyData(src.study(sid), src.trials(sid, stages=True)) for sid in args.study_ids
        ]
    finally:
        src.close()
    files.make_dir(out)
    images = {}
    for caption, name, fn in PLOTS:
        draw: Callable[[list[plots.StudyData], Path], Path] = getattr(plots, fn)
        files.write_with(out / name, partial(draw, studies))
        images[caption] = name
    md = out / "summary.md"
    files.write_text(md, [summary_markdown(studies, images)])
    for name in [*images.values(), md.name]:
        print(out / name)
    sys.stdout.flush()
    return 0
