"""``eeipu tune PIPELINE``: a local tuning run under a cost budget, with a progress bar.

The progress bar moves stage by stage within a trial and trial by trial: it shows the budget
spent, the trial and stage in hand, the best value and how many trials reused cached stages.
The run ends with a verdict: the best configuration, its metrics next to the reference models'
(``retrained_<m>``, ``original_<m>``), the pass bands of the unlearning pipelines' retrain
criteria (``pipelines.unlearning.verdict.judge``), and what the cache saved.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from api.cli.common import add_cache_arg, emit_json, open_cache_from

if TYPE_CHECKING:
    from api.tuning import TrialSummary, TuneResult
    from pipelines import Pipeline

OPTIMIZERS = ("eeipu", "ei", "eipu", "carbo", "random")


def register(sub: Any) -> None:
    p = sub.add_parser("tune", help="tune a pipeline's hyperparameters under a cost budget")
    p.add_argument("pipeline", help="built-in name or package.module:attribute")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="eeipu")
    p.add_argument("--budget", type=float, required=True, help="cost budget in seconds")
    p.add_argument("--max-trials", type=int, default=None, help="stop after N trials")
    p.add_argument("--objective", default=None, help="metric to optimise (default: pipeline's)")
    p.add_argument("--direction", choices=("maximize", "minimize"), default=None)
    p.add_argument("--seed", type=int, default=0, help="optimizer seed")
    p.add_argument("--run-seed", type=int, default=None, help="pipeline run seed (cache key)")
    p.add_argument(
        "--budget-margin",
        type=float,
        default=0.0,
        help="allowed overshoot in seconds: a trial predicted to exceed the remaining "
        "budget by more is not started",
    )
    p.add_argument(
        "--max-consecutive-failures",
        type=int,
        default=5,
        help="the study fails after this many failed trials in a row (1..1000)",
    )
    p.add_argument("--n-warmup", type=int, default=10, help="random trials before the models")
    p.add_argument(
        "--fix",
        action="append",
        default=None,
        metavar="STAGE[.PARAM=VALUE]",
        help="keep parameters out of the search (repeat): STAGE fixes that stage's parameters "
        "at the pipeline's defaults; STAGE.PARAM=VALUE fixes one (VALUE as JSON, else text). "
        "Recorded as the study's fixed_params",
    )
    p.add_argument(
        "--db",
        nargs="?",
        const="",
        default=None,
        help="run the study in the trial store at this URL (bare --db: the embedded SQLite "
        "file) instead of in memory; servers and `eeipu studies` see it",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    add_cache_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from api.cli.interrupts import Interrupts, Terminated
    from api.service import StudyRequest
    from api.store import open_store
    from api.tuning import MEMORY_STORE, StudyFailed, StudyRun
    from pipelines import get_pipeline

    _check_args(args)
    pipe = get_pipeline(args.pipeline)
    objective = args.objective or pipe.objective
    pipe.check_objective(objective)  # before any work: ValueError, exit 2
    fixed = parse_fixed(pipe, args.fix or [])
    bar, sinks, watch = _progress_bar(args)
    interrupts = Interrupts(threading.Event())
    pipe = watched_pipeline(pipe, fixed, watch, interrupts.guard)
    cache = open_cache_from(args)
    url = MEMORY_STORE
    if args.db is not None:
        from api.config import default_db

        url = args.db = args.db or default_db()
    req = StudyRequest(
        pipeline=args.pipeline,
        optimizer=args.optimizer,
        budget_seconds=args.budget if math.isfinite(args.budget) else 1e9,
        max_trials=args.max_trials,
        objective=objective,
        direction=args.direction,
        seed=args.seed,
        parallelism=1,
        name="eeipu tune",
        run_seed=args.run_seed,
        budget_margin=args.budget_margin,
        max_consecutive_failures=args.max_consecutive_failures,
        optimizer_options={"n_warmup": args.n_warmup},
        fixed_params=fixed or None,
    )
    store = open_store(url, pool_size=2)
    interrupts.install()
    rc = 0
    try:
        study = None
        try:
            study = StudyRun(
                store, pipe, req, cache, sinks=sinks, budget=args.budget, stop=interrupts.stop
            )
            res: TuneResult = study.run()
            interrupts.check()  # a signal between trials ended the loop: stop as interrupted
        except StudyFailed as e:
            res, rc = e.result, 1
            sys.stderr.write(f"eeipu: study failed: {e}\n")
        except (KeyboardInterrupt, Terminated) as e:
            if study is None:
                raise
            term = isinstance(e, Terminated)
            interrupts.ignore()  # one stop at a time
            res = study.interrupt("interrupted by " + ("SIGTERM" if term else "SIGINT"))
            rc = 143 if term else 130
            sys.stderr.write(f"eeipu: interrupted; study {study.study_id} is stopped (resumable)\n")
    finally:
        interrupts.restore()
        if bar is not None:
            bar.close()
        store.close()
    _report(args, res)
    return rc


def _check_args(args: argparse.Namespace) -> None:
    """The option checks of ``eeipu tune`` (``ValueError``, exit 2), before any work."""
    if not (args.budget > 0):
        raise ValueError(f"--budget must be positive, got {args.budget}")
    if args.max_trials is not None and args.max_trials < 1:
        raise ValueError(f"--max-trials must be >= 1, got {args.max_trials}")
    if args.budget_margin < 0:
        raise ValueError(f"--budget-margin must be >= 0, got {args.budget_margin}")
    if args.n_warmup < 1:
        raise ValueError(f"--n-warmup must be >= 1, got {args.n_warmup}")
    if not 1 <= args.max_consecutive_failures <= 1000:
        raise ValueError("--max-consecutive-failures must be between 1 and 1000")
    if not math.isfinite(args.budget) and args.max_trials is None:
        raise ValueError("an unlimited --budget needs --max-trials")


def parse_fixed(pipe: Pipeline, items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--fix`` items as ``fixed_params`` (``ValueError`` naming a bad item, exit 2)."""
    stages = {st.name: st for st in pipe.stages}
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        target, eq, raw = item.partition("=")
        stage, dot, name = target.strip().partition(".")
        if stage not in stages:
            raise ValueError(f"--fix {item!r}: unknown stage {stage!r}; stages are {list(stages)}")
        if not dot and not eq:  # a whole stage at the pipeline's defaults
            if stage not in pipe.defaults:
                raise ValueError(f"--fix {item!r}: the pipeline has no defaults; give PARAM=VALUE")
            out.setdefault(stage, {}).update(pipe.defaults[stage])
            continue
        if not (dot and eq and name):
            raise ValueError(f"--fix {item!r}: give STAGE or STAGE.PARAM=VALUE")
        space = stages[stage].space
        if name not in space:
            raise ValueError(
                f"--fix {item!r}: stage {stage!r} has no parameter {name!r}; "
                f"its parameters are {sorted(space)}"
            )
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        try:
            out.setdefault(stage, {})[name] = space[name].canonical(value)
        except (ValueError, TypeError) as e:
            raise ValueError(f"--fix {item!r}: {e}") from None
    return out


