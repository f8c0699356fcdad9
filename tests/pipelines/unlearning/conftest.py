"""A small trained model on the bundled diabetes data, shared by the method tests."""

from __future__ import annotations

import pytest

from pipelines.unlearning.data import diabetes_fixture, split_patients
from pipelines.unlearning.features import Features, featurize
from pipelines.unlearning.model import ModelConfig, TrainConfig, TrainedModel, train_model


@pytest.fixture(scope="module")
def setup() -> tuple[TrainedModel, Features]:
    """A 16-unit fusion model trained 10 epochs on a 90% split of the diabetes fixture."""
    d = diabetes_fixture()
    f = featurize(d, split_patients(d.groups, 0.1, 0))
    cfg = ModelConfig(f.text.shape[1], f.image.shape[1], hidden=16, dropout=0.1)
    m = train_model(
        cfg, f.text, f.image, f.y, f.split.train, TrainConfig(1e-2, 10, 1e-4, 64), seed=0
    )
    return m, f
