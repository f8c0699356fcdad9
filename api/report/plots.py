"""The report's PNG plots (matplotlib, Agg backend: no display needed).

Each function takes one or more ``StudyData`` and writes one PNG: the best value so far
against cumulative compute, the compute per stage (paid, loaded, saved by the cache), the
reused prefix depth over the trials, and the parameter importance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.report.analysis import StageTotals, best_so_far, compact, importance


@dataclass
class StudyData:
    """A study (``study_out`` dict), its trials (dicts with stage runs) and what follows."""

    study: dict[str, Any]
    trials: list[dict[str, Any]]
    rows: list[dict[str, Any]] = field(init=False)
    stages: list[StageTotals] = field(init=False)

    def __post_init__(self) -> None:
        self.rows = [compact(t) for t in self.trials]
        totals: dict[str, StageTotals] = {}
        for t in self.trials:
            if t.get("state") not in ("COMPLETE", "FAILED"):
                continue
            for run in t.get("stages") or ():
                name = str(run.get("stage"))
                tot = totals.setdefault(name, StageTotals(name, int(run.get("position") or 0)))
                tot.add(run)
        self.stages = sorted(totals.values(), key=lambda s: s.position)

    @property
    def label(self) -> str:
        s = self.study
        return f"#{s['id']} {s['optimizer']}" + (f" ({s['name']})" if s.get("name") else "")

    def curve(self) -> list[tuple[float, float]]:
        return best_so_far(self.rows, str(self.study.get("direction", "maximize")))

    def importance(self) -> list[dict[str, Any]]:
        return importance(self.rows)[0]


def literal(text: object) -> str:
    """``text`` as matplotlib shows it literally: a ``$`` would start math mode (a study
    named ``$x^$`` made ``savefig`` raise), so each is escaped."""
    return str(text).replace("$", r"\$")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_best(studies: Sequence[StudyData], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for d in studies:
        pts = d.curve()
        if pts:
            ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", label=literal(d.label))
    ax.set_xlabel("cumulative compute (s)")
    ax.set_ylabel(literal(f"best {studies[0].study.get('objective', 'value')} so far"))
    ax.set_title("Best so far against compute")
    ax.grid(alpha=0.3)
    if any(d.curve() for d in studies):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_stage_costs(studies: Sequence[StudyData], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.55 * max(1, sum(len(d.stages) for d in studies))))
    labels, y = [], 0
    parts = (
        ("compute_seconds", "computed", "C0"),
        ("load_seconds", "loaded", "C1"),
        ("saved_seconds", "saved by the cache", "C2"),
    )
    for d in studies:
        for st in d.stages:
            left = 0.0
            for attr_name, name, color in parts:
                v = float(getattr(st, attr_name))
                ax.barh(y, v, left=left, color=color, label=name if y == 0 else None)
                left += v
            labels.append(literal(f"{d.label}: {st.stage}" if len(studies) > 1 else st.stage))
            y += 1
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("Compute per stage")
    if labels:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def running_mean(ys: Sequence[float], k: int) -> list[float]:
    """The mean of each value and the ``k - 1`` before it (fewer at the start)."""
    out, total = [], 0.0
    for j, v in enumerate(ys):
        total += v
        if j >= k:
            total -= ys[j - k]
        out.append(total / min(j + 1, k))
    return out


def plot_reuse(studies: Sequence[StudyData], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for i, d in enumerate(studies):
        done = [r for r in d.rows if r["reused"] is not None]
        xs = [r["number"] for r in done]
        ys = [r["reused"] for r in done]
        ax.scatter(
            xs, [v + 0.08 * i for v in ys], s=8, alpha=0.5, color=f"C{i}", label=literal(d.label)
        )
        if ys:
            ax.plot(xs, running_mean(ys, max(1, len(ys) // 10)), color=f"C{i}", linewidth=1.5)
    ax.set_xlabel("trial number")
    ax.set_ylabel("stages reused from the cache")
    ax.set_title("Reuse over time (points; line: running mean)")
    ax.grid(alpha=0.3)
    if studies and any(d.rows for d in studies):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_importance(studies: Sequence[StudyData], path: Path) -> Path:
    plt = _plt()
    scores = [{it["param"]: it["importance"] for it in d.importance()} for d in studies]
    names = sorted(
        {n for s in scores for n in s}, key=lambda n: -max(s.get(n, 0.0) for s in scores)
    )
    fig, ax = plt.subplots(
        figsize=(7, 0.9 + 0.35 * max(1, len(names)) * max(1, len(studies)) ** 0.5)
    )
    h = 0.8 / max(1, len(studies))
    for i, (d, s) in enumerate(zip(studies, scores, strict=True)):
        ax.barh(
            [j + i * h for j in range(len(names))],
            [s.get(n, 0.0) for n in names],
            height=h,
            label=literal(d.label),
        )
    ax.set_yticks(
        [j + 0.4 - h / 2 for j in range(len(names))], [literal(n) for n in names], fontsize=8
    )
    ax.invert_yaxis()
    ax.set_xlabel("importance (extra-trees impurity, sums to 1)")
    ax.set_title("Parameter importance")
    if names and len(studies) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
