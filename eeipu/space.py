"""Search-space types shared by the optimizer, the pipelines and the service.

Every parameter has two representations:

* the *canonical* value (a Python ``float``, ``int`` or one of a categorical's choices), which
  keys the stage cache and is what users see; and
* the *unit* representation the optimizer works in: a point of ``[0, 1]^dims`` obtained from the
  DECLARED bounds (never from observed data, so every part of the space stays reachable).

``decode(encode(v)) == v`` holds exactly for every canonical value produced by ``decode``:
``Float.decode`` rounds to ``digits`` significant digits, which absorbs the floating-point error
of the affine / log maps. Values given by users are kept exactly as given (0.1 and
0.1000000001 are different parameters).
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Scalar = bool | int | float | str

__all__ = [
    "Categorical",
    "Float",
    "Int",
    "Param",
    "ParamSpec",
    "Scalar",
    "SearchSpace",
    "param_from_dict",
]


class Param(ABC):
    """One hyperparameter's domain.

    Contract: ``canonical`` validates and normalises a user value (raises ``ValueError`` with a
    message naming the problem); ``encode`` maps a canonical value to ``dims`` floats in [0, 1];
    ``decode`` maps any point of [0, 1]^dims back to a canonical value; ``token`` gives the exact,
    JSON-serialisable form used in cache keys.
    """

    @property
    def dims(self) -> int:
        """Width of the unit representation."""
        return 1

    @abstractmethod
    def canonical(self, value: Any) -> Scalar: ...

    @abstractmethod
    def encode(self, value: Scalar) -> list[float]: ...

    @abstractmethod
    def decode(self, unit: Sequence[float]) -> Scalar: ...

    @abstractmethod
    def sample(self, rng: random.Random) -> Scalar: ...

    @abstractmethod
    def to_dict(self) -> dict[str, Any]: ...

    def token(self, value: Scalar) -> Any:
        """Exact JSON-able form of a canonical value for hashing."""
        return value


INT_LIMIT = 2**40  # |bound| of an Int: its unit map stays exact far below 2**53


def _clip01(u: float) -> float:
    return 0.0 if u < 0.0 else 1.0 if u > 1.0 else u


def _round_sig(x: float, digits: int) -> float:
    if x == 0.0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")


@dataclass(frozen=True)
class Float(Param):
    """A real parameter in ``[low, high]``, linear or log scale (log needs ``low > 0``)."""

    low: float
    high: float
    log: bool = False
    digits: int = 10

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"Float bounds must be finite, got [{self.low}, {self.high}]")
        if not self.low < self.high:
            raise ValueError(f"Float needs low < high, got [{self.low}, {self.high}]")
        if not math.isfinite(self.high - self.low):  # the affine map would give inf and nan
            raise ValueError(f"Float span high - low overflows, got [{self.low}, {self.high}]")
        if self.log and self.low <= 0:
            raise ValueError(f"log-scale Float needs low > 0, got {self.low}")

    def canonical(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        v = float(value)
        if not math.isfinite(v) or v < self.low or v > self.high:
            raise ValueError(f"{v!r} is outside [{self.low}, {self.high}]")
        return v

    def encode(self, value: Scalar) -> list[float]:
        v = float(value)
        if self.log:
            u = (math.log(v) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        else:
            u = (v - self.low) / (self.high - self.low)
        return [_clip01(u)]

    def decode(self, unit: Sequence[float]) -> float:
        u = _clip01(float(unit[0]))
        if self.log:
            lo, hi = math.log(self.low), math.log(self.high)
            v = math.exp(lo + u * (hi - lo))
        else:
            v = self.low + u * (self.high - self.low)
        v = _round_sig(v, self.digits)
        return min(max(v, self.low), self.high)

    def sample(self, rng: random.Random) -> float:
        return self.decode([rng.random()])

    def token(self, value: Scalar) -> str:
        return repr(float(value))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "float", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class Int(Param):
    """An integer parameter in ``[low, high]`` (inclusive), linear or log scale."""

    low: int
    high: int
    log: bool = False

    def __post_init__(self) -> None:
        if int(self.low) != self.low or int(self.high) != self.high:
            raise ValueError(f"Int bounds must be integers, got [{self.low}, {self.high}]")
        if not self.low < self.high:
            raise ValueError(f"Int needs low < high, got [{self.low}, {self.high}]")
        if max(abs(self.low), abs(self.high)) > INT_LIMIT:
            raise ValueError(
                f"Int bounds must lie within +-2**40 (beyond, an integer does not map to the unit"
                f" interval and back exactly), got [{self.low}, {self.high}]"
            )
        if self.log and self.low <= 0:
            raise ValueError(f"log-scale Int needs low > 0, got {self.low}")

    def canonical(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
            raise ValueError(f"expected an integer, got {value!r}")
        v = int(value)
        if v < self.low or v > self.high:
            raise ValueError(f"{v} is outside [{self.low}, {self.high}]")
        return v

    def _span(self) -> tuple[float, float]:
        # Linear: each integer owns an equal slice of [0, 1]. Log: the log-interval.
        if self.log:
            return math.log(self.low), math.log(self.high)
        return self.low - 0.5, self.high + 0.5

    def encode(self, value: Scalar) -> list[float]:
        lo, hi = self._span()
        x = math.log(float(value)) if self.log else float(value)
        return [_clip01((x - lo) / (hi - lo))]

    def decode(self, unit: Sequence[float]) -> int:
        lo, hi = self._span()
        x = lo + _clip01(float(unit[0])) * (hi - lo)
        v = round(math.exp(x)) if self.log else round(x)
        return int(min(max(v, self.low), self.high))

    def sample(self, rng: random.Random) -> int:
        return self.decode([rng.random()])

    def to_dict(self) -> dict[str, Any]:
        return {"type": "int", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class Categorical(Param):
    """A choice among scalars; one-hot in the optimizer's representation."""

    choices: tuple[Scalar, ...] = field(default_factory=tuple)

    def __init__(self, choices: Sequence[Scalar]) -> None:
        object.__setattr__(self, "choices", tuple(choices))
        if len(self.choices) < 1:
            raise ValueError("Categorical needs at least one choice")
        for c in self.choices:
            if not isinstance(c, bool | int | float | str):
                raise ValueError(f"Categorical choices must be scalars, got {c!r}")
        if len({(type(c).__name__, c) for c in self.choices}) != len(self.choices):
            raise ValueError(f"Categorical choices must be distinct, got {list(self.choices)}")

    @property
    def dims(self) -> int:
        return len(self.choices)

    def _index(self, value: Any) -> int:
        for i, c in enumerate(self.choices):
            if type(c) is type(value) and c == value:
                return i
        # Accept 1 for 1.0 style numeric matches, but never bool <-> int.
        for i, c in enumerate(self.choices):
            if (
                not isinstance(c, bool | str)
                and not isinstance(value, bool | str)
                and isinstance(value, int | float)
                and c == value
            ):
                return i
        raise ValueError(f"{value!r} is not one of {list(self.choices)}")

    def canonical(self, value: Any) -> Scalar:
        return self.choices[self._index(value)]

    def encode(self, value: Scalar) -> list[float]:
        out = [0.0] * len(self.choices)
        out[self._index(value)] = 1.0
        return out

    def decode(self, unit: Sequence[float]) -> Scalar:
        vals = [float(u) for u in unit[: len(self.choices)]]
        return self.choices[max(range(len(vals)), key=lambda i: (vals[i], -i))]

    def sample(self, rng: random.Random) -> Scalar:
        return self.choices[rng.randrange(len(self.choices))]

    def token(self, value: Scalar) -> Any:
        return [type(value).__name__, value if not isinstance(value, float) else repr(value)]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "categorical", "choices": list(self.choices)}


