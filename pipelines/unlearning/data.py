"""Real multimodal medical data (Open-i, offline) and a tiny fixture, plus patient-level splits.

Open-i (Indiana University chest X-ray collection, CC BY-NC-ND 4.0) ships inside the
``torchxrayvision`` wheel. We locate its data folder WITHOUT importing the package (its import
pulls torchvision and friends). Nothing is downloaded and nothing derived is written to disk.

Modalities, chosen so that neither leaks the label:

* text: the report's INDICATION section only (findings / impression state the diagnosis);
* image side: the five pixel-derived Open-i descriptor cluster codes of the study's images
  (CEDD, ColorLayout, EdgeHistogram, FCTH, SemanticContext60; multi-hot, averaged over the
  study's images) plus DICOM acquisition metadata (age, view position, exposure, ...).

Label: 1 = abnormal (MeSH major terms are not exactly ``["normal"]``), or, with another
``label``, 1 = some MeSH major term's heading equals it (e.g. ``"cardiomegaly"``).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import io
import os
import tarfile
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CODE_KINDS",
    "SOURCES",
    "MultimodalData",
    "Split",
    "breast_cancer_fixture",
    "diabetes_fixture",
    "load_data",
    "load_openi",
    "openi_data_dir",
    "split_patients",
]

CODE_KINDS = ("CEDD", "ColorLayout", "EdgeHistogram", "FCTH", "SemanticContext60")
LICENCE = "CC BY-NC-ND 4.0 (Open-i / Indiana University chest X-ray collection)"


@dataclass
class MultimodalData:
    """One row per study (= patient here).

    Attributes:
        ids: study ids (``CXR<N>``), ``n``.
        groups: patient ids, ``n``; splits never put one patient on two sides.
        y: binary labels, ``n``.
        texts: raw text per study (``None`` when the text modality is given as numbers).
        text_x: numeric text-side features ``n x d_t`` (fixtures), else ``None``.
        img_x: numeric image-side features ``n x d_i`` (metadata; not yet scaled).
        img_codes: multi-hot descriptor codes ``n x n_codes`` (``None`` for fixtures).
        fingerprint: identity of the content (part of every cache key).
    """

    ids: list[str]
    groups: np.ndarray
    y: np.ndarray
    texts: list[str] | None
    text_x: np.ndarray | None
    img_x: np.ndarray
    img_codes: np.ndarray | None
    fingerprint: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Split:
    """Row indices of each side of a patient-level split (disjoint, sorted).

    ``val`` is held-out data a user has besides the test set; methods may use it (e.g. the
    original model's held-out loss as a reference) without touching the evaluation test set.
    """

    train: np.ndarray
    test: np.ndarray
    forget: np.ndarray
    retain: np.ndarray
    val: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def split_patients(
    groups: np.ndarray | list[Any],
    forget_fraction: float,
    seed: int,
    test_fraction: float = 0.25,
    val_fraction: float = 0.1,
) -> Split:
    """Seeded split by patient: test and validation patients, then a forget set among the
    training patients.

    ``forget_fraction`` is the fraction of TRAINING patients to forget (at least one). All rows
    of a patient fall on one side, so no patient is both forgotten and retained, or both
    trained on and tested on.
    """
    if not 0.0 < forget_fraction < 1.0:
        raise ValueError(f"forget_fraction must be in (0, 1), got {forget_fraction}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if not 0.0 <= val_fraction < 1.0 - test_fraction:
        raise ValueError(f"val_fraction must be in [0, 1 - test_fraction), got {val_fraction}")
    g = np.asarray(groups)
    uniq = np.unique(g)
    if len(uniq) < 4:
        raise ValueError("need at least 4 patients to split")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7919]))
    perm = rng.permutation(uniq)
    n_test = max(1, round(test_fraction * len(uniq)))
    n_val = round(val_fraction * len(uniq))
    test_p, val_p, train_p = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
    n_forget = max(1, round(forget_fraction * len(train_p)))
    forget_p = rng.permutation(train_p)[:n_forget]
    is_test = np.isin(g, test_p)
    is_val = np.isin(g, val_p)
    is_train = ~is_test & ~is_val
    is_forget = np.isin(g, forget_p)
    idx = np.arange(len(g))
    return Split(
        train=idx[is_train],
        test=idx[is_test],
        forget=idx[is_forget],
        retain=idx[is_train & ~is_forget],
        val=idx[is_val],
    )


# ---------------------------------------------------------------- Open-i
def openi_data_dir() -> str:
    """torchxrayvision's bundled data folder, found without importing the package."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "torchxrayvision is not installed: pip install --no-deps torchxrayvision==1.5.7"
        )
    return os.path.join(next(iter(spec.submodule_search_locations)), "data")


