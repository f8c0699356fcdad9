"""Defining staged pipelines and running one configuration through the stage cache.

A pipeline is an ordered list of stages. Stage ``k`` is a function ``fn(parent, **params)``
that gets the previous stage's output (``None`` for the first stage) and its own
hyperparameters; the last stage returns a ``{metric: float}`` mapping. A stage's identity for
the cache is ``(name, version, canonical params, parent key)``; change ``version`` when the
code of a stage changes, so that exactly that stage and its descendants are recomputed.

A stage's cost is its measured wall time, unless it returns ``Cost(output, seconds=s)``: then
``s`` is its cost (synthetic benchmarks declare costs instead of sleeping).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cache import StageCache, root_key, stage_key
from eeipu.space import Param, Scalar, SearchSpace

COST_FLOOR = 1e-6  # seconds; costs are modelled in log space, so they must be positive

__all__ = ["COST_FLOOR", "Cost", "Pipeline", "RunRecord", "Stage", "StageRecord"]


@dataclass
class Cost:
    """A stage output with a declared cost in seconds (used instead of measured wall time)."""

    output: Any
    seconds: float


class Stage:
    """One step of a pipeline.

    Args:
        name: unique within the pipeline; part of the cache key.
        fn: ``fn(parent, **params)``; if it accepts a ``seed`` keyword that is not a
            hyperparameter, it receives the run's seed (which is part of the root key).
        space: the stage's hyperparameters.
        version: bump when the stage's code changes; part of the cache key.
        load_seconds: a DECLARED cost of loading the stage's cached output, charged and
            offered to the optimizer instead of the measured load time. For stages that
            declare their compute cost too (``Cost``, benchmarks): the measured load time
            of a tiny output is millisecond noise that would make runs unrepeatable.
    """

    def __init__(
        self,
        name: str,
        fn: Callable[..., Any],
        space: Mapping[str, Param] | None = None,
        version: str = "1",
        load_seconds: float | None = None,
    ) -> None:
        if not name or "/" in name:
            raise ValueError(f"invalid stage name {name!r}")
        if load_seconds is not None and not (math.isfinite(load_seconds) and load_seconds >= 0):
            raise ValueError(f"load_seconds must be a finite number >= 0, got {load_seconds!r}")
        self.load_seconds = load_seconds
        self.name = name
        self.fn = fn
        self.space: dict[str, Param] = dict(space or {})
        self.version = str(version)
        try:
            sig = inspect.signature(fn)
            self.wants_seed = "seed" in sig.parameters and "seed" not in self.space
        except (TypeError, ValueError):
            self.wants_seed = False

    def __repr__(self) -> str:
        return f"Stage({self.name!r}, version={self.version!r}, params={sorted(self.space)})"

    def load_cost(self, measured: float) -> float:
        """What loading this stage's cached output costs: declared, else ``measured``."""
        return measured if self.load_seconds is None else self.load_seconds


@dataclass
class StageRecord:
    """What happened to one stage in one run."""

    stage: str
    key: str
    hit: bool
    cost_seconds: float  # compute cost paid in this run (0 on a hit)
    load_seconds: float  # time to load the cached output (0 on a miss, or when skipped)
    bytes: int
    original_cost_seconds: float  # what computing it cost when it was first computed
    skipped: bool = False  # covered by a deeper cached prefix: neither loaded nor computed
    cache_error: str | None = None  # why the computed output was not stored (e.g. disk full)