StageWatch = Callable[[str, str, float | None], None]  # (event, stage, compute seconds)


def watched_pipeline(
    pipe: Pipeline,
    fixed: Mapping[str, Mapping[str, Any]],
    watch: StageWatch | None,
    guard: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None,
) -> Pipeline:
    """A copy of ``pipe`` whose stages report their start and end to ``watch``, run inside
    ``guard`` (the region where an interrupt may raise), and whose fixed parameters are
    single-choice (the optimizer searches only the others).

    Names, versions and parameter values are unchanged, so are the cache keys: the copy
    reuses and feeds the same cache entries as ``pipe``.
    """
    from eeipu.space import Categorical, SearchSpace
    from pipelines import Stage

    if watch is None and guard is None and not fixed:
        return pipe
    new = copy.copy(pipe)
    stages = []
    for st in pipe.stages:
        space = dict(st.space)
        for name, value in fixed.get(st.name, {}).items():
            space[name] = Categorical([value])
        fn = st.fn if watch is None else _watched_fn(st.name, st.fn, watch)
        fn = fn if guard is None else guard(fn)
        copy_ = Stage(st.name, fn, space, version=st.version, load_seconds=st.load_seconds)
        copy_.wants_seed = st.wants_seed
        stages.append(copy_)
    new.stages = stages
    new.space = SearchSpace([(st.name, st.space) for st in stages])
    return new