def _num(s: str) -> float:
    try:
        v = float(s)
    except (TypeError, ValueError):
        return float("nan")
    return v if np.isfinite(v) else float("nan")


def _age(birth: str, study: str) -> float:
    if len(birth) != 8 or len(study) != 8 or not (birth.isdigit() and study.isdigit()):
        return float("nan")
    b = int(birth[:4]) + (int(birth[4:6]) - 1) / 12.0
    s = int(study[:4]) + (int(study[4:6]) - 1) / 12.0
    a = s - b
    return a if 0.0 < a < 120.0 else float("nan")


_VIEWS = ("PA", "AP", "LL", "LATERAL")
_DICOM_NUM = ("KVP", "Exposure", "Exposure Time", "X-Ray Tube Current", "Rows", "Columns")
_META_NAMES = (
    "age",
    "n_images",
    *[f"view_{v}" for v in _VIEWS],
    "view_missing",
    *[f"log1p_{c}" for c in _DICOM_NUM],
    *[f"missing_{c}" for c in ("age", *_DICOM_NUM)],
)

_LOCK = threading.Lock()
_MEMO: dict[str, MultimodalData] = {}


def _uid_number(uid: str) -> int:
    return int(uid[3:]) if uid[3:].isdigit() else 0


def _parse_reports(tgz: str) -> list[dict[str, Any]]:
    out = []
    with tarfile.open(tgz, "r:gz") as tf:
        for m in tf.getmembers():
            if not (m.isfile() and m.name.endswith(".xml")):
                continue
            f = tf.extractfile(m)
            if f is None:
                continue
            root = ET.fromstring(f.read())
            uid_el = root.find("uId")
            uid = uid_el.get("id", "") if uid_el is not None else ""
            sections = {
                (a.get("Label") or "").upper(): (a.text or "").strip()
                for a in root.iter("AbstractText")
            }
            mesh = [(t.text or "").strip() for t in root.iter("major")]
            images = []
            for pim in root.iter("parentImage"):
                codes = {k: (pim.findtext(f".//{k}") or "").strip() for k in CODE_KINDS}
                images.append((pim.get("id", ""), codes))
            out.append(
                {"uid": uid, "indication": sections.get("INDICATION", ""), "mesh": mesh,
                 "images": images}
            )  # fmt: skip
    out.sort(key=lambda r: _uid_number(str(r["uid"])))
    return out


def _read_dicom(path: str) -> dict[str, list[dict[str, str]]]:
    by_uid: dict[str, list[dict[str, str]]] = {}
    with gzip.open(path, "rb") as fh:
        for row in csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8")):
            uid = row["imageid"].split("_")[0]
            by_uid.setdefault(uid, []).append(row)
    return by_uid


def _is_positive(mesh: list[str], label: str) -> int:
    if label == "abnormal":
        return int([m.lower() for m in mesh] != ["normal"])
    heads = {m.split("/")[0].strip().lower() for m in mesh}
    return int(label.lower() in heads)


