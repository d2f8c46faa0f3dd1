"""Peer matchers, run side by side with our engine on the same catalogs and queries.

Every peer sees the same profiles as the engine (tasks *and* out-of-scope profiles such as the
default catalog's ``unsupported-*``): a query whose best profile is out-of-scope is a no-match
for the peer too, exactly as for the engine. Each peer returns a (queries x profiles) score
matrix; the harness turns it into rankings over tasks and tunes the peer's no-match threshold
on the tuning split (`matcher.metrics.balanced_threshold`).

Peers:

* ``TF-IDF cosine``: scikit-learn `TfidfVectorizer` (word 1-2 grams, sublinear TF) over one
  document per profile (title, description, keywords, phrases), cosine similarity.
* ``BM25 (bm25s)``: the same documents, bm25s defaults (Lucene BM25, k1=1.5, b=0.75,
  English stop words).
* ``rapidfuzz best match``: best rapidfuzz similarity of the query to any single text of the
  profile (title, keyword, phrase); the scorer (token_set_ratio or token_sort_ratio) is chosen
  by top-1 accuracy on the tuning split. WRatio was measured worse on both corpora.
* ``MiniLM nearest neighbour``: best cosine of the query embedding to any profile text embedding
  (the texts the engine embeds: title with description, then each phrase).
* ``MiniLM centroid``: cosine to the normalized mean of those embeddings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from matcher import Catalog, Embedder, Task
from matcher.semantic import profile_texts
from matcher.text import normalize

__all__ = [
    "BM25Peer",
    "EmbeddingPeer",
    "Peer",
    "RapidFuzzPeer",
    "TfidfPeer",
    "default_peers",
    "embedding_texts",
    "profile_document",
    "rank_tasks",
]

FloatMatrix = npt.NDArray[np.float64]
_DECIMALS = 6


class Peer(Protocol):
    """A baseline: fitted on a catalog (and optionally the tuning split), then scores queries."""

    name: str

    def fit(self, catalog: Catalog, tune_texts: Sequence[str] = (),
            tune_labels: Sequence[str | None] = ()) -> None: ...

    def scores(self, queries: Sequence[str]) -> FloatMatrix: ...


def profile_document(task: Task) -> str:
    """Every text of a profile in one document: title, description, keywords, phrases."""
    parts = [task.title or "", task.description or ""]
    parts.extend(term for term, _ in task.keywords)
    parts.extend(task.phrases)
    return "\n".join(p for p in parts if p)


def _profile_texts(task: Task) -> list[str]:
    """Single texts a profile offers to nearest-text matchers: title, keywords, phrases."""
    texts = [task.title] if task.title else []
    texts.extend(term for term, _ in task.keywords)
    texts.extend(task.phrases)
    if not texts and task.description:
        texts.append(task.description)
    return texts


def embedding_texts(task: Task) -> list[str]:
    """Exactly the texts the engine's semantic index embeds, so the vectors are shared."""
    return profile_texts(task)


def _grouped(texts_per_profile: Sequence[Sequence[str]]) -> tuple[list[str], npt.NDArray[np.int64]]:
    """Flatten per-profile texts; return them with each profile's start offset."""
    flat: list[str] = []
    starts = []
    for texts in texts_per_profile:
        starts.append(len(flat))
        flat.extend(texts)
    return flat, np.asarray(starts, dtype=np.int64)


def rank_tasks(scores: FloatMatrix, is_task: npt.NDArray[np.bool_], ids: Sequence[str], k: int = 5
               ) -> list[tuple[tuple[str, ...], float, float]]:
    """Per query: the top-k task ids, the best task score and the best out-of-scope score.

    Scores are rounded to 6 decimals and ties go to the lower profile index (profiles are
    sorted by id), the same total order the engine uses, so rankings are deterministic.
    """
    rounded = np.round(np.asarray(scores, dtype=np.float64), _DECIMALS)
    task_cols = np.flatnonzero(is_task)
    oos_cols = np.flatnonzero(~is_task)
    out = []
    for row in rounded:
        task_scores = row[task_cols]
        order = np.lexsort((np.arange(len(task_scores)), -task_scores))[:k]
        best_oos = float(row[oos_cols].max()) if len(oos_cols) else -np.inf
        out.append((tuple(ids[task_cols[i]] for i in order), float(task_scores[order[0]]), best_oos))
    return out


class TfidfPeer:
    """TF-IDF cosine between the query and one document per profile (scikit-learn)."""

    name = "TF-IDF cosine"

    def __init__(self) -> None:
        self._vectorizer: Any = None
        self._matrix: Any = None

    def fit(self, catalog: Catalog, tune_texts: Sequence[str] = (),
            tune_labels: Sequence[str | None] = ()) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        docs = [normalize(profile_document(p)) for p in catalog.profiles()]
        self._vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, norm="l2")
        self._matrix = self._vectorizer.fit_transform(docs)

    def scores(self, queries: Sequence[str]) -> FloatMatrix:
        vectors = self._vectorizer.transform([normalize(q) for q in queries])
        return np.asarray((vectors @ self._matrix.T).toarray(), dtype=np.float64)