def _watched_fn(stage: str, fn: Callable[..., Any], watch: StageWatch) -> Callable[..., Any]:
    from pipelines import Cost

    def run_stage(parent: Any, **kwargs: Any) -> Any:
        watch("start", stage, None)
        t0 = time.perf_counter()
        out = fn(parent, **kwargs)
        seconds = float(out.seconds) if isinstance(out, Cost) else time.perf_counter() - t0
        watch("end", stage, seconds)
        return out

    return run_stage


class Progress:
    """The progress display: a tqdm bar of the budget, advanced as each stage finishes and
    settled when the trial ends; its text names the trial and stage in hand, the best value
    and the trials that reused cached stages."""

    def __init__(self, budget: float, desc: str, file: IO[str] | None = None) -> None:
        from tqdm import tqdm

        total = budget if math.isfinite(budget) else None
        self.bar = tqdm(
            total=total,
            desc=desc,
            file=file or sys.stderr,
            leave=False,
            mininterval=0.0,
            bar_format=(
                "{l_bar}{bar}| {n:.1f}/{total:.1f}s budget [{elapsed}{postfix}]"
                if total is not None
                else "{desc}: {n:.1f}s spent [{elapsed}{postfix}]"
            ),
        )
        self.trial = 0  # the number of the trial in hand
        self.in_trial = 0.0  # what the bar advanced during the trial in hand
        self.reused = 0
        self.best: float | None = None
        self._show("starting")

    def _advance(self, step: float) -> None:
        if self.bar.total is not None:  # an overshooting last trial fills the bar, no more:
            step = min(step, max(0.0, self.bar.total - self.bar.n))  # tqdm drops a passed total
        self.bar.update(max(0.0, step))

    def _show(self, doing: str) -> None:
        best = "-" if self.best is None else f"{self.best:.4g}"
        self.bar.set_postfix_str(
            f"trial {self.trial + 1}: {doing}, best={best}, reused cache={self.reused}",
            refresh=True,
        )

    def stage(self, event: str, stage: str, seconds: float | None) -> None:
        """A stage of the trial in hand starts, or ends after ``seconds`` of compute."""
        if event == "end" and seconds is not None:
            self._advance(seconds)
            self.in_trial += seconds
            self._show(f"{stage} done")
        else:
            self._show(f"{stage}...")

    def trial_done(self, t: TrialSummary) -> None:
        """A trial finished: settle the bar to what it really cost."""
        self._advance(t.cost_paid - self.in_trial)
        self.in_trial = 0.0
        self.trial = t.number + 1
        self.reused += t.reused_depth > 0
        self.best = t.best_value
        self._show("proposing")

    def close(self) -> None:
        self.bar.close()


def _progress_bar(args: argparse.Namespace) -> tuple[Any, list[Any], StageWatch | None]:
    """The progress display (``None`` with ``--no-progress``), its trial sinks and its stage
    watch."""
    if args.no_progress:
        return None, [], None
    prog = Progress(args.budget, args.optimizer)
    return prog, [prog.trial_done], prog.stage


def cache_savings(trials: Sequence[TrialSummary]) -> dict[str, float]:
    """What reuse saved: the compute the reused stages cost when first computed."""
    saved = 0.0
    total = 0.0
    for t in trials:
        total += sum(t.stage_costs)
        saved += sum(t.stage_costs[: t.reused_depth])
    return {"saved_seconds": saved, "stage_seconds_without_cache": total}


def verdict(metrics: Mapping[str, float]) -> dict[str, Any] | None:
    """The retrain criteria's checks of ``metrics`` (``None`` when the pipeline reports no
    pass band: nothing to judge)."""
    try:
        from pipelines.unlearning.verdict import judge
    except ImportError:  # pragma: no cover - the unlearning package always ships it
        return None
    checks = judge(metrics)
    if not any(c.band is not None and c.name != "time_ratio" for c in checks):
        return None
    decided = [c for c in checks if c.passed is not None]
    return {
        "passed": bool(decided) and all(c.passed for c in decided),
        "checks": [
            {
                "name": c.name,
                "value": c.value,
                "band": list(c.band) if c.band else None,
                "passed": c.passed,
            }
            for c in checks
        ],
    }


