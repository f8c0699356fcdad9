"""``forget_passes``: the forget batch grows with the forget set under a fixed step budget,
so every forget row is visited ``forget_passes`` times, and the margin-matching term is
weighted per row so that a larger batch does not dilute each row's push."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from pipelines.unlearning import methods
from pipelines.unlearning.features import Features
from pipelines.unlearning.methods import (
    MultiDeleteConfig,
    _forget_batch,
    _row_weight,
    margin_match,
    multidelete,
)
from pipelines.unlearning.model import TrainedModel


def _data(n_f: int) -> Any:
    return SimpleNamespace(f=(torch.zeros(n_f, 3),))


def test_the_forget_batch_covers_the_forget_set_passes_times() -> None:
    # 280 forget rows, 48 steps, 23 passes: ceil(23 * 280 / 48) = 135 rows a batch
    assert _forget_batch(_data(280), 32, 48, 23.0) == 135
    assert _forget_batch(_data(84), 32, 48, 23.0) == 41  # 3%: ceil(23 * 84 / 48)
    assert _forget_batch(_data(40), 32, 48, 5.0) == 32  # never below batch_size ...
    assert _forget_batch(_data(20), 32, 48, 23.0) == 20  # ... nor above the forget set
    assert _forget_batch(_data(280), 32, 48, 0.0) == 32  # off: the fixed batch
    assert _forget_batch(_data(280), 32, 0, 23.0) == 32  # epochs mode (no step budget)


def test_the_row_weight_is_a_sum_per_batch_size_rows() -> None:
    assert _row_weight(1.8, 135, 32, 23.0) == pytest.approx(1.8 * 135 / 32)
    assert _row_weight(1.8, 135, 32, 0.0) == 1.8


def test_a_larger_batch_gives_each_row_the_same_margin_push() -> None:
    unseen = torch.zeros(50)  # every quantile target is 0: the push depends on the row only
    grads = []
    for b in (32, 96):
        z = torch.zeros(b, 2)
        z[:, 1] = torch.linspace(0.5, 3.0, b)
        z.requires_grad_(True)
        y = torch.ones(b, dtype=torch.long)
        (_row_weight(1.0, b, 32, 1.0) * margin_match(z, y, unseen)).backward()
        assert z.grad is not None
        grads.append(z.grad[-1, 1].item())  # the row with the largest margin, 3.0
    # d/dphi of w * (rows / 32) * mean (phi - 0)^2 = 2 w phi / 32, whatever the batch size
    assert grads[0] == pytest.approx(2 * 3.0 / 32) and grads[1] == pytest.approx(grads[0])


def test_multidelete_visits_every_forget_row_passes_times(
    setup: tuple[TrainedModel, Features], monkeypatch: pytest.MonkeyPatch
) -> None:
    orig, f = setup
    n_f = len(f.split.forget)
    seen: list[int] = []
    batch_indices = methods._Data.batch_indices

    def spy(self: Any, part: Any, bs: int) -> Any:
        for b in batch_indices(self, part, bs):
            if part is self.f:
                seen.append(b.shape[0])
            yield b

    monkeypatch.setattr(methods._Data, "batch_indices", spy)
    c = MultiDeleteConfig(steps=8, batch_size=2, forget_passes=3.0, w_fm=1.0)
    out = multidelete(orig, f, 0, "cpu", c)
    assert out.info["steps"] == 8
    bf = -(-3 * n_f // 8)
    assert bf > 2 and max(seen[:8]) == bf  # the batch grew past batch_size
    assert sum(seen[:8]) >= 3 * n_f - bf  # 8 steps cover the forget set about 3 times
    seen.clear()
    multidelete(orig, f, 0, "cpu", MultiDeleteConfig(steps=8, batch_size=2))
    assert max(seen) == 2  # off: the fixed batch
