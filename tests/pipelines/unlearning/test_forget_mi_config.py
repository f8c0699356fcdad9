"""Forget-MI takes one frozen config object; with its extensions off (``w_kl``, ``w_fm``,
``step_share`` = 0) its behaviour stays that of the 27-argument function it replaced (the
expected values below were computed with that code)."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect

import numpy as np
import pytest

from pipelines.unlearning.features import Features
from pipelines.unlearning.methods import ForgetMIConfig, forget_mi, run_method
from pipelines.unlearning.model import TrainedModel
from pipelines.unlearning.pipelines import UNLEARN_DEFAULTS, UNLEARN_SPACES, make_pipeline

# keys of every stage of the default configuration, seed 0, on the fixture: featurize's is
# that of the former keyword function; train's version was bumped when it began to train the
# retrained ensemble and the LiRA references, unlearn's when the defaults changed, evaluate's
# when it began to report LiRA, bands and the forgetting score
# unlearn.7: forget_passes (data-scaled forget batch) and new defaults; evaluate.6: the
# time terms and time_ratio in process CPU time
KEYS_DIABETES = [
    "be918b67b02cb2a100fa6e2f4d1ffd1c",
    "a5dfc8cc9f55f273804a81e3c36e3910",
    "bf3f2b9e7af16391f56f17c731892bc8",
    "796ba0977233fc21c1776fa48f736637",  # evaluate 7: adds band_objective
]
# the defaults of the former keyword arguments
OLD_DEFAULTS = {
    "lr": 1e-3,
    "epochs": 5,
    "batch_size": 32,
    "w_uu": 0.1,
    "w_ur": 0.1,
    "w_mu": 0.4,
    "w_mr": 0.4,
    "use_noise": False,
    "noise_mean": 0.0,
    "noise_std": 1.0,
    "text_noise": 0.3,
    "margin": 5.0,
    "init_noise": 1e-2,
    "retain_ratio": 2,
    "calibrate": True,
    "early_stop": True,
    "auc_gap": 0.0,
    "max_val_drop": 1.0,
    "w_ce": 0.0,
    "val_weight": 3.0,
    "patience": 10,
    "schedule": "cosine",
    "steps": 0,
    "w_kl": 0.0,
    "step_share": 0.0,
    "w_fm": 0.0,
    "forget_passes": 0.0,
}
# the pipeline's former default unlearn configuration (before the extensions)
OLD_PIPELINE = {"lr": 2.5e-2, "use_noise": False, "init_noise": 0.01, "w_ce": 4.0, "w_kl": 0.0,
                "w_fm": 0.0, "step_share": 0.0}  # fmt: skip


def _digest(state: dict[str, object]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(np.ascontiguousarray(state[k].numpy()).tobytes())  # type: ignore[attr-defined]
    return h.hexdigest()[:16]


def test_the_config_is_a_frozen_dataclass_with_the_old_defaults() -> None:
    assert dataclasses.is_dataclass(ForgetMIConfig)
    c = ForgetMIConfig()
    assert dataclasses.asdict(c) == OLD_DEFAULTS
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.lr = 1.0  # type: ignore[misc]
    assert list(inspect.signature(forget_mi).parameters) == [
        "orig",
        "feats",
        "seed",
        "device",
        "config",
    ]


def test_every_stage_parameter_is_a_config_field() -> None:
    names = {f.name for f in dataclasses.fields(ForgetMIConfig)}
    assert set(UNLEARN_SPACES["forget-mi"]) <= names
    ForgetMIConfig.from_params(UNLEARN_DEFAULTS["forget-mi"])
    with pytest.raises(TypeError, match="unknown parameters \\['nope'\\]"):
        ForgetMIConfig.from_params({"nope": 1})


def test_cache_keys_of_the_default_configuration_are_unchanged() -> None:
    p = make_pipeline("forget-mi", 0.1, source="diabetes")
    assert p.keys(p.canonical(p.defaults), seed=0) == KEYS_DIABETES


def test_results_are_those_of_the_keyword_function(setup: tuple[TrainedModel, Features]) -> None:
    orig, f = setup
    params = dict(UNLEARN_DEFAULTS["forget-mi"], **OLD_PIPELINE, steps=6)
    out = run_method("forget-mi", orig, f, 0, "cpu", **params)
    assert out.info["steps"] == 6 and out.info["kept_step"] == 6
    assert out.info["d_mu"] == pytest.approx(0.9242227673530579, rel=1e-5)
    assert out.info["target_loss"] == pytest.approx(0.5720104575157166, rel=1e-6)
    direct = forget_mi(orig, f, 0, "cpu", ForgetMIConfig.from_params(params))
    assert _digest(direct.state) == _digest(out.state)
