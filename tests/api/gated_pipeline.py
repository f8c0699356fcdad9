"""A two-stage pipeline whose last stage waits for a gate file: trials stay RUNNING until the
test opens the gate, so "kill it mid-trial" is deterministic (no timing assumptions).

The gate is the file named by ``$EEIPU_TEST_GATE``; without it the stage does not wait. A
stage that finds the gate closed creates ``$EEIPU_TEST_GATE.blocked`` before it waits.
"""

from __future__ import annotations

import os
import time
from typing import Any

from pipelines import Cost, Float, Pipeline, Stage


def _prep(parent: Any, a: float) -> Cost:
    return Cost({"a": a}, seconds=1.0)


def _fit(parent: Any, b: float) -> Cost:
    gate = os.environ.get("EEIPU_TEST_GATE")
    deadline = time.monotonic() + 120
    if gate and not os.path.exists(gate):
        with open(gate + ".blocked", "w"):  # tells the test this trial waits at the gate
            pass
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    return Cost({"value": -((parent["a"] - 0.3) ** 2) - (b - 0.7) ** 2}, seconds=2.0)


pipeline = Pipeline(
    "gated",
    [Stage("prep", _prep, {"a": Float(0.0, 1.0)}), Stage("fit", _fit, {"b": Float(0.0, 1.0)})],
    objective="value",
    direction="maximize",
    fingerprint="gated-test",
)