class BM25Peer:
    """Okapi BM25 (bm25s, Lucene variant) between the query and one document per profile."""

    name = "BM25 (bm25s)"

    def __init__(self) -> None:
        self._retriever: Any = None
        self._n = 0

    def fit(self, catalog: Catalog, tune_texts: Sequence[str] = (),
            tune_labels: Sequence[str | None] = ()) -> None:
        import bm25s

        docs = [normalize(profile_document(p)) for p in catalog.profiles()]
        self._n = len(docs)
        self._retriever = bm25s.BM25()
        self._retriever.index(bm25s.tokenize(docs, stopwords="en", show_progress=False),
                              show_progress=False)

    def scores(self, queries: Sequence[str]) -> FloatMatrix:
        import bm25s

        tokens = bm25s.tokenize([normalize(q) for q in queries], stopwords="en", return_ids=False,
                                show_progress=False)
        out = np.zeros((len(queries), self._n), dtype=np.float64)
        for row, query_tokens in enumerate(tokens):
            if query_tokens:
                out[row] = self._retriever.get_scores(list(query_tokens))
        return out


class RapidFuzzPeer:
    """Best rapidfuzz similarity (0-100) of the query to any single text of each profile."""

    name = "rapidfuzz best match"

    def __init__(self, scorers: Sequence[str] = ("token_set_ratio", "token_sort_ratio"),
                 chunk: int = 256) -> None:
        self._candidates = tuple(scorers)
        self.scorer = self._candidates[0]
        self._chunk = chunk
        self._texts: list[str] = []
        self._starts = np.zeros(0, dtype=np.int64)
        self._memo: dict[tuple[str, tuple[str, ...]], FloatMatrix] = {}

    def fit(self, catalog: Catalog, tune_texts: Sequence[str] = (),
            tune_labels: Sequence[str | None] = ()) -> None:
        self._texts, self._starts = _grouped([_profile_texts(p) for p in catalog.profiles()])
        self._memo = {}
        ids = [p.id for p in catalog.profiles()]
        labelled = [(t, ids.index(g)) for t, g in zip(tune_texts, tune_labels, strict=True) if g is not None]
        if len(self._candidates) > 1 and labelled:
            gold = np.asarray([g for _, g in labelled])
            texts = tuple(t for t, _ in labelled)
            accuracy = {}
            for scorer in self._candidates:
                matrix = self._score_with(scorer, texts)
                self._memo[(scorer, texts)] = matrix
                accuracy[scorer] = float(np.mean(np.argmax(matrix, axis=1) == gold))
            self.scorer = max(self._candidates, key=lambda s: (accuracy[s], -self._candidates.index(s)))

    def _score_with(self, scorer_name: str, queries: Sequence[str]) -> FloatMatrix:
        from rapidfuzz import fuzz, process, utils

        scorer: Callable[..., float] = getattr(fuzz, scorer_name)
        out = np.zeros((len(queries), len(self._starts)), dtype=np.float64)
        for start in range(0, len(queries), self._chunk):
            block = process.cdist(list(queries[start:start + self._chunk]), self._texts, scorer=scorer,
                                  processor=utils.default_process, workers=1, dtype=np.float32)
            out[start:start + len(block)] = np.maximum.reduceat(block, self._starts, axis=1)
        return out

    def scores(self, queries: Sequence[str]) -> FloatMatrix:
        key = (self.scorer, tuple(queries))
        if key in self._memo:
            return self._memo[key]
        return self._score_with(self.scorer, queries)


class EmbeddingPeer:
    """Cosine between MiniLM embeddings: nearest profile text, or the profile's centroid."""

    def __init__(self, embedder: Embedder, *, centroid: bool) -> None:
        self._embedder = embedder
        self._centroid = centroid
        self.name = "MiniLM centroid" if centroid else "MiniLM nearest neighbour"
        self._vectors = np.zeros((0, 0), dtype=np.float64)
        self._starts = np.zeros(0, dtype=np.int64)

    def fit(self, catalog: Catalog, tune_texts: Sequence[str] = (),
            tune_labels: Sequence[str | None] = ()) -> None:
        texts, self._starts = _grouped([embedding_texts(p) for p in catalog.profiles()])
        vectors = np.asarray(self._embedder.encode(texts), dtype=np.float64)
        if self._centroid:
            centroids = np.add.reduceat(vectors, self._starts, axis=0)
            vectors = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
        self._vectors = vectors

    def with_query_embedder(self, embedder: Embedder) -> EmbeddingPeer:
        """A copy that encodes queries with `embedder` (same fitted profile vectors), for timing."""
        twin = EmbeddingPeer(embedder, centroid=self._centroid)
        twin._vectors, twin._starts = self._vectors, self._starts
        return twin

    def scores(self, queries: Sequence[str], chunk: int = 512) -> FloatMatrix:
        q = np.asarray(self._embedder.encode([normalize(t) for t in queries]), dtype=np.float64)
        if self._centroid:
            return np.asarray(q @ self._vectors.T, dtype=np.float64)
        out = np.zeros((len(q), len(self._starts)), dtype=np.float64)
        for start in range(0, len(q), chunk):  # bounded memory: queries x profile texts per chunk
            out[start:start + chunk] = np.maximum.reduceat(q[start:start + chunk] @ self._vectors.T,
                                                           self._starts, axis=1)
        return out


def default_peers(embedder: Embedder | None) -> list[Peer]:
    """The peers of the benchmark; the embedding ones only when a model is available."""
    peers: list[Peer] = [TfidfPeer(), BM25Peer(), RapidFuzzPeer()]
    if embedder is not None:
        peers += [EmbeddingPeer(embedder, centroid=False), EmbeddingPeer(embedder, centroid=True)]
    return peers