def param_from_dict(d: Mapping[str, Any]) -> Param:
    """Inverse of ``Param.to_dict`` (used by the service to accept spaces over HTTP)."""
    kind = d.get("type")
    try:
        if kind == "float":
            return Float(float(d["low"]), float(d["high"]), log=bool(d.get("log", False)))
        if kind == "int":
            return Int(int(d["low"]), int(d["high"]), log=bool(d.get("log", False)))
        if kind == "categorical":
            return Categorical(list(d["choices"]))
    except KeyError as e:
        raise ValueError(f"{kind} parameter is missing {e.args[0]!r}") from None
    raise ValueError(f"unknown parameter type {kind!r} (expected float, int or categorical)")


def _window(p: Param, value: Scalar, width: float) -> Param:
    """``p`` narrowed to ``width`` of its unit interval around ``value`` (see ``around``)."""
    if isinstance(p, Categorical):
        return Categorical([value])
    if width >= 1.0:
        return p
    u = p.encode(value)[0]
    lo_u = min(max(u - width / 2.0, 0.0), 1.0 - width)
    lo, hi = p.decode([lo_u]), p.decode([lo_u + width])
    if isinstance(p, Float):
        flo, fhi = min(float(lo), float(value)), max(float(hi), float(value))
        return Float(flo, fhi, p.log, p.digits) if flo < fhi else Categorical([value])
    if isinstance(p, Int):
        ilo, ihi = min(int(lo), int(value)), max(int(hi), int(value))
        return Int(ilo, ihi, p.log) if ilo < ihi else Categorical([value])
    return p


@dataclass(frozen=True)
class ParamSpec:
    """A parameter's place in a staged space."""

    stage: str
    name: str
    param: Param
    offset: int