@dataclass
class RunRecord:
    """The result of running one configuration."""

    pipeline: str
    params: dict[str, dict[str, Scalar]]
    seed: int | None
    stages: list[StageRecord]
    metrics: dict[str, float]
    reused_depth: int  # number of leading stages taken from the cache
    total_cost_seconds: float  # compute paid + load time
    wall_seconds: float
    events: list[str] = field(default_factory=list)

    @property
    def cache_errors(self) -> list[str]:
        """Why stage outputs of this run were not cached: the run still counts, but those
        stages will be recomputed next time."""
        return [f"{r.stage}: {r.cache_error}" for r in self.stages if r.cache_error]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Pipeline:
    """An ordered list of stages with an objective.

    Args:
        name: the pipeline's name (a built-in name or whatever the user chooses).
        stages: the stages, in order; the last returns metrics.
        objective: the metric to optimise by default.
        direction: ``"maximize"`` or ``"minimize"``.
        fingerprint: identity of the pipeline's input data (a string, or a zero-argument
            callable evaluated lazily); it is part of the root key.
        metrics: every metric name the last stage reports (default: just ``objective``);
            the valid objectives, and what a run checks the last stage's report against.
        defaults: a recommended configuration (``{stage: {param: value}}``, every stage), or
            none; shown by ``describe`` and validated against the space here.
    """

    def __init__(
        self,
        name: str,
        stages: Sequence[Stage],
        objective: str = "value",
        direction: str = "maximize",
        fingerprint: str | Callable[[], str] = "",
        description: str = "",
        metrics: Sequence[str] | None = None,
        defaults: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
        declared = (objective,) if metrics is None else tuple(metrics)
        if isinstance(metrics, str) or not all(isinstance(m, str) and m for m in declared):
            raise ValueError(f"metrics must be a sequence of non-empty names, got {metrics!r}")
        if len(set(declared)) != len(declared):
            raise ValueError(f"metric names must be unique, got {list(declared)}")
        if objective not in declared:
            raise ValueError(f"objective {objective!r} is not among the metrics {list(declared)}")
        self.name = name
        self.stages = list(stages)
        self.metrics: tuple[str, ...] = declared
        self.objective = objective
        self.direction = direction
        self._fingerprint = fingerprint
        self._fp_value: str | None = fingerprint if isinstance(fingerprint, str) else None
        self.description = description
        self.space = SearchSpace([(s.name, s.space) for s in self.stages])
        self.defaults: dict[str, dict[str, Scalar]] = (
            self.canonical(defaults) if defaults is not None else {}
        )

    @property
    def fingerprint(self) -> str:
        if self._fp_value is None:
            assert callable(self._fingerprint)
            self._fp_value = str(self._fingerprint())
        return self._fp_value

    def check_objective(self, name: str) -> None:
        """Raise ``ValueError`` unless ``name`` is one of this pipeline's metrics."""
        if not isinstance(name, str) or name not in self.metrics:
            raise ValueError(
                f"objective {name!r} is not a metric of {self.name}; "
                f"its metrics are {list(self.metrics)}"
            )

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    def describe(self) -> dict[str, Any]:
        """Plain-data description (used by the CLI and the service)."""
        return {
            "name": self.name,
            "objective": self.objective,
            "direction": self.direction,
            "description": self.description,
            "metrics": list(self.metrics),
            "defaults": {k: dict(v) for k, v in self.defaults.items()},
            "stages": [
                {
                    "name": s.name,
                    "version": s.version,
                    "space": {k: p.to_dict() for k, p in sorted(s.space.items())},
                }
                for s in self.stages
            ],
        }

    # ------------------------------------------------------------------ keys
    def canonical(self, params: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Scalar]]:
        """Validate a configuration (``ValueError`` naming the bad stage/parameter)."""
        if not isinstance(params, Mapping) or not all(
            isinstance(v, Mapping) for v in params.values()
        ):
            raise ValueError("params must map stage name -> {parameter: value}")
        return self.space.canonical(params)

    def keys(self, params: Mapping[str, Mapping[str, Any]], seed: int | None = None) -> list[str]:
        """The cache key of every stage for a canonical configuration."""
        parent = root_key(self.fingerprint, seed)
        out = []
        for s in self.stages:
            parent = stage_key(s.name, s.version, params.get(s.name, {}), parent)
            out.append(parent)
        return out

    def root(self, seed: int | None = None) -> str:
        return root_key(self.fingerprint, seed)

    # ------------------------------------------------------------------ running
    def run(
        self,
        params: Mapping[str, Mapping[str, Any]],
        cache: StageCache | None = None,
        seed: int | None = None,
        reuse: bool = True,
    ) -> RunRecord:
        """Run one configuration, reusing the deepest cached prefix.

        Args:
            params: ``{stage: {param: value}}``; validated and canonicalised.
            cache: where stage outputs are looked up and stored (``None``: no caching).
            seed: the run's seed, passed to stages that take one; part of the root key.
            reuse: ``False`` recomputes every stage (the outputs are still stored).
        """
        t_start = time.perf_counter()
        p = self.canonical(params)
        keys = self.keys(p, seed)
        k_total = len(self.stages)
        records: list[StageRecord | None] = [None] * k_total
        events: list[str] = []
        n_events0 = len(cache.events) if cache is not None else 0
        value: Any = None
        depth = 0

        def body() -> None:
            nonlocal value, depth
            if cache is not None and reuse:
                for j in range(k_total, 0, -1):
                    if not cache.contains(keys[j - 1]):
                        continue
                    hit = cache.get(keys[j - 1])
                    if hit is None:  # corrupt: reported and dropped by the cache
                        continue
                    value, depth = hit.value, j
                    records[j - 1] = StageRecord(
                        stage=self.stages[j - 1].name,
                        key=keys[j - 1],
                        hit=True,
                        cost_seconds=0.0,
                        load_seconds=self.stages[j - 1].load_cost(hit.load_seconds),
                        bytes=hit.info.bytes,
                        original_cost_seconds=hit.info.compute_cost,
                    )
                    for i in range(j - 1):
                        info = cache.info(keys[i])
                        records[i] = StageRecord(
                            stage=self.stages[i].name,
                            key=keys[i],
                            hit=True,
                            cost_seconds=0.0,
                            load_seconds=0.0,
                            bytes=info.bytes if info else 0,
                            original_cost_seconds=info.compute_cost if info else 0.0,
                            skipped=True,
                        )
                    break
            parent_key = keys[depth - 1] if depth else self.root(seed)
            for i in range(depth, k_total):
                records[i], value = self._run_stage(i, p, keys[i], parent_key, value, cache, seed)
                parent_key = keys[i]

        if cache is not None:
            with cache.pin(keys):
                body()
            events = cache.events[n_events0:]
        else:
            body()

        metrics = self._metrics(value)
        recs = [r for r in records if r is not None]
        return RunRecord(
            pipeline=self.name,
            params=p,
            seed=seed,
            stages=recs,
            metrics=metrics,
            reused_depth=depth,
            total_cost_seconds=sum(r.cost_seconds + r.load_seconds for r in recs),
            wall_seconds=time.perf_counter() - t_start,
            events=events,
        )

    def _run_stage(
        self,
        i: int,
        p: Mapping[str, Mapping[str, Scalar]],
        key: str,
        parent_key: str,
        parent_value: Any,
        cache: StageCache | None,
        seed: int | None,
    ) -> tuple[StageRecord, Any]:
        stage = self.stages[i]
        kwargs: dict[str, Any] = dict(p[stage.name])
        if stage.wants_seed:
            kwargs["seed"] = seed

        def compute() -> tuple[Any, float]:
            t0 = time.perf_counter()
            out = stage.fn(parent_value, **kwargs)
            dt = time.perf_counter() - t0
            if isinstance(out, Cost):
                if not (isinstance(out.seconds, int | float) and math.isfinite(out.seconds)):
                    raise ValueError(f"stage {stage.name!r} declared a non-finite cost")
                return out.output, max(float(out.seconds), COST_FLOOR)
            return out, max(dt, COST_FLOOR)

        if cache is None:
            out, cost = compute()
            return StageRecord(stage.name, key, False, cost, 0.0, 0, cost), out
        with cache.compute_lock(key):
            hit = cache.get(key)  # another worker may have computed it meanwhile
            if hit is not None:
                rec = StageRecord(
                    stage.name,
                    key,
                    True,
                    0.0,
                    stage.load_cost(hit.load_seconds),
                    hit.info.bytes,
                    hit.info.compute_cost,
                )
                return rec, hit.value
            out, cost = compute()
            info, cache_error = cache.try_put(
                key,
                out,
                pipeline=self.name,
                stage=stage.name,
                params=dict(p[stage.name]),
                parent=parent_key,
                compute_cost=cost,
                extra={"version": stage.version, "depth": i + 1},
            )
        size = info.bytes if info is not None else 0
        rec = StageRecord(stage.name, key, False, cost, 0.0, size, cost, cache_error=cache_error)
        return rec, out

    def _metrics(self, value: Any) -> dict[str, float]:
        if not isinstance(value, Mapping):
            raise TypeError(
                f"the last stage of {self.name!r} must return a mapping of metrics, "
                f"got {type(value).__name__}"
            )
        out: dict[str, float] = {}
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                continue  # non-numeric extras (e.g. notes) are not metrics
            out[str(k)] = float(v)
        if self.objective not in out:
            raise KeyError(
                f"pipeline {self.name!r}: objective {self.objective!r} missing from the last "
                f"stage's metrics {sorted(out)}"
            )
        undeclared = sorted(set(out) - set(self.metrics))
        missing = [m for m in self.metrics if m not in out]
        if undeclared or missing:
            raise ValueError(
                f"pipeline {self.name!r}: the last stage's metrics do not match the declared "
                f"ones (undeclared: {undeclared}, missing: {missing}); declare every metric "
                "the last stage reports with Pipeline(..., metrics=...)"
            )
        return out

    # ------------------------------------------------------------------ cache queries
    def cached_prefixes(self, cache: StageCache, seed: int | None = None) -> list[dict[str, Any]]:
        """Every proper prefix of this pipeline the cache holds now, as plain data.

        Each item: ``depth`` (stages reused), ``params`` (``{stage: params}`` for the first
        ``depth`` stages), ``key``, ``load_seconds`` (measured, else estimated from the bytes
        and the measured read bandwidth) and ``compute_seconds`` (the chain's compute cost
        that reusing it saves). This is what the optimizer's prefix pool is built from.
        """
        ents = cache.entries()
        bw = cache.read_bandwidth(ents)
        by_parent: dict[tuple[str, str], list[Any]] = {}
        for e in ents:
            by_parent.setdefault((e.parent, e.stage), []).append(e)
        out: list[dict[str, Any]] = []
        frontier: list[tuple[str, dict[str, dict[str, Any]], float]] = [(self.root(seed), {}, 0.0)]
        for d, stage in enumerate(self.stages[:-1], start=1):
            nxt = []
            for parent, params, saved in frontier:
                for e in by_parent.get((parent, stage.name), []):
                    # ``parent`` is the checked key of the first d - 1 stages, so this is
                    # ``keys_prefix`` of the whole prefix, one stage key instead of d.
                    if stage_key(stage.name, stage.version, e.params, parent) != e.key:
                        continue  # another version of the stage, or params not canonical
                    pp = {**params, stage.name: dict(e.params)}
                    total = saved + e.compute_cost
                    out.append(
                        {
                            "depth": d,
                            "params": pp,
                            "key": e.key,
                            "load_seconds": stage.load_cost(cache.estimate_load_seconds(e, bw)),
                            "compute_seconds": total,
                            "bytes": e.bytes,
                        }
                    )
                    nxt.append((e.key, pp, total))
            frontier = nxt
        return out

    def prefix_status(
        self,
        params: Mapping[str, Mapping[str, Any]],
        cache: StageCache,
        seed: int | None = None,
    ) -> list[dict[str, Any]]:
        """For one configuration: which of its prefixes are cached now, and what loading each
        would cost. One item per stage: ``depth``, ``key``, ``cached``, ``load_seconds``,
        ``compute_seconds`` (None when not cached)."""
        p = self.canonical(params)
        ents = {e.key: e for e in cache.entries()}
        bw = cache.read_bandwidth(ents.values())
        out = []
        for d, key in enumerate(self.keys(p, seed), start=1):
            e = ents.get(key)
            stage = self.stages[d - 1]
            out.append(
                {
                    "depth": d,
                    "key": key,
                    "cached": e is not None,
                    "load_seconds": stage.load_cost(cache.estimate_load_seconds(e, bw))
                    if e
                    else None,
                    "compute_seconds": e.compute_cost if e else None,
                }
            )
        return out

    def keys_prefix(
        self, params: Mapping[str, Mapping[str, Any]], depth: int, seed: int | None = None
    ) -> str:
        """Key of the prefix of length ``depth`` (params needed only for those stages)."""
        parent = self.root(seed)
        for s in self.stages[:depth]:
            parent = stage_key(s.name, s.version, params[s.name], parent)
        return parent
