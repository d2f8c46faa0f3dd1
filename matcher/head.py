"""Discriminative head: a classifier learned from each catalog's own texts.

The keyword and embedding similarities weigh every word and dimension the same for every task;
nothing in them learns that "remittance" tells invoice extraction from receipt extraction while
"document" tells nothing. The head does: a multinomial logistic regression over the features the
engine already computes (the keyword index's word TF-IDF and the sentence embedding), fitted on
the catalog's texts (title with description, and each phrase) with one class per task and one
"no match" class for the out-of-scope profiles' texts. Its probability of each task is a third
signal of the semantic path (`fuse`); `tune` fits its weight (`MatcherConfig.semantic_head_weight`).

Fitting takes seconds, so the head is fitted when the semantic path first needs it and cached on
disk beside the embeddings, keyed by catalog fingerprint, model weights and settings. The default
catalog's head ships in the package (`matcher/data/heads/`), read before the cache: a fit on
another machine, or on the other backend's embeddings, can round a few weights the other way, and
the default catalog must score the same everywhere. A cache is trusted
only when its weights are the fit's optimum for these texts: the gradient of the regularised loss
must vanish (`_stationarity_error`), which holds for the fitted weights alone. Weights are rounded
to 4 decimals and probabilities too, so every process scores the same.

A catalog whose texts hold a single class (one task and no out-of-scope profile) has nothing to
discriminate: no head is fitted and the semantic path runs without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .cachefiles import load_arrays, save_arrays

__all__ = ["HEAD_REGULARIZATION", "SHIPPED_HEADS", "SparseRow", "TaskHead", "cached_head", "fit_head", "fuse",
           "head_file_name", "head_key"]

HEAD_REGULARIZATION = 30.0
"""Inverse L2 strength (scikit-learn's C) of the head."""
NO_MATCH = -1
_FORMAT = 1
_WEIGHT_DECIMALS = 4
_PROBABILITY_DECIMALS = 4
_TOLERANCE = 1e-6
_MAX_ITERATIONS = 5000
_MAX_WEIGHTS = 20_000_000  # vocabulary x classes: a larger head would cost hundreds of MB
_STATIONARITY_TOLERANCE = 3e-6  # a fit stops near 1e-6; weights moved by 0.003 are past 3e-6
_ARRAYS = ("classes", "word_weights", "embedding_weights", "intercept")
_UNITS = 10 ** _WEIGHT_DECIMALS  # weights are stored as whole numbers of 1e-4: exact, and they deflate well
SHIPPED_HEADS = Path(__file__).parent / "data" / "heads"
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
SparseRow = tuple[IntArray, FloatArray]
"""A sparse feature row: sorted column indices and their values (`KeywordIndex.query_vector`)."""
_log = logging.getLogger(__name__)


def fuse(keyword_raw: FloatArray, similarity: FloatArray, head: FloatArray | None, *,
         fusion: float, head_weight: float) -> FloatArray:
    """The semantic path's raw score: keyword and embedding similarity mixed by `fusion`, then
    the head's probability mixed in by `head_weight` (the engine and `tune` both score with this)."""
    mixed: FloatArray = fusion * keyword_raw + (1.0 - fusion) * similarity
    if head is None or head_weight == 0.0:
        return mixed
    evidence = 1.0 + np.log10(np.maximum(head, 1e-4)) / 4.0
    fused: FloatArray = (1.0 - head_weight) * mixed + head_weight * evidence
    return fused


@dataclass(frozen=True)
class TaskHead:
    """Weights of the head: class `c` is the profile at position ``classes[c]`` (``-1``: no match)."""

    classes: IntArray
    word_weights: FloatArray
    embedding_weights: FloatArray
    intercept: FloatArray

    def logits(self, words: Sequence[SparseRow], vectors: npt.NDArray[np.floating[Any]]) -> FloatArray:
        """Class log-odds of each row; row by row, so a batch scores exactly as single queries do."""
        out = np.empty((len(words), len(self.classes)))
        for row, (idx, values) in enumerate(words):
            lexical = np.einsum("i,ij->j", values, self.word_weights[idx]) if len(idx) else 0.0
            dense = np.einsum("i,ij->j", np.asarray(vectors[row], dtype=np.float64), self.embedding_weights)
            out[row] = self.intercept + lexical + dense
        return out

    def class_probabilities(self, words: Sequence[SparseRow],
                            vectors: npt.NDArray[np.floating[Any]]) -> FloatArray:
        """Each row's softmax over the classes, unrounded."""
        logits = self.logits(words, vectors)
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities: FloatArray = weights / weights.sum(axis=1, keepdims=True)
        return probabilities

    def profile_probabilities(self, words: Sequence[SparseRow], vectors: npt.NDArray[np.floating[Any]],
                              is_task: npt.NDArray[np.bool_]) -> FloatArray:
        """Each row's probability of every profile: a task's own class, and for each out-of-scope
        profile the "no match" class; rounded so that every process compares the same numbers."""
        probabilities = np.round(self.class_probabilities(words, vectors), _PROBABILITY_DECIMALS)
        out = np.zeros((len(words), len(is_task)))
        known = self.classes >= 0
        out[:, self.classes[known]] = probabilities[:, known]
        if (~known).any():
            out[:, ~is_task] = probabilities[:, np.flatnonzero(~known)[0]][:, None]
        return out


def _design(words: Sequence[SparseRow], vectors: npt.NDArray[np.floating[Any]], vocabulary: int) -> Any:
    import scipy.sparse as sp

    indptr = np.cumsum([0, *(len(idx) for idx, _ in words)])
    indices = np.concatenate([idx for idx, _ in words]) if words else np.zeros(0, dtype=np.int64)
    data = np.concatenate([values for _, values in words]) if words else np.zeros(0)
    lexical = sp.csr_matrix((data, indices, indptr), shape=(len(words), vocabulary))
    return sp.hstack([lexical, sp.csr_matrix(np.asarray(vectors, dtype=np.float64))]).tocsr()


def fit_head(words: Sequence[SparseRow], vectors: npt.NDArray[np.floating[Any]], labels: IntArray, *,
             vocabulary: int, regularization: float = HEAD_REGULARIZATION) -> TaskHead | None:
    """Fit the head on training rows (`labels`: profile positions, ``-1`` for no match); None when
    the rows hold fewer than two classes or the head would exceed its size cap.

    Deterministic: L-BFGS with a fixed tolerance from zero, weights rounded to 4 decimals.
    """
    classes = np.unique(labels)
    if len(classes) < 2:
        return None
    if vocabulary * len(classes) > _MAX_WEIGHTS:
        _log.info("no discriminative head: %d words x %d classes exceeds its cap of %d weights",
                  vocabulary, len(classes), _MAX_WEIGHTS)
        return None
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=regularization, solver="lbfgs", tol=_TOLERANCE, max_iter=_MAX_ITERATIONS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the stationarity check reports a poor fit
        model.fit(_design(words, vectors, vocabulary), labels)
    coefficients, intercept = model.coef_.T, model.intercept_
    if len(classes) == 2:  # scikit-learn keeps one column for two classes: log-odds of the second
        coefficients = np.hstack([-coefficients / 2, coefficients / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    return _from_units(classes, _units(coefficients[:vocabulary]), _units(coefficients[vocabulary:]),
                       _units(intercept))


def _units(values: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.int64]:
    units: npt.NDArray[np.int64] = np.rint(np.asarray(values, dtype=np.float64) * _UNITS).astype(np.int64)
    return units


def _from_units(classes: npt.NDArray[Any], words: npt.NDArray[Any], embedding: npt.NDArray[Any],
                intercept: npt.NDArray[Any]) -> TaskHead:
    """The head whose weights are these whole numbers of 1e-4 (fitted, or read from a file)."""
    return TaskHead(classes=np.asarray(classes, dtype=np.int64),
                    word_weights=np.ascontiguousarray(words, dtype=np.float64) / _UNITS,
                    embedding_weights=np.ascontiguousarray(embedding, dtype=np.float64) / _UNITS,
                    intercept=np.asarray(intercept, dtype=np.float64) / _UNITS)


def _stationarity_error(head: TaskHead, words: Sequence[SparseRow], vectors: npt.NDArray[np.floating[Any]],
                        labels: IntArray, regularization: float) -> float:
    """How far `head` is from the optimum of its fit: the largest entry of the gradient of the mean
    log-loss plus ``|W|^2 / (2 C n)`` (the objective L-BFGS minimised; the intercept is not
    regularised), 0 at the optimum and far from 0 for any other weights."""
    probabilities = head.class_probabilities(words, vectors)
    truth = (labels[:, None] == head.classes[None, :]).astype(np.float64)
    residual = probabilities - truth
    design = _design(words, vectors, head.word_weights.shape[0])
    weights = np.vstack([head.word_weights, head.embedding_weights])
    if len(head.classes) == 2:  # a two-class fit is one column of log-odds, split in halves here
        residual = residual[:, 1:]
        weights = weights[:, 1:] - weights[:, :1]
    gradient = regularization * (design.T @ residual) + weights
    intercept = regularization * residual.sum(axis=0)
    return max(float(np.abs(gradient).max()), float(np.abs(intercept).max())) / (regularization * len(labels))


def head_key(fingerprint: str, model_id: str) -> str:
    """What a head is fitted from: the catalog and the model's weights. A backend's suffix to the
    model id (``+onnx-...``) names its runtime, not its weights, so both backends share a head."""
    return f"{fingerprint}:{model_id.split('+', 1)[0]}"


def head_file_name(key: str, *, rows: int, vocabulary: int,
                   regularization: float = HEAD_REGULARIZATION) -> tuple[str, dict[str, Any]]:
    """The file name of a head and the manifest it must carry: `key` names the training rows
    (catalog fingerprint and model weights)."""
    settings = {"format": _FORMAT, "key": key, "regularization": regularization, "rows": rows,
                "vocabulary": vocabulary, "tolerance": _TOLERANCE}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return f"head-{digest[:24]}.npz", settings


def cached_head(words: Sequence[SparseRow], vectors: npt.NDArray[np.floating[Any]], labels: IntArray, *,
                vocabulary: int, key: str, cache_dir: Path, shipped: Path | None = SHIPPED_HEADS,
                regularization: float = HEAD_REGULARIZATION) -> TaskHead | None:
    """The head of these training rows: the one shipped in `shipped` or cached in `cache_dir` when
    the file is its optimum (`_stationarity_error`), else fitted and written to `cache_dir`."""
    from .semantic import sweep_stale_temporaries

    name, settings = head_file_name(key, rows=len(labels), vocabulary=vocabulary, regularization=regularization)
    classes = len(np.unique(labels))
    dims = int(np.asarray(vectors).shape[1]) if len(labels) else 0
    sweep_stale_temporaries(cache_dir)
    path = cache_dir / name
    for candidate in ([shipped / name] if shipped is not None else []) + [path]:
        try:
            arrays = load_arrays(candidate, settings, _ARRAYS,
                                 max_bytes=(vocabulary + dims + 2) * classes * 8 + (1 << 20))
            if arrays is not None:
                stored = _checked(arrays, labels, vocabulary, dims)
                error = _stationarity_error(stored, words, vectors, labels, regularization)
                if error > _STATIONARITY_TOLERANCE:
                    raise ValueError(f"its weights are not the fit's optimum for this catalog (gradient {error:.3g})")
                _log.info("discriminative head read from %s", candidate)
                return stored
        except Exception as exc:  # any unusable file is refitted, never trusted
            warnings.warn(f"discriminative head cache {candidate} is unusable ({exc}); fitting it again",
                          RuntimeWarning, stacklevel=4)
    started = time.perf_counter()
    head = fit_head(words, vectors, labels, vocabulary=vocabulary, regularization=regularization)
    if head is None:
        return None
    _log.info("discriminative head fitted: %d texts, %d classes in %.1f s", len(labels), len(head.classes),
              time.perf_counter() - started)
    error = _stationarity_error(head, words, vectors, labels, regularization)
    if error > _STATIONARITY_TOLERANCE:  # a cache of it would never pass the check: fit it each time
        _log.info("discriminative head not cached: the fit stopped short of the optimum (gradient %.3g)", error)
        return head
    try:
        save_arrays(path, settings, {"classes": head.classes, "word_weights": _units(head.word_weights),
                                     "embedding_weights": _units(head.embedding_weights),
                                     "intercept": _units(head.intercept)}, compressed=True)
    except OSError as exc:
        warnings.warn(f"cannot write the discriminative head cache {path} ({exc}); continuing without it",
                      RuntimeWarning, stacklevel=4)
    return head


def _checked(arrays: dict[str, npt.NDArray[Any]], labels: IntArray, vocabulary: int, dims: int) -> TaskHead:
    """The cached arrays as a head, if their shapes and values can be this catalog's head."""
    classes = np.asarray(arrays["classes"])
    expected = np.unique(labels)
    if classes.shape != expected.shape or not np.array_equal(classes, expected):
        raise ValueError("its classes are not this catalog's")
    shapes = {"word_weights": (vocabulary, len(classes)), "embedding_weights": (dims, len(classes)),
              "intercept": (len(classes),)}
    for name, shape in shapes.items():
        if arrays[name].shape != shape or arrays[name].dtype != np.int64:
            raise ValueError(f"{name} is {arrays[name].dtype} of shape {arrays[name].shape}, expected int64 of {shape}")
    return _from_units(classes, arrays["word_weights"], arrays["embedding_weights"], arrays["intercept"])
