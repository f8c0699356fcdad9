"""The optimizer benchmark's figures (PNG, matplotlib's Agg backend; no display needed).

Per pipeline, from the runs of ``bench.optimizers``:

* ``<pipeline>.png``: best objective so far against cumulative compute seconds (mean over
  seeds; band: quartiles);
* ``<pipeline>-candidates.png``: candidates evaluated within the budget (mean, 95% interval);
* ``<pipeline>-cache.png``: the share of stage executions served by the cache.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_bars", "plot_best", "plot_pipeline"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _optimizers(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: list[str] = []
    for r in runs:
        if r["optimizer"] not in seen:
            seen.append(str(r["optimizer"]))
    return seen


def plot_best(runs: Sequence[Mapping[str, Any]], title: str, path: Path) -> None:
    """Best-so-far against cumulative compute seconds, one line per optimizer."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    budget = max((float(r["cost_spent"]) for r in runs), default=1.0) or 1.0
    grid = np.linspace(0, budget, 200)
    all_vals: list[float] = []
    for opt in _optimizers(runs):
        curves = []
        for r in (r for r in runs if r["optimizer"] == opt):
            c = np.array([row["cumulative_cost"] for row in r["rows"]], dtype=float)
            b = np.array(
                [np.nan if row["best_so_far"] is None else row["best_so_far"] for row in r["rows"]],
                dtype=float,
            )
            all_vals += [float(x) for x in b if np.isfinite(x)]
            idx = np.searchsorted(c, grid, side="right") - 1
            curves.append(np.where(idx >= 0, b[np.clip(idx, 0, None)], np.nan))
        if not curves:
            continue
        arr = np.array(curves)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            mean = np.nanmean(arr, axis=0)
            lo, hi = np.nanpercentile(arr, 25, axis=0), np.nanpercentile(arr, 75, axis=0)
        (line,) = ax.plot(grid, mean, label=opt, lw=2 if opt == "eeipu" else 1.2)
        ax.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.12)
    if all_vals and max(abs(v) for v in all_vals) > 10:
        ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("cumulative compute (s)")
    ax.set_ylabel("best objective so far (mean; band: quartiles)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mean_ci(xs: Sequence[float]) -> tuple[float, float]:
    xs = [x for x in xs if math.isfinite(x)]
    if not xs:
        return math.nan, 0.0
    if len(xs) < 2:
        return xs[0], 0.0
    from scipy import stats

    half = float(stats.t.ppf(0.975, len(xs) - 1)) * statistics.stdev(xs) / math.sqrt(len(xs))
    return statistics.fmean(xs), half


def plot_bars(
    runs: Sequence[Mapping[str, Any]], key: str, scale: float, ylabel: str, title: str, path: Path
) -> None:
    """One bar per optimizer: the mean of ``key`` over its runs (times ``scale``), with the
    95% t-interval over seeds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    opts = _optimizers(runs)
    means, halves = [], []
    for o in opts:
        m, h = _mean_ci([float(r.get(key, math.nan)) for r in runs if r["optimizer"] == o])
        means.append(scale * m if math.isfinite(m) else 0.0)
        halves.append(scale * h)
    colors = ["tab:red" if o == "eeipu" else "tab:gray" for o in opts]
    ax.bar(opts, means, yerr=halves, color=colors, capsize=4)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pipeline(
    runs: Sequence[Mapping[str, Any]], pipeline: str, out_dir: Path
) -> dict[str, str]:
    """The three figures of ``pipeline`` in ``out_dir``; their paths by kind."""
    mine = [r for r in runs if r["pipeline"] == pipeline]
    paths = {
        "best": out_dir / f"{pipeline}.png",
        "candidates": out_dir / f"{pipeline}-candidates.png",
        "cache": out_dir / f"{pipeline}-cache.png",
    }
    plot_best(mine, f"{pipeline}: best so far against compute", paths["best"])
    plot_bars(
        mine,
        "n_trials",
        1.0,
        "candidates evaluated (mean, 95% CI)",
        f"{pipeline}: candidates within the budget",
        paths["candidates"],
    )
    plot_bars(
        mine,
        "cache_share",
        100.0,
        "stage executions served by the cache (%)",
        f"{pipeline}: share of stages from the cache",
        paths["cache"],
    )
    return {k: str(v) for k, v in paths.items()}
