"""``eeipu bench unlearning``: every method vs the retrained model, over seeds and forget sizes.

Protocol (kept honest on purpose):

* every run uses one shared stage cache, so featurize/train (original + retrained model) are
  computed once per (forget fraction, seed) and reused by all eight methods;
* evaluation seeds are ``0 .. seeds-1`` (each seed = a new split, forget set, training run and
  attack subsample);
* tuned figures: the EEIPU optimizer searches the method's own hyperparameters, by default
  around the embedded defaults (``TuningPlan.around``), on CALIBRATION splits (tuning
  seeds, each with its own patients, forget set and retrained ensemble; never an
  evaluation seed). A trial is judged on ``TuningPlan.splits`` of them at once (seeds
  1000-1003: ``pipelines.replicate``, the mean over the splits), maximising
  ``TuningPlan.objective``: by default ``band_objective``, the retrain-based ``band_score``
  with a time charge (the calibration splits' retraining is a cached stage, paid once and
  shared by every trial), or the retrain-free ``objective``. The best five trials and the
  embedded defaults are then run on as many fresh calibration splits (1004-1007), and the
  one with the best mean over all eight is evaluated on the evaluation seeds, whose
  retrained models never guide the choice;
* agreement of the retrain-free objective with the retrain-based score is the Spearman rank
  correlation over all trials (default runs and tuning trials);
* pass bands: per split, the retrained ensemble's mean +- 2 sd (see
  ``pipelines.unlearning.verdict``); a row's ``<metric>_band`` is the mean over its seeds of
  the per-split bands, ``<metric>_pass_rate`` the fraction of seeds inside their own split's
  band, ``<metric>_ci`` a bootstrap 95% interval of the mean over seeds (each seed is a new
  split, so this resamples rows too); ``band_score`` (0 = at the bands' centres, -1 = on
  their edges) is the retrain-based score the tuned-vs-default comparison uses;
* the forgetting score uses ``FORGETTING_RUNS`` runs of each method against the retrained
  ensemble, on the evaluation runs only (tuning trials skip it).
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.unlearning.metrics import TOLERANCES
from pipelines.unlearning.pipelines import METHOD_NAMES, default_params, make_pipeline
from pipelines.unlearning.verdict import BAND_METRICS, TIME_LIMIT

__all__ = [
    "DataSource",
    "Extras",
    "TuningPlan",
    "aggregate",
    "band_checks",
    "bootstrap_ci",
    "modality_ablation",
    "objective_agreement",
    "rank_correlation",
    "run_bench",
    "tolerance_checks",
    "tuning_gain",
]

TABLE_METRICS = (
    "test_auc",
    "test_f1",
    "forget_auc",
    "forget_f1",
    "retain_auc",
    "mia_sample_svc",
    "mia_batch_svc",
    "mia_loss_auc",
    "forget_vs_retain_auc",
    "kl_forget",
    "objective",
    "retrain_score",
    "unlearn_seconds",
    "retrain_seconds",
)
# the per-row keys, next to their retrained references
BAND_TABLE = (
    "test_auc",
    "forget_auc",
    "retain_auc",
    "lira_forget_auc",
    "lira_forget_tpr_at_1pct_fpr",
    "lira_retain_auc",
    "forgetting_score",
    "retain_divergence",
    "test_divergence",
    "retain_loss",
    "band_score",
    "time_ratio",
    "time_ratio_wall",
)
CI_METRICS = (*BAND_METRICS, "forgetting_score", "band_score", "objective", "time_ratio")
FORGETTING_RUNS = 8
TUNING_SEED = 1000
CALIBRATION_SPLITS = 4  # calibration splits per tuning trial (seeds 1000-1003), then 1004-1007
N_RERANK = 5  # best trials re-run on fresh calibration splits, next to the defaults
TUNE_AROUND = 0.3  # tune within 30% of each parameter's range around the embedded defaults
TUNING_OBJECTIVES = ("band_objective", "objective")


def _log(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def rank_correlation(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho between two score lists (NaN when fewer than 3 finite pairs)."""
    from scipy.stats import spearmanr

    pairs = [(x, y) for x, y in zip(a, b, strict=True) if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 3:
        return float("nan")
    rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return float(rho)


def aggregate(runs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std (``<metric>_std``, ddof=1) of every metric per (method, config, fraction)."""
    groups: dict[tuple[str, str, float], list[Mapping[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["config"], r["forget_fraction"]), []).append(r)
    rows = []
    for (method, config, frac), rs in groups.items():
        row: dict[str, Any] = {
            "method": method,
            "config": config,
            "forget_fraction": frac,
            "n_seeds": len(rs),
            "seeds": [r["seed"] for r in rs],
        }
        keys = sorted(set().union(*(r["metrics"].keys() for r in rs)))
        for k in keys:
            if k in row:
                continue  # the group's own identity (e.g. forget_fraction) is not averaged
            vals = np.array([r["metrics"].get(k, np.nan) for r in rs], dtype=float)
            fin = vals[np.isfinite(vals)]
            row[k] = float(fin.mean()) if len(fin) else float("nan")
            row[f"{k}_std"] = float(fin.std(ddof=1)) if len(fin) > 1 else 0.0
        if "params" in rs[0]:
            row["params"] = rs[0]["params"]
        _band_fields(row, rs)
        rows.append(row)
    order = {m: i for i, m in enumerate(METHOD_NAMES)}
    rows.sort(key=lambda r: (r["forget_fraction"], r["config"], order.get(r["method"], 99)))
    return rows


def bootstrap_ci(
    vals: Sequence[float], seed: int = 0, n_boot: int = 2000, level: float = 0.95
) -> list[float]:
    """Percentile bootstrap interval of the mean of ``vals`` (resampling the values)."""
    v = np.asarray([x for x in vals if math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return [float("nan"), float("nan")]
    if len(v) == 1:
        return [float(v[0]), float(v[0])]
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (n_boot, len(v)))].mean(axis=1)
    a = (1.0 - level) / 2.0
    return [float(np.quantile(means, a)), float(np.quantile(means, 1.0 - a))]


def _inside(met: Mapping[str, float], m: str) -> bool:
    return bool(met[f"{m}_band_low"] <= met[m] <= met[f"{m}_band_high"])


def _band_fields(row: dict[str, Any], rs: Sequence[Mapping[str, Any]]) -> None:
    """``<m>_band``, ``<m>_pass_rate`` and ``<m>_ci`` of one aggregated row (in place)."""
    for m in BAND_METRICS:
        lo, hi = row.get(f"{m}_band_low"), row.get(f"{m}_band_high")
        if lo is None or hi is None:
            continue
        row[f"{m}_band"] = [lo, hi]
        inside = [
            float(_inside(r["metrics"], m))
            for r in rs
            if math.isfinite(r["metrics"].get(m, math.nan))
        ]
        row[f"{m}_pass_rate"] = float(np.mean(inside)) if inside else float("nan")
    for m in CI_METRICS:
        if m in row:
            row[f"{m}_ci"] = bootstrap_ci([float(r["metrics"].get(m, math.nan)) for r in rs])


def band_checks(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per non-retrain row: is the mean over seeds inside the mean band, per compared metric;
    by how much it misses (``excess_<m>``); time ratio; underpowered metrics (the original
    model's value inside the band: power < 1)."""
    out = []
    for r in rows:
        if r["method"] == "retrain":
            continue
        c: dict[str, Any] = {
            "method": r["method"],
            "config": r["config"],
            "forget_fraction": r["forget_fraction"],
            "n_seeds": r["n_seeds"],
        }
        ok = True
        for m in BAND_METRICS:
            band = r.get(f"{m}_band")
            if band is None:
                continue
            v = float(r[m])
            inside = band[0] <= v <= band[1]
            c[f"inside_{m}"] = inside
            c[f"excess_{m}"] = max(0.0, band[0] - v, v - band[1])
            c[f"pass_rate_{m}"] = r.get(f"{m}_pass_rate")
            ok = ok and inside
        c["time_ratio"] = float(r.get("time_ratio", math.nan))
        c["time_ratio_wall"] = float(r.get("time_ratio_wall", math.nan))
        c["time_ok"] = c["time_ratio"] <= TIME_LIMIT
        c["underpowered"] = [
            m for m in BAND_METRICS if float(r.get(f"{m}_band_power", math.inf)) < 1.0
        ]
        c["passes"] = bool(ok and c["time_ok"])
        out.append(c)
    return out


def tuning_gain(runs: Sequence[Mapping[str, Any]], metric: str = "band_score") -> dict[str, Any]:
    """Tuned minus default ``metric`` per (method, fraction), paired by evaluation seed, with
    a bootstrap 95% interval over the seeds."""
    by: dict[tuple[str, float, str], dict[int, float]] = {}
    for r in runs:
        key = (r["method"], r["forget_fraction"], r["config"])
        by.setdefault(key, {})[r["seed"]] = float(r["metrics"].get(metric, math.nan))
    out: dict[str, Any] = {}
    for (m, frac, cfg), vals in sorted(by.items()):
        if cfg != "tuned" or (m, frac, "default") not in by:
            continue
        dflt = by[(m, frac, "default")]
        diffs = [vals[s] - dflt[s] for s in sorted(vals) if s in dflt]
        out[f"{m}@{frac:g}"] = {
            "mean": float(np.nanmean(diffs)) if diffs else float("nan"),
            "ci": bootstrap_ci(diffs),
            "n_seeds": len(diffs),
        }
    return out


def _spread(runs: Sequence[Mapping[str, Any]], frac: float, metric: str) -> float:
    vals = [
        r["metrics"][metric]
        for r in runs
        if r["method"] == "retrain" and r["forget_fraction"] == frac and r["config"] == "default"
    ]
    return float(max(vals) - min(vals)) if len(vals) > 1 else 0.0


def tolerance_checks(
    rows: Sequence[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The issue's "done" criteria per (method, config, fraction).

    For test AUC, forget AUC and the per-sample member-rate: |mean - retrained mean| must be
    within max(retrained seed spread (max - min over seeds), tolerance); unlearning time at
    most a fifth of retraining's (mean process CPU time where the rows measured it, else mean
    wall time). ``excess_<m>`` says by how much a criterion is missed.
    """
    ref = {
        r["forget_fraction"]: r
        for r in rows
        if r["method"] == "retrain" and r["config"] == "default"
    }
    out = []
    for r in rows:
        if r["method"] == "retrain" or r["forget_fraction"] not in ref:
            continue
        rr = ref[r["forget_fraction"]]
        c: dict[str, Any] = {
            "method": r["method"],
            "config": r["config"],
            "forget_fraction": r["forget_fraction"],
        }
        ok = True
        for m, tol in TOLERANCES.items():
            allowed = max(_spread(runs, r["forget_fraction"], m), tol)
            diff = float(r[m] - rr[m])
            c[f"diff_{m}"] = diff
            c[f"allowed_{m}"] = allowed
            c[f"excess_{m}"] = max(0.0, abs(diff) - allowed)
            ok = ok and abs(diff) <= allowed
        # CPU time where both rows measured it (as the evaluate stage's time_ratio), else wall
        cpu = r.get("time_ratio_cpu", 0.0) >= 1.0 and rr.get("time_ratio_cpu", 0.0) >= 1.0
        u_key, r_key = (
            ("unlearn_cpu_seconds", "retrain_cpu_seconds")
            if cpu
            else ("unlearn_seconds", "retrain_seconds")
        )
        ratio = float(r[u_key] / max(rr[r_key], 1e-9))
        c["time_ratio"] = ratio
        c["time_ok"] = ratio <= 0.2
        c["passes"] = bool(ok and ratio <= 0.2)
        out.append(c)
    return out


def _warm_up() -> None:
    """One tiny forward/backward so the first timed method does not pay torch's start-up."""
    import torch

    m = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    loss = m(torch.randn(8, 4)).sum()
    loss.backward()
    opt.step()


@dataclass(frozen=True)
class DataSource:
    """Where the benchmark's pipelines get their data and run.

    Attributes:
        source: the data set (``"openi"``, ``"diabetes"``, ...).
        label: the label column the models predict.
        device: the torch device (``None``: the pipeline's default).
    """

    source: str = "openi"
    label: str = "abnormal"
    device: str | None = None

    def pipeline(self, method: str, frac: float, **options: Any) -> Any:
        """``make_pipeline`` for ``method`` at forget fraction ``frac`` on this data."""
        return make_pipeline(
            method, frac, source=self.source, label=self.label, device=self.device, **options
        )


@dataclass(frozen=True)
class TuningPlan:
    """Which methods ``run_bench`` tunes, and how.

    Attributes:
        methods: the methods tuned (each at every forget fraction).
        trials: tuning trials per (method, fraction); 0 tunes nothing.
        optimizer: the optimizer that tunes them.
        objective: the metric tuned and re-ranked on the tuning seeds (one of
            ``TUNING_OBJECTIVES``): ``band_objective`` (retrain-based, on the calibration
            splits) or ``objective`` (retrain-free).
        splits: calibration splits each tuning trial is judged on (their mean); as many
            fresh ones re-rank the best trials.
        around: in (0, 1], only the neighbourhood of the embedded defaults is searched
            (``SearchSpace.around``: that share of each numeric parameter's unit interval,
            categorical choices pinned to the defaults'); 0 searches the method's whole
            space (which, in 30 trials, never beat the defaults: docs/research.md).
    """

    methods: Sequence[str] = ("forget-mi", "multidelete")
    trials: int = 30
    optimizer: str = "eeipu"
    objective: str = "band_objective"
    splits: int = CALIBRATION_SPLITS
    around: float = TUNE_AROUND


@dataclass(frozen=True)
class Extras:
    """What ``run_bench`` reports beyond the method table.

    Attributes:
        agreement_sources: other sources on which the retrain-free objective's rank
            agreement with the retrain-based ``band_score`` is measured.
        ablate: the modality ablation (Open-i only).
    """

    agreement_sources: Sequence[str] = ()
    ablate: bool = False

    @classmethod
    def for_source(cls, source: str) -> Extras:
        """Open-i: agreement on the two bundled sources and the ablation; others: nothing."""
        if source == "openi":
            return cls(("diabetes", "breast_cancer"), True)
        return cls()


def _own_agreement(
    runs: Sequence[Mapping[str, Any]], tuning_metrics: Sequence[Mapping[str, float]]
) -> dict[str, Any]:
    every = [r["metrics"] for r in runs if r["method"] != "retrain"] + list(tuning_metrics)
    return {
        "spearman_objective_band_score": rank_correlation(
            [m["objective"] for m in every], [m["band_score"] for m in every]
        ),
        "spearman_objective_v1_band_score": rank_correlation(
            [m["objective_v1"] for m in every], [m["band_score"] for m in every]
        ),
        "n_runs": len(every),
    }


def _tune_method(
    method: str,
    frac: float,
    plan: TuningPlan,
    cache: Any,
    data: DataSource,
    log: Callable[[str], None],
) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """Tune ``method`` at ``frac`` on calibration splits as ``plan`` says; return (best
    params, trial metrics).

    Every trial is the mean over ``plan.splits`` calibration splits (``TUNING_SEED ..``).
    The ``N_RERANK`` best trials and the embedded defaults are re-run on as many fresh
    splits; the winner has the best mean over both sets. The fresh splits undo the winner's
    curse of picking the maximum of noisy trials.
    """
    from api.tuning import tune
    from eeipu import make_optimizer
    from pipelines.replicate import replicated

    trials, objective, k = plan.trials, plan.objective, plan.splits
    pipe = replicated(data.pipeline(method, frac, tune_upstream=False), k)
    space = pipe.space.around(pipe.defaults, plan.around) if plan.around > 0 else pipe.space
    opt = make_optimizer(
        plan.optimizer, space, direction="maximize", seed=0, n_warmup=min(10, trials)
    )
    t0 = time.perf_counter()
    res = tune(
        pipe,
        opt,
        float("inf"),
        cache=cache,
        max_trials=trials,
        run_seed=TUNING_SEED,
        objective=objective,
    )
    ok = [t for t in res.trials if t.value is not None]
    ok.sort(key=lambda t: -float(t.value or 0.0))
    log(
        f"  tuned {method} @ {frac:.0%}: {len(res.trials)} trials on {k} calibration splits, "
        f"{time.perf_counter() - t0:.1f} s, best {objective} "
        f"{ok[0].value if ok else float('nan'):.4f}"
    )
    cands: list[dict[str, Any]] = [dict(t.params) for t in ok[:N_RERANK]]
    dflt = pipe.canonical(pipe.defaults)
    if all(pipe.canonical(c) != dflt for c in cands):
        cands.append(dict(pipe.defaults))
    best_params: dict[str, Any] = dict(pipe.defaults)
    best_score = -math.inf
    for c in cands:
        score = float(
            np.mean(
                [
                    pipe.run(c, cache=cache, seed=s).metrics[objective]
                    for s in (TUNING_SEED, TUNING_SEED + k)
                ]
            )
        )
        if score > best_score:  # NaN never wins
            best_score, best_params = score, dict(c)
    chose = "the defaults" if pipe.canonical(best_params) == dflt else "a tuned configuration"
    log(f"  re-ranked {len(cands)} on {2 * k} calibration splits: {chose}, {best_score:.4f}")
    return best_params, [dict(t.metrics) for t in ok]


def _md_table(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> str:
    head = ["method", "config", "forget", "n", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], r["config"], f"{r['forget_fraction']:.0%}", str(r["n_seeds"])]
        for m in metrics:
            v, s = r.get(m, float("nan")), r.get(f"{m}_std", float("nan"))
            fmt = ".2f" if m.endswith("seconds") else ".3f"
            cells.append(f"{v:{fmt}} ± {s:{fmt}}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(v: Any, nd: int = 3) -> str:
    return "nan" if v is None or not math.isfinite(float(v)) else f"{float(v):.{nd}f}"


def _band_markdown(res: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The band table, the band checks, tuning gains, agreement and the ablation."""
    md = [
        "",
        "## Against the retrained band (mean of the per-split bands, mean ± 2 sd over "
        f"{_fmt(rows[0].get('band_n_retrains') if rows else None, 0)} retrains; "
        "pass rate = seeds inside their own split's band)",
        "",
        "| method | config | forget | " + " | ".join(BAND_METRICS) + " |",
        "|" + "---|" * (3 + len(BAND_METRICS)),
    ]
    for r in rows:
        cells = [r["method"], r["config"], f"{r['forget_fraction']:.0%}"]
        for m in BAND_METRICS:
            b = r.get(f"{m}_band", [math.nan, math.nan])
            rate = _fmt(r.get(f"{m}_pass_rate"), 1)
            cells.append(f"{_fmt(r.get(m))} [{_fmt(b[0])}, {_fmt(b[1])}] ({rate})")
        md.append("| " + " | ".join(cells) + " |")
    md += [
        "",
        f"## Per-example and retain-side figures (forgetting score: N = {res['forgetting_runs']} "
        "runs vs the retrained ensemble; divergence = mean Jensen-Shannon to the other retrains)",
        "",
        "| method | config | forget | LiRA TPR@1% | LiRA TPR@0.1% | forgetting score | retain div "
        "(retrain) | test div (retrain) | retain loss (retrain) | band_score | time ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:

        def pair(k: str, nd: int = 3, row: Mapping[str, Any] = r) -> str:
            return f"{_fmt(row.get(k), nd)} ({_fmt(row.get(f'retrained_{k}'), nd)})"

        cells = [
            r["method"],
            r["config"],
            f"{r['forget_fraction']:.0%}",
            _fmt(r.get("lira_forget_tpr_at_1pct_fpr")),
            _fmt(r.get("lira_forget_tpr_at_01pct_fpr")),
            _fmt(r.get("forgetting_score")),
            pair("retain_divergence", 4),
            pair("test_divergence", 4),
            pair("retain_loss"),
            _fmt(r.get("band_score")),
            _fmt(r.get("time_ratio")),
        ]
        md.append("| " + " | ".join(cells) + " |")
    md += ["", "## Band checks (mean over seeds inside the band; excess = distance outside)", ""]
    for c in res["band_checks"]:
        misses = [
            f"{m} +{c[f'excess_{m}']:.3f}" for m in BAND_METRICS if not c.get(f"inside_{m}", True)
        ]
        md.append(
            f"- {c['method']} ({c['config']}, {c['forget_fraction']:.0%}): "
            + ("PASS" if c["passes"] else "miss: " + (", ".join(misses) or "time"))
            + f"; time ratio {c['time_ratio']:.3f} (wall {_fmt(c.get('time_ratio_wall'))})"
            + (f"; underpowered: {', '.join(c['underpowered'])}" if c["underpowered"] else "")
        )
    if res["tuning_gain"]:
        md += ["", "## Tuned minus default band_score on the evaluation seeds (95% bootstrap)", ""]
        kept = res.get("tuned_is_default", {})
        for k, g in res["tuning_gain"].items():
            md.append(
                f"- {k}: {g['mean']:+.3f} [{g['ci'][0]:+.3f}, {g['ci'][1]:+.3f}] "
                f"over {g['n_seeds']} seeds"
                + (" (the re-rank kept the defaults)" if kept.get(k) else "")
            )
    if res["source_agreement"]:
        md += ["", "## Spearman agreement of the retrain-free objective with band_score", ""]
        for src, a in res["source_agreement"].items():
            md.append(
                f"- {src}: objective {_fmt(a['spearman_objective_band_score'])}, former "
                f"objective_v1 {_fmt(a['spearman_objective_v1_band_score'])} ({a['n_runs']} runs)"
            )
    ab = res.get("modality_ablation")
    if ab:
        md += ["", f"## Modality ablation (Open-i test AUC, seeds {ab['seeds']})", ""]
        for k, v in ab["test_auc"].items():
            md.append(f"- {k}: {v:.3f} ± {ab['test_auc_std'][k]:.3f}")
    return md


def _write_outputs(out_dir: str, res: Mapping[str, Any]) -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    all_rows = [*res["rows"], *res["tuned_rows"]]
    keys: list[str] = []
    for r in all_rows:
        for k in r:
            if k not in keys and k not in ("params", "seeds"):
                keys.append(k)
    csv_path = os.path.join(out_dir, "unlearning.csv")
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in all_rows:
            w.writerow(r)
    md = [
        "# Unlearning on Open-i: every method vs the retrained model",
        "",
        f"Mean ± std over seeds {res['seeds']}; data {res['source']}. "
        "Lower member-rates / forget AUC are not better per se: the target is the retrained "
        "model's value.",
        "",
        _md_table(all_rows, TABLE_METRICS),
        "",
        "## Attack strength (AUC telling held-out retain members from test non-members)",
        "",
        _md_table(
            all_rows,
            (
                "mia_sample_svc_strength",
                "mia_sample_svc_test_rate",
                "mia_batch_svc_strength",
                "mia_batch_svc_test_rate",
                "mia_loss_strength",
            ),
        ),
        "",
        "## Criteria (|mean - retrained mean| within max(retrained seed spread, tolerance); "
        "unlearning time <= 1/5 of retraining)",
        "",
        "| method | config | forget | Δtest_auc | Δforget_auc | Δmia_sample_svc | time ratio "
        "| passes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in res["checks"]:
        cells = [c["method"], c["config"], f"{c['forget_fraction']:.0%}"]
        for m in TOLERANCES:
            cells.append(f"{c[f'diff_{m}']:+.3f} (≤{c[f'allowed_{m}']:.3f})")
        cells += [f"{c['time_ratio']:.3f}", "yes" if c["passes"] else "no"]
        md.append("| " + " | ".join(cells) + " |")
    md += ["", "Retrained models' seed spread (max - min over seeds):", ""]
    for frac, sp in res["retrain_spread"].items():
        md.append(f"- forget {frac}: " + ", ".join(f"{k} {v:.3f}" for k, v in sp.items()))
    md += [
        "",
        "## Retrain-free objective vs retrain-based score (Spearman rank correlation)",
        "",
    ]
    for k, v in res["rank_correlation"].items():
        md.append(f"- {k}: {v:.3f}")
    if res["tuned_params"]:
        md += ["", f"## Tuned hyperparameters (chosen with `{res['tune_objective']}`)", ""]
        for k, v in res["tuned_params"].items():
            md.append(f"- {k}: `{v}`")
    md += _band_markdown(res, all_rows)
    md_path = os.path.join(out_dir, "unlearning.md")
    with open(md_path, "w") as fh:
        fh.write("\n".join(md) + "\n")
    return {"markdown": md_path, "csv": csv_path}


def run_bench(
    fractions: Sequence[float] = (0.03, 0.06, 0.10),
    seeds: int = 3,
    out_dir: str | None = None,
    methods: Sequence[str] = METHOD_NAMES,
    tuning: TuningPlan = TuningPlan(),
    cache: Any = None,
    data: DataSource = DataSource(),
    threads: int = 1,
    log: Callable[[str], None] = _log,
    extras: Extras | None = None,
) -> dict[str, Any]:
    """Run the comparison; returns ``rows`` (defaults), ``tuned_rows``, checks and correlations.

    ``extras`` (default: ``Extras.for_source(data.source)``): the agreement sources and
    the modality ablation.
    """
    ex = extras if extras is not None else Extras.for_source(data.source)
    import torch

    _check_arguments(fractions, seeds, methods, tuning)
    if threads > 0:
        torch.set_num_threads(threads)
    if cache is None:
        import tempfile

        from cache import open_cache

        cache = open_cache(tempfile.mkdtemp(prefix="eeipu-bench-unlearning-"))
    _warm_up()
    t_start = time.perf_counter()
    runs = _default_runs(fractions, seeds, methods, cache, data, log, t_start)
    tuned_params: dict[str, Any] = {}
    tuning_metrics: list[dict[str, float]] = []
    if tuning.trials > 0:
        tuning_metrics = _tuned_runs(fractions, seeds, tuning, cache, data, log, runs, tuned_params)
    agg = aggregate(runs)
    rows = [r for r in agg if r["config"] == "default"]
    tuned_rows = [r for r in agg if r["config"] == "tuned"]
    extra: dict[str, Any] = {}
    for src in ex.agreement_sources:
        log(f"objective agreement on {src} ...")
        extra[src] = objective_agreement(DataSource(src, device=data.device), cache)
    ablation = modality_ablation(seeds) if (ex.ablate and data.source == "openi") else None
    if ex.agreement_sources:
        extra[data.source] = _own_agreement(runs, tuning_metrics)
    res: dict[str, Any] = {
        "source": data.source,
        "label": data.label,
        "forget_fractions": list(fractions),
        "seeds": list(range(seeds)),
        "tuning_seeds": (
            list(range(TUNING_SEED, TUNING_SEED + 2 * tuning.splits)) if tuning.trials else []
        ),
        "optimizer": tuning.optimizer if tuning.trials else None,
        "tune_trials": tuning.trials,
        "tune_objective": tuning.objective if tuning.trials else None,
        "tune_splits": tuning.splits if tuning.trials else None,
        "tune_around": tuning.around if tuning.trials else None,
        "rows": rows,
        "tuned_rows": tuned_rows,
        "tuned_params": tuned_params,
        "tuned_is_default": {
            k: v == default_params(k.split("@")[0])["unlearn"] for k, v in tuned_params.items()
        },
        "checks": tolerance_checks(agg, runs),
        "retrain_spread": {
            f"{frac:g}": {m: _spread(runs, frac, m) for m in TOLERANCES} for frac in fractions
        },
        "rank_correlation": _correlations(runs, tuning_metrics),
        "rank_correlation_band": _correlations(runs, tuning_metrics, "band_score"),
        "source_agreement": extra,
        "band_checks": band_checks(agg),
        "tuning_gain": tuning_gain(runs),
        "modality_ablation": ablation,
        "forgetting_runs": FORGETTING_RUNS,
        "n_tuning_trials": len(tuning_metrics),
        "wall_seconds": time.perf_counter() - t_start,
    }
    if out_dir:
        res["files"] = _write_outputs(out_dir, res)
    return res


def _check_arguments(
    fractions: Sequence[float], seeds: int, methods: Sequence[str], tuning: TuningPlan
) -> None:
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if not fractions:
        raise ValueError("need at least one forget fraction")
    for f in fractions:
        if not 0.0 < f < 1.0:
            raise ValueError(f"forget fractions must be in (0, 1), got {f}")
    bad = [m for m in [*methods, *tuning.methods] if m not in METHOD_NAMES]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; choose from {list(METHOD_NAMES)}")
    if tuning.objective not in TUNING_OBJECTIVES:
        raise ValueError(
            f"unknown tuning objective {tuning.objective!r}; choose from {list(TUNING_OBJECTIVES)}"
        )
    if not 1 <= tuning.splits <= 16:
        raise ValueError(f"--tune-splits must be in 1..16, got {tuning.splits}")
    if not 0.0 <= tuning.around <= 1.0:
        raise ValueError(f"--tune-around must be in [0, 1], got {tuning.around}")
    if tuning.trials < 0:
        raise ValueError(f"--tune-trials must be >= 0, got {tuning.trials}")


def _default_runs(
    fractions: Sequence[float],
    seeds: int,
    methods: Sequence[str],
    cache: Any,
    data: DataSource,
    log: Callable[[str], None],
    t_start: float,
) -> list[dict[str, Any]]:
    """Every method (and ``retrain``) with its default parameters, at every fraction and seed."""
    runs: list[dict[str, Any]] = []
    order = list(methods)
    if "retrain" not in order:
        order.append("retrain")  # the reference of every gap and criterion
    for frac in fractions:
        for seed in range(seeds):
            for m in order:
                pipe = data.pipeline(m, frac, forgetting_runs=FORGETTING_RUNS)
                rec = pipe.run(pipe.defaults, cache=cache, seed=seed)
                runs.append(
                    {
                        "method": m,
                        "config": "default",
                        "forget_fraction": frac,
                        "seed": seed,
                        "metrics": rec.metrics,
                    }
                )
            log(f"defaults @ {frac:.0%} seed {seed}: done ({time.perf_counter() - t_start:.0f} s)")
    return runs


def _tuned_runs(
    fractions: Sequence[float],
    seeds: int,
    tuning: TuningPlan,
    cache: Any,
    data: DataSource,
    log: Callable[[str], None],
    runs: list[dict[str, Any]],
    tuned_params: dict[str, Any],
) -> list[dict[str, float]]:
    """Tune each method at each fraction, run the winner on every seed (into ``runs``, its
    parameters into ``tuned_params``); return the tuning trials' metrics."""
    tuning_metrics: list[dict[str, float]] = []
    for frac in fractions:
        for m in tuning.methods:
            params, trial_metrics = _tune_method(m, frac, tuning, cache, data, log)
            tuning_metrics += trial_metrics
            tuned_params[f"{m}@{frac:g}"] = params["unlearn"]
            pipe = data.pipeline(m, frac, tune_upstream=False, forgetting_runs=FORGETTING_RUNS)
            for seed in range(seeds):
                rec = pipe.run(params, cache=cache, seed=seed)
                runs.append(
                    {
                        "method": m,
                        "config": "tuned",
                        "forget_fraction": frac,
                        "seed": seed,
                        "metrics": rec.metrics,
                        "params": params["unlearn"],
                    }
                )
    return tuning_metrics


def _correlations(
    runs: Sequence[Mapping[str, Any]],
    tuning_metrics: Sequence[Mapping[str, float]],
    score: str = "retrain_score",
) -> dict[str, float]:
    """Spearman correlations of the retrain-free objective with a retrain-based score."""
    dflt = [r["metrics"] for r in runs if r["config"] == "default" and r["method"] != "retrain"]
    tuned = [r["metrics"] for r in runs if r["config"] == "tuned"]
    every = (*dflt, *tuned, *tuning_metrics)
    return {
        "default_runs": rank_correlation([m["objective"] for m in dflt], [m[score] for m in dflt]),
        "tuning_trials": rank_correlation(
            [m["objective"] for m in tuning_metrics], [m[score] for m in tuning_metrics]
        ),
        "all_trials": rank_correlation([m["objective"] for m in every], [m[score] for m in every]),
    }


AGREEMENT_METHODS = ("forget-mi", "multidelete", "neggrad-plus", "scrub")


def objective_agreement(
    data: DataSource,
    cache: Any,
    frac: float = 0.10,
    seeds: Sequence[int] = (2000, 2001),
    n_configs: int = 8,
    methods: Sequence[str] = AGREEMENT_METHODS,
) -> dict[str, Any]:
    """Spearman agreement of the retrain-free ``objective`` (and of the former
    ``objective_v1``) with the retrain-based ``band_score`` over the defaults and
    ``n_configs`` random configurations of each method, on development seeds."""
    import random

    obj, old, ref = [], [], []
    for m in methods:
        pipe = data.pipeline(m, frac, tune_upstream=False)
        rnd = random.Random(0)
        cfgs = [dict(pipe.defaults), *(pipe.space.sample(rnd) for _ in range(n_configs))]
        for c in cfgs:
            for s in seeds:
                met = pipe.run(c, cache=cache, seed=s).metrics
                obj.append(met["objective"])
                old.append(met["objective_v1"])
                ref.append(met["band_score"])
    return {
        "spearman_objective_band_score": rank_correlation(obj, ref),
        "spearman_objective_v1_band_score": rank_correlation(old, ref),
        "n_runs": len(obj),
        "forget_fraction": frac,
        "seeds": list(seeds),
    }


def modality_ablation(seeds: int, frac: float = 0.10) -> dict[str, Any]:
    """Test AUC on Open-i of the fusion model fed one modality at a time (the others set to
    their training mean, 0 after standardisation), of logistic regressions on the metadata
    and on age alone, and of the fusion model trained 5 epochs instead of 20; mean and sd
    over evaluation seeds ``0 .. seeds-1``."""
    from sklearn.linear_model import LogisticRegression

    from pipelines.unlearning.data import load_data, split_patients
    from pipelines.unlearning.features import featurize
    from pipelines.unlearning.metrics import classification
    from pipelines.unlearning.model import ModelConfig, TrainConfig, predict_proba, train_model
    from pipelines.unlearning.pipelines import FEATURIZE_DEFAULTS, TRAIN_DEFAULTS

    d = load_data("openi")
    n_meta = d.img_x.shape[1]
    td = TRAIN_DEFAULTS
    res: dict[str, list[float]] = {}
    for seed in range(seeds):
        sp = split_patients(d.groups, frac, seed)
        f = featurize(d, sp, str(FEATURIZE_DEFAULTS["text_encoder"]),
                      int(FEATURIZE_DEFAULTS["text_dim"]), int(FEATURIZE_DEFAULTS["image_dim"]),
                      seed)  # fmt: skip
        n_codes = f.image.shape[1] - n_meta
        zt, zi = np.zeros_like(f.text), np.zeros_like(f.image)
        codes, meta = f.image.copy(), f.image.copy()
        codes[:, n_codes:] = 0.0
        meta[:, :n_codes] = 0.0
        views = {
            "text only": (f.text, zi),
            "image codes only": (zt, codes),
            "metadata only": (zt, meta),
            "all (fusion)": (f.text, f.image),
        }
        cfg = ModelConfig(
            f.text.shape[1], f.image.shape[1], int(td["hidden"]), float(td["dropout"])
        )
        for name, (xt, xi) in views.items():
            for ep in (int(td["epochs"]), 5) if name == "all (fusion)" else (int(td["epochs"]),):
                tc = TrainConfig(float(td["lr"]), ep, float(td["weight_decay"]), 64)
                m = train_model(cfg, xt, xi, f.y, sp.train, tc, seed)
                p = predict_proba(cfg, m.state, xt, xi)
                label = name if ep == int(td["epochs"]) else f"{name}, {ep} epochs"
                res.setdefault(label, []).append(classification(p[sp.test], f.y[sp.test])[0])
        for name, cols in (("metadata logistic regression", slice(n_codes, None)),
                           ("age logistic regression", slice(n_codes, n_codes + 1))):  # fmt: skip
            lr = LogisticRegression(max_iter=2000).fit(f.image[sp.train][:, cols], f.y[sp.train])
            s = lr.predict_proba(f.image[sp.test][:, cols])
            res.setdefault(name, []).append(classification(s, f.y[sp.test])[0])
    return {
        "test_auc": {k: float(np.mean(v)) for k, v in res.items()},
        "test_auc_std": {
            k: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for k, v in res.items()
        },
        "seeds": list(range(seeds)),
        "forget_fraction": frac,
    }
