"""The eight pipelines: shared stage-1/2 cache keys, registry, and a tiny end-to-end run."""

from __future__ import annotations

import numpy as np
import pytest

from cache import open_cache
from eeipu.space import Scalar
from pipelines.registry import builtin_names, get_pipeline
from pipelines.unlearning import data as data_mod
from pipelines.unlearning.pipelines import METHOD_NAMES, default_params, make_pipeline

CONTRACT = (
    "test_auc",
    "test_f1",
    "forget_auc",
    "forget_f1",
    "retain_auc",
    "retain_f1",
    "mia_batch_svc",
    "mia_sample_svc",
    "forget_vs_retain_auc",
    "unlearn_seconds",
    "retrain_seconds",
    "objective",
    "retrain_score",
    "gap_test_auc",
    "gap_forget_auc",
    "gap_mia_sample_svc",
    "kl_forget",
    "kl_retain",
    "mia_sample_svc_strength",
    "mia_batch_svc_strength",
    "mia_loss_strength",
)


def _fast(method: str) -> dict[str, dict[str, Scalar]]:
    p = default_params(method)
    p["train"]["epochs"] = 5
    p["featurize"]["text_dim"] = 8
    return p


def test_builtins_registered_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_mod, "_MEMO", {})
    names = builtin_names()
    assert set(METHOD_NAMES) <= set(names)
    get_pipeline("forget-mi")  # building the pipeline must not parse the data
    assert not any(k.startswith("openi") for k in data_mod._MEMO)


def test_stage_1_2_keys_shared_across_methods() -> None:
    pipes = [make_pipeline(m, 0.1, source="diabetes") for m in METHOD_NAMES]
    keys = [p.keys(p.canonical(p.defaults), seed=3) for p in pipes]
    assert len({k[0] for k in keys}) == 1
    assert len({k[1] for k in keys}) == 1
    assert len({k[2] for k in keys}) == len(METHOD_NAMES)
    other = make_pipeline("forget-mi", 0.03, source="diabetes")
    assert other.keys(other.canonical(other.defaults), seed=3)[0] != keys[0][0]


def test_end_to_end_on_fixture_reuses_training() -> None:
    import tempfile

    cache = open_cache(tempfile.mkdtemp())
    recs = {}
    for m in ("forget-mi", "multidelete", "retrain"):
        p = make_pipeline(m, 0.1, source="diabetes")
        recs[m] = p.run(_fast(m), cache=cache, seed=0)
    assert recs["forget-mi"].reused_depth == 0
    assert recs["multidelete"].reused_depth == 2  # featurize + train from the cache
    fm = recs["forget-mi"].metrics
    for k in ("lira_forget_auc", "lira_retain_auc", "forget_auc_band_low", "band_score"):
        assert np.isfinite(fm[k]), k
    assert fm["band_n_retrains"] == 8 and fm["lira_n_references"] == 32
    assert np.isnan(fm["forgetting_score"])  # off unless asked for (it costs N runs)
    # the retrained model is a member of its own ensemble: inside the band
    rt = recs["retrain"].metrics
    assert rt["forget_auc_band_low"] <= rt["forget_auc"] <= rt["forget_auc_band_high"]
    for r in recs.values():
        for k in CONTRACT:
            assert k in r.metrics, k
    assert recs["retrain"].metrics["retrain_score"] == pytest.approx(0.0)
    assert recs["retrain"].metrics["unlearn_seconds"] == recs["retrain"].metrics["retrain_seconds"]
    # on a CPU device the time ratio is one of process CPU times; the wall ratio is kept aside
    assert fm["time_ratio_cpu"] == 1.0
    assert fm["unlearn_cpu_seconds"] > 0 and fm["retrain_cpu_seconds"] > 0
    assert fm["time_ratio"] == pytest.approx(fm["unlearn_cpu_seconds"] / fm["retrain_cpu_seconds"])
    assert fm["time_ratio_wall"] == pytest.approx(fm["unlearn_seconds"] / fm["retrain_seconds"])
    assert rt["time_ratio"] == pytest.approx(1.0) and rt["time_ratio_wall"] == pytest.approx(1.0)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        make_pipeline("nope")
    with pytest.raises(ValueError):
        make_pipeline("retrain", forget_fraction=1.5)
    p = make_pipeline("forget-mi", 0.1, source="diabetes", tune_upstream=False)
    with pytest.raises(ValueError):
        p.canonical({**p.defaults, "train": {**p.defaults["train"], "epochs": 7}})


def test_representation_methods_are_tuned_over_a_bounded_step_budget() -> None:
    from eeipu.space import Float, Int
    from pipelines.unlearning.pipelines import UNLEARN_DEFAULTS, UNLEARN_SPACES

    for m in ("forget-mi", "multidelete"):
        assert "epochs" not in UNLEARN_SPACES[m]
        steps = UNLEARN_SPACES[m]["steps"]
        assert isinstance(steps, Int) and steps.low >= 1
        share = UNLEARN_SPACES[m]["step_share"]  # the budget scales with retraining's steps
        assert isinstance(share, Float) and share.low > 0 and share.high <= 0.07
        assert 0 < float(UNLEARN_DEFAULTS[m]["step_share"]) <= 0.07


def test_the_step_budget_scales_with_the_data() -> None:
    from pipelines.unlearning.data import diabetes_fixture, split_patients
    from pipelines.unlearning.features import featurize
    from pipelines.unlearning.methods import TRAIN_BATCH, _budget, _Data
    from pipelines.unlearning.model import TrainedModel

    d = diabetes_fixture()
    f = featurize(d, split_patients(d.groups, 0.1, 0))
    data = _Data(f, __import__("torch").device("cpu"), 0)
    orig = TrainedModel(None, {}, 1.0, history=[0.0] * 20)  # type: ignore[arg-type]
    retrain_steps = 20 * -(-len(f.split.retain) // TRAIN_BATCH)
    assert _budget(orig, data, 120, 0.06) == int(0.06 * retrain_steps)
    assert _budget(orig, data, 3, 0.06) == 3  # a smaller nominal budget is kept
    assert _budget(orig, data, 30, 0.0) == 30  # no share: the nominal budget