def _report(args: argparse.Namespace, res: TuneResult) -> None:
    """Print the study's summary and verdict (JSON with ``--json``)."""
    out = res.summary()
    out["cache"] = cache_savings(res.trials)
    out["verdict"] = verdict(out.get("best_metrics") or {})
    if args.db is not None:
        out["db"] = {"url": args.db, "study_id": res.study_id, "state": res.state}
    if args.json:
        emit_json(out)
        return
    print(
        f"{out['optimizer']} on {out['pipeline']}: {out['n_trials']} trials "
        f"({out['n_trials_reusing_cache']} reused a cached prefix), "
        f"cost {out['cost_spent']:.3f}s of {res.budget:.3f}s "
        f"(overshoot {out['overshoot']:.3f}s), stopped: {out['stop_reason']}"
    )
    print(
        f"wall {out['wall_seconds']:.1f}s: stages {out['compute_seconds']:.1f}s, proposals "
        f"{out['proposal_seconds']:.1f}s"
        + ("" if out["count_proposal_time"] else " (proposals not in the budget)")
    )
    print(f"best {out['objective']} = {out['best_value']} (trial {out['best_trial']})")
    for stage, params in (out["best_params"] or {}).items():
        print(f"  {stage}: {params}")
    _print_metrics(out.get("best_metrics") or {}, out["verdict"])
    _print_verdict(out)


REFERENCES = ("retrained", "original")


def _print_metrics(metrics: dict[str, float], judged: Mapping[str, Any] | None = None) -> None:
    """The best trial's metrics; where the pipeline also reports reference models' values
    (``retrained_<m>``, ``original_<m>``, as the unlearning pipelines do), side by side,
    with the pass band and outcome of each metric the retrain criteria judge."""
    if not metrics:
        return
    refs = [r for r in REFERENCES if any(k.startswith(f"{r}_") for k in metrics)]
    bands = {c["name"]: c for c in (judged or {}).get("checks", [])}
    prefixes = (*(f"{r}_" for r in refs), "gap_", "info_")
    base = sorted(k for k in metrics if not k.startswith(prefixes) and "_band_" not in k)
    paired = [k for k in base if any(f"{r}_{k}" in metrics for r in refs) or k in bands]
    if not paired:
        print("metrics of the best trial:")
        for k in base:
            print(f"  {k:<28} {metrics[k]:.4g}")
        return
    print(f"metrics of the best trial next to the {' and '.join(refs) or 'reference'} model's:")
    head = f"  {'metric':<28} {'best trial':>11}" + "".join(f" {r:>11}" for r in refs)
    print(head + (f"  {'pass band':>17} {'':>4}" if bands else ""))
    for k in paired:
        cols = "".join(
            f" {metrics[f'{r}_{k}']:>11.4f}" if f"{r}_{k}" in metrics else f" {'':>11}"
            for r in refs
        )
        print(f"  {k:<28} {metrics[k]:>11.4f}{cols}{_band_cell(bands.get(k))}")
    for k in base:
        if k not in paired:
            print(f"  {k:<28} {metrics[k]:>11.4g}")


def _band_cell(check: Mapping[str, Any] | None) -> str:
    if check is None:
        return ""
    band = check["band"]
    shown = f"[{band[0]:.3f}, {band[1]:.3f}]" if band else "(no band)"
    outcome = {True: "pass", False: "FAIL", None: "?"}[check["passed"]]
    return f"  {shown:>17} {outcome:>4}"


def _print_verdict(out: Mapping[str, Any]) -> None:
    """The closing lines: the retrain criteria's outcome and what the cache saved."""
    v = out.get("verdict")
    if v is not None:
        failed = [c["name"] for c in v["checks"] if c["passed"] is False]
        unknown = [c["name"] for c in v["checks"] if c["passed"] is None]
        if v["passed"]:
            line = "PASSES the retrain criteria: every judged metric is inside the band"
        else:
            line = "FAILS the retrain criteria: outside the band: " + (", ".join(failed) or "-")
        if unknown:
            line += f" (undecided: {', '.join(unknown)})"
        print(f"verdict: the best configuration {line}")
    c = out["cache"]
    n, n_re = out["n_trials"], out["n_trials_reusing_cache"]
    print(
        f"cache: {n_re} of {n} trials reused cached stages, saving {c['saved_seconds']:.1f}s "
        f"of stage compute ({c['stage_seconds_without_cache']:.1f}s without the cache, "
        f"{out['cost_spent']:.1f}s spent)"
    )
