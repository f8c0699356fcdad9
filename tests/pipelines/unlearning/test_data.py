"""Patient-level splits (synthetic table; real Open-i when installed) and the fixture."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from pipelines.unlearning.data import diabetes_fixture, load_data, split_patients


def _table(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # 300 patients with 1-4 studies each
    return np.repeat([f"P{i}" for i in range(300)], rng.integers(1, 5, size=300))


def _check(groups: np.ndarray, frac: float, seed: int) -> None:
    s = split_patients(groups, frac, seed)
    g = np.asarray(groups)
    train_p, test_p = set(g[s.train]), set(g[s.test])
    forget_p, retain_p = set(g[s.forget]), set(g[s.retain])
    assert not train_p & test_p
    assert not forget_p & retain_p
    assert forget_p <= train_p and retain_p <= train_p
    assert forget_p | retain_p == train_p
    val_p = set(g[s.val])
    assert not val_p & (train_p | test_p)
    assert len(s.train) + len(s.test) + len(s.val) == len(g)
    assert sorted(np.concatenate([s.forget, s.retain]).tolist()) == s.train.tolist()
    assert len(forget_p) == max(1, round(frac * len(train_p)))


@pytest.mark.parametrize("frac", [0.03, 0.06, 0.10])
def test_no_patient_crosses_splits(frac: float) -> None:
    for seed in range(3):
        _check(_table(seed), frac, seed)


def test_split_is_seeded() -> None:
    g = _table()
    a, b = split_patients(g, 0.1, 5), split_patients(g, 0.1, 5)
    c = split_patients(g, 0.1, 6)
    assert np.array_equal(a.forget, b.forget) and np.array_equal(a.test, b.test)
    assert not np.array_equal(a.forget, c.forget)


def test_split_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        split_patients(_table(), 0.0, 0)
    with pytest.raises(ValueError):
        split_patients(_table(), 0.1, 0, test_fraction=1.5)
    with pytest.raises(ValueError):
        split_patients(["a", "a", "b"], 0.1, 0)
    with pytest.raises(ValueError):
        load_data("mimic")


def test_fixture_two_views() -> None:
    d = diabetes_fixture()
    assert len(d) == 442
    assert d.text_x is not None and d.text_x.shape == (442, 6)
    assert d.img_x.shape == (442, 4)
    assert set(np.unique(d.y)) == {0, 1}
    _check(d.groups, 0.1, 0)


@pytest.mark.skipif(
    importlib.util.find_spec("torchxrayvision") is None, reason="Open-i data not installed"
)
def test_openi_real_data_loads_and_splits_by_patient() -> None:
    d = load_data("openi")
    assert len(d) > 3800
    assert d.texts is not None and d.img_codes is not None
    # label balance as measured (about 35% normal)
    assert 0.55 < float(d.y.mean()) < 0.75
    # indication only: no report's text mentions the findings' stock phrases
    assert not any("no focal consolidation" in t.lower() for t in d.texts)
    for frac in (0.03, 0.10):
        _check(d.groups, frac, 0)
    # another finding as the label
    c = load_data("openi", "cardiomegaly")
    assert 0.02 < float(c.y.mean()) < 0.3
    assert c.fingerprint != d.fingerprint