def load_openi(label: str = "abnormal") -> MultimodalData:
    """Parse Open-i from the installed wheel (memoised per process; about 2 s the first time)."""
    key = f"openi|{label}"
    with _LOCK:
        if key in _MEMO:
            return _MEMO[key]
        d = openi_data_dir()
        tgz = os.path.join(d, "NLMCXR_reports.tgz")
        dcm = os.path.join(d, "nlmcxr_dicom_metadata.csv.gz")
        h = hashlib.sha256()
        for p in (tgz, dcm):
            h.update(f"{os.path.basename(p)}:{os.path.getsize(p)}".encode())
        reports = _parse_reports(tgz)
        dicom = _read_dicom(dcm)
        vocab: dict[str, int] = {}
        for r in reports:
            for _, codes in r["images"]:
                for k, v in codes.items():
                    if v:
                        vocab.setdefault(f"{k}:{v}", len(vocab))
        n = len(reports)
        codes_x = np.zeros((n, len(vocab)), dtype=np.float32)
        meta = np.full((n, len(_META_NAMES)), np.nan, dtype=np.float64)
        groups: list[str] = []
        ys = np.zeros(n, dtype=np.int64)
        texts: list[str] = []
        for i, r in enumerate(reports):
            imgs = r["images"]
            for _, codes in imgs:
                for k, v in codes.items():
                    if v:
                        codes_x[i, vocab[f"{k}:{v}"]] += 1.0 / max(1, len(imgs))
            rows = dicom.get(r["uid"], [])
            pids = {row["Patient ID"] for row in rows if row.get("Patient ID")}
            groups.append(sorted(pids)[0] if len(pids) == 1 else r["uid"])
            ages = [_age(row["Patient's Birth Date"], row["Study Date"]) for row in rows]
            age = float(np.nanmean(ages)) if any(np.isfinite(ages)) else float("nan")
            views = {row["View Position"] for row in rows}
            nums = []
            for c in _DICOM_NUM:
                vals = [_num(row.get(c, "")) for row in rows]
                vals = [v for v in vals if np.isfinite(v) and v > 0]
                nums.append(float(np.log1p(np.mean(vals))) if vals else float("nan"))
            vrow = [float(v in views) for v in _VIEWS]
            meta[i] = [
                age,
                float(len(imgs)),
                *vrow,
                float(not any(vrow)),
                *nums,
                *[float(not np.isfinite(x)) for x in (age, *nums)],
            ]
            ys[i] = _is_positive(r["mesh"], label)
            texts.append(r["indication"] or "none")
        col_means = np.nanmean(meta, axis=0)
        meta = np.where(np.isfinite(meta), meta, col_means[None, :])
        h.update(f"{label}|v1".encode())
        data = MultimodalData(
            ids=[r["uid"] for r in reports],
            groups=np.asarray(groups),
            y=ys,
            texts=texts,
            text_x=None,
            img_x=meta.astype(np.float32),
            img_codes=codes_x,
            fingerprint=f"openi-{h.hexdigest()[:16]}",
            meta={"licence": LICENCE, "label": label, "meta_names": list(_META_NAMES)},
        )
        _MEMO[key] = data
        return data


def diabetes_fixture() -> MultimodalData:
    """scikit-learn's bundled diabetes data as two views of the same 442 patients (tests).

    "text" side = the six serum measurements; "image" side = age, sex, BMI, blood pressure;
    label = disease progression above the median. Loads offline in milliseconds.
    """
    from sklearn.datasets import load_diabetes

    ds = load_diabetes()
    x = np.asarray(ds.data, dtype=np.float32)
    y = (ds.target > np.median(ds.target)).astype(np.int64)
    n = len(y)
    return MultimodalData(
        ids=[f"D{i}" for i in range(n)],
        groups=np.arange(n).astype(str),
        y=y,
        texts=None,
        text_x=x[:, 4:],
        img_x=x[:, :4],
        img_codes=None,
        fingerprint="sklearn-diabetes-v1",
        meta={"licence": "scikit-learn bundled data (BSD)"},
    )


def breast_cancer_fixture() -> MultimodalData:
    """scikit-learn's bundled Wisconsin breast cancer data as two views of 569 patients.

    "text" side = the ten nucleus features' means and standard errors (20 columns); "image"
    side = their worst values (10 columns); label = malignant. Loads offline in milliseconds.
    """
    from sklearn.datasets import load_breast_cancer

    ds = load_breast_cancer()
    x = np.asarray(ds.data, dtype=np.float32)
    y = (np.asarray(ds.target) == 0).astype(np.int64)  # 0 = malignant in scikit-learn
    n = len(y)
    return MultimodalData(
        ids=[f"B{i}" for i in range(n)],
        groups=np.arange(n).astype(str),
        y=y,
        texts=None,
        text_x=x[:, :20],
        img_x=x[:, 20:],
        img_codes=None,
        fingerprint="sklearn-breast-cancer-v1",
        meta={"licence": "scikit-learn bundled data (BSD)"},
    )


SOURCES = ("openi", "diabetes", "breast_cancer")


def load_data(source: str, label: str = "abnormal") -> MultimodalData:
    """``"openi"`` (real data), ``"diabetes"`` or ``"breast_cancer"`` (small bundled sets)."""
    if source == "openi":
        return load_openi(label)
    if source == "diabetes":
        return diabetes_fixture()
    if source == "breast_cancer":
        return breast_cancer_fixture()
    raise ValueError(f"unknown data source {source!r}; choose one of {list(SOURCES)}")