class SearchSpace:
    """The product of every stage's parameters, in stage order.

    ``encode`` / ``decode`` convert between ``{stage: {name: value}}`` and a flat list of unit
    floats; ``stage_slices`` tells which columns belong to which stage (the cost models and the
    prefix pinning need it).
    """

    def __init__(self, stages: Sequence[tuple[str, Mapping[str, Param]]]) -> None:
        self.stage_names: list[str] = [s for s, _ in stages]
        self.specs: list[ParamSpec] = []
        self.stage_slices: dict[str, slice] = {}
        offset = 0
        for stage, params in stages:
            start = offset
            for name in sorted(params):
                p = params[name]
                self.specs.append(ParamSpec(stage, name, p, offset))
                offset += p.dims
            self.stage_slices[stage] = slice(start, offset)
        self.dims = offset

    def canonical(self, params: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Scalar]]:
        """Validate a full configuration; raises ``ValueError`` naming the stage and parameter."""
        unknown = set(params) - set(self.stage_names)
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages are {self.stage_names}")
        out: dict[str, dict[str, Scalar]] = {s: {} for s in self.stage_names}
        for stage in self.stage_names:
            given = dict(params.get(stage, {}))
            names = {sp.name for sp in self.specs if sp.stage == stage}
            extra = set(given) - names
            if extra:
                raise ValueError(f"stage {stage!r} has no parameter(s) {sorted(extra)}")
            for sp in self.specs:
                if sp.stage != stage:
                    continue
                if sp.name not in given:
                    raise ValueError(f"missing parameter {stage}.{sp.name}")
                try:
                    out[stage][sp.name] = sp.param.canonical(given[sp.name])
                except ValueError as e:
                    raise ValueError(f"{stage}.{sp.name}: {e}") from None
        return out

    def encode(self, params: Mapping[str, Mapping[str, Scalar]]) -> list[float]:
        row: list[float] = []
        for sp in self.specs:
            row.extend(sp.param.encode(params[sp.stage][sp.name]))
        return row

    def decode(self, row: Sequence[float]) -> dict[str, dict[str, Scalar]]:
        out: dict[str, dict[str, Scalar]] = {s: {} for s in self.stage_names}
        for sp in self.specs:
            out[sp.stage][sp.name] = sp.param.decode(row[sp.offset : sp.offset + sp.param.dims])
        return out

    def sample(self, rng: random.Random) -> dict[str, dict[str, Scalar]]:
        out: dict[str, dict[str, Scalar]] = {s: {} for s in self.stage_names}
        for sp in self.specs:
            out[sp.stage][sp.name] = sp.param.sample(rng)
        return out

    def to_dict(self) -> dict[str, dict[str, dict[str, Any]]]:
        out: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in self.stage_names}
        for sp in self.specs:
            out[sp.stage][sp.name] = sp.param.to_dict()
        return out

    def pinned(self, fixed: Mapping[str, Mapping[str, Any]]) -> SearchSpace:
        """This space with each parameter of ``fixed`` (``{stage: {name: value}}``, values
        valid for their parameter) a one-choice ``Categorical``: an optimizer on it proposes
        only the fixed values, so its prefixes and reuse plans are those that run."""
        if not any(fixed.values()):
            return self
        return self._replaced(fixed, lambda p, v: Categorical([v]))

    def around(self, center: Mapping[str, Mapping[str, Any]], width: float) -> SearchSpace:
        """This space narrowed to a neighbourhood of ``center`` (``{stage: {name: value}}``,
        values valid for their parameter), for refining a known good configuration.

        A numeric parameter of ``center`` keeps the window of ``width`` (0 < width <= 1) of
        its unit interval (log-scaled where the parameter is) around the centre's value,
        shifted inward at a bound so that it keeps its full width; an integer window too
        narrow for two values pins the centre's. A categorical parameter of ``center`` is
        pinned to its value (the structural choices stay those of the centre). Parameters
        not in ``center`` keep their range. Every configuration of the result is valid here.
        """
        if not (isinstance(width, int | float) and 0.0 < width <= 1.0):
            raise ValueError(f"width must be in (0, 1], got {width!r}")
        return self._replaced(center, lambda p, v: _window(p, v, float(width)))

    def _replaced(
        self,
        values: Mapping[str, Mapping[str, Any]],
        make: Callable[[Param, Scalar], Param],
    ) -> SearchSpace:
        """This space with each parameter named in ``values`` replaced by ``make(param,
        canonical value)``; the others as they are."""
        stages: list[tuple[str, dict[str, Param]]] = []
        for stage in self.stage_names:
            given = values.get(stage, {})
            params: dict[str, Param] = {
                sp.name: make(sp.param, sp.param.canonical(given[sp.name]))
                if sp.name in given
                else sp.param
                for sp in self.specs
                if sp.stage == stage
            }
            stages.append((stage, params))
        return SearchSpace(stages)
