"""Figures of the optimizer benchmark (``bench.optimizers``) from hand-built runs."""

from __future__ import annotations

from typing import Any

import pytest

from bench.optimizers import equal_spend


def _run(
    opt: str, costs: list[float], values: list[float], capped: bool, seed: int = 0
) -> dict[str, Any]:
    rows, cum, best = [], 0.0, -float("inf")
    for c, v in zip(costs, values, strict=True):
        cum += c
        best = max(best, v)
        rows.append({"cumulative_cost": cum, "best_so_far": best, "value": v})
    return {
        "pipeline": "p",
        "optimizer": opt,
        "seed": seed,
        "rows": rows,
        "cost_spent": cum,
        "capped": capped,
    }


def test_equal_spend_counts_trials_within_each_seeds_least_capped_spend() -> None:
    runs = [
        _run("cheap", [1.0] * 6, [0, 1, 2, 3, 4, 5], capped=True, seed=0),  # spent 6
        _run("cheap", [2.0] * 5, [0, 0, 9, 0, 0], capped=True, seed=1),  # spent 10
        _run("dear", [4.0, 4.0, 4.0], [1, 7, 8], capped=False, seed=0),  # within 6: 1 trial
        _run("dear", [1.0, 5.0, 5.0], [3, 1, 1], capped=False, seed=1),  # within 10: 2
    ]
    eq = equal_spend(runs, "p", ["cheap", "dear"])
    assert eq is not None and eq["spend_by_seed"] == {"0": 6.0, "1": 10.0}
    assert eq["spend"] == pytest.approx(8.0)
    assert eq["optimizers"]["cheap"]["n_trials"]["mean"] == pytest.approx((6 + 5) / 2)
    assert eq["optimizers"]["cheap"]["best"]["mean"] == pytest.approx((5 + 9) / 2)
    assert eq["optimizers"]["dear"]["n_trials"]["mean"] == pytest.approx(1.5)
    assert eq["optimizers"]["dear"]["best"]["mean"] == pytest.approx(2.0)


def test_equal_spend_is_none_without_capped_runs() -> None:
    runs = [_run("a", [1.0, 1.0], [0, 1], capped=False)]
    assert equal_spend(runs, "p", ["a"]) is None
