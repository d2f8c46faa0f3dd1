"""Keyword scoring: field-weighted word TF-IDF, nearest phrase, character n-grams, fuzzy repair.

scikit-learn fits the vocabularies and smoothed IDF once per catalog; queries are then
vectorized with the same analyzers and formula (sublinear TF, IDF, L2 norm) directly in numpy,
which avoids the vectorizer's per-call overhead. Query words missing from the catalog
vocabulary are repaired with rapidfuzz's plain `fuzz.ratio` (no processor), so "invoce" reads
"invoice", while whole-string scorers such as WRatio, which rate a short query against a long
text far too high, are never used.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from rapidfuzz import fuzz, process

from .catalog import Task
from .config import FieldWeights
from .results import FieldMatch, FuzzyCorrection
from .text import STOP_WORDS, normalize, stem, tokenize

__all__ = ["SIGNALS", "KeywordIndex", "KeywordScores", "combine", "word_terms"]

_FIELDS = ("title", "description", "keywords", "phrases")
_MAX_REPAIRED_WORDS = 32
_MAX_FUZZY_LOOKUPS = 64
_MAX_FUZZY_WORD = 40
_FUZZY_CACHE_SIZE = 8192
FloatArray = npt.NDArray[np.float64]


def word_terms(text: str) -> list[str]:
    """Stemmed content unigrams plus bigrams of neighbouring content words, line by line."""
    terms: list[str] = []
    for line in text.split("\n"):
        stems = [stem(tok) for tok in tokenize(line) if tok not in STOP_WORDS]
        terms.extend(stems)
        terms.extend(f"{a} {b}" for a, b in itertools.pairwise(stems))
    return terms


SIGNALS = (*_FIELDS, "best_phrase", "char_ngrams")


def combine(components: dict[str, FloatArray], weights: FieldWeights) -> FloatArray:
    """Weighted mean of the signals: the raw keyword score, in [0, 1]."""
    w = weights.as_dict()
    total = sum(w.values())
    raw = sum(w[name] * components[name] for name in SIGNALS) / total
    return np.clip(np.asarray(raw, dtype=np.float64), 0.0, 1.0)


def _char_text(text: str) -> str:
    return " ".join(tok for tok in tokenize(text) if tok not in STOP_WORDS)


def _field_texts(task: Task) -> dict[str, str]:
    return {
        "title": normalize(task.title or ""),
        "description": normalize(task.description or ""),
        "keywords": "\n".join(normalize(term) for term, _ in task.keywords),
        "phrases": "\n".join(normalize(p) for p in task.phrases),
    }


@dataclass(frozen=True)
class KeywordScores:
    """Raw keyword scores of one query against every profile, in index order."""

    raw: FloatArray
    corrections: tuple[FuzzyCorrection, ...]
    query_text: str
    coverage: float


class KeywordIndex:
    """Precomputed keyword profiles of a list of tasks, scored against queries."""

    def __init__(self, profiles: Sequence[Task], *, weights: FieldWeights,
                 fuzzy_cutoff: float = 85.0, fuzzy_min_length: int = 5) -> None:
        self.ids: tuple[str, ...] = tuple(p.id for p in profiles)
        self._weights = weights
        self._fuzzy_cutoff = fuzzy_cutoff
        self._fuzzy_min_length = fuzzy_min_length
        from sklearn.feature_extraction.text import TfidfVectorizer  # heavy: import on first build

        fields = [_field_texts(p) for p in profiles]
        n = len(profiles)

        self._word = TfidfVectorizer(analyzer=word_terms, sublinear_tf=True, smooth_idf=True,
                                     norm="l2", dtype=np.float64)
        self._word.fit(["\n".join(f.values()) for f in fields])
        self._vocab: dict[str, int] = {str(k): int(v) for k, v in self._word.vocabulary_.items()}
        self._terms = sorted(self._vocab, key=self._vocab.__getitem__)
        self._idf: FloatArray = self._word.idf_.astype(np.float64)

        self._field_matrices: dict[str, sp.csr_matrix] = {}
        for name in ("title", "description", "phrases"):
            self._field_matrices[name] = sp.csr_matrix(self._word.transform([f[name] for f in fields]))
        self._field_matrices["keywords"] = self._keyword_matrix(profiles)

        phrase_texts: list[str] = []
        owners: list[int] = []
        for position, profile in enumerate(profiles):
            for phrase in profile.phrases:
                phrase_texts.append(normalize(phrase))
                owners.append(position)
        self._phrase_texts = tuple(phrase_texts)
        self._phrase_owner = np.asarray(owners, dtype=np.int64)
        phrase_matrix = (sp.csr_matrix(self._word.transform(phrase_texts)) if phrase_texts
                         else sp.csr_matrix((0, len(self._vocab))))
        self._phrase_matrix = phrase_matrix
        self._phrase_starts = np.searchsorted(self._phrase_owner, np.arange(n))
        self._has_phrases = np.bincount(self._phrase_owner, minlength=n) > 0

        presence = sp.csr_matrix((n, len(self._vocab)))
        for name in _FIELDS:
            presence = presence + abs(self._field_matrices[name])
        self._profile_terms = sp.csr_matrix(presence)
        stacked = [self._field_matrices[name] for name in _FIELDS] + [phrase_matrix]
        self._stacked_t = sp.csr_matrix(sp.vstack(stacked).T)

        self._char = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), lowercase=False,
                                     sublinear_tf=True, smooth_idf=True, norm="l2", dtype=np.float64)
        char_docs = [_char_text(" ".join(f.values())) for f in fields]
        char_matrix = sp.csr_matrix(self._char.fit_transform(char_docs))
        self._char_analyzer = self._char.build_analyzer()
        self._char_vocab: dict[str, int] = {str(k): int(v) for k, v in self._char.vocabulary_.items()}
        self._char_idf: FloatArray = self._char.idf_.astype(np.float64)
        self._char_matrix_t = sp.csr_matrix(char_matrix.T)

        surface = {tok for f in fields for text in f.values() for tok in tokenize(text)}
        self._surface_vocab = sorted(tok for tok in surface if tok not in STOP_WORDS and tok.isalpha())
        self._closest_word = lru_cache(maxsize=_FUZZY_CACHE_SIZE)(self._closest_word_uncached)
        self._n = n

    def fuzzy_cache_info(self) -> tuple[int, int]:
        """Hits and misses of the fuzzy word-lookup cache so far."""
        info = self._closest_word.cache_info()
        return info.hits, info.misses

    def _closest_word_uncached(self, token: str) -> tuple[str, float] | None:
        """The catalog word nearest `token` by pinned `fuzz.ratio` (no processor), if above the cutoff."""
        hit = process.extractOne(token, self._surface_vocab, scorer=fuzz.ratio, processor=None,
                                 score_cutoff=self._fuzzy_cutoff)
        return None if hit is None else (str(hit[0]), round(float(hit[1]), 2))

    def _keyword_matrix(self, profiles: Sequence[Task]) -> sp.csr_matrix:
        rows, cols, vals = [], [], []
        for position, profile in enumerate(profiles):
            weights: dict[int, float] = {}
            for term, weight in profile.keywords:
                for piece in word_terms(normalize(term)):
                    index = self._vocab.get(piece)
                    if index is not None:
                        weights[index] = max(weights.get(index, 0.0), weight)
            if not weights:
                continue
            idx = np.fromiter(weights, dtype=np.int64)
            values = np.fromiter(weights.values(), dtype=np.float64) * self._idf[idx]
            values /= np.linalg.norm(values)
            rows.extend([position] * len(idx))
            cols.extend(idx.tolist())
            vals.extend(values.tolist())
        return sp.csr_matrix((vals, (rows, cols)), shape=(len(profiles), len(self._vocab)))

    def _repair(self, normalized: str) -> tuple[str, tuple[FuzzyCorrection, ...]]:
        """Replace out-of-vocabulary words with their closest catalog word, when close enough.

        The work is bounded whatever the query: each distinct word is looked up once, at most
        `_MAX_FUZZY_LOOKUPS` words per query, none longer than `_MAX_FUZZY_WORD`, and lookups
        (misses included) are cached across queries.
        """
        tokens = tokenize(normalized)
        fixes: dict[str, FuzzyCorrection] = {}
        seen: set[str] = set()
        for tok in tokens:
            if len(fixes) >= _MAX_REPAIRED_WORDS or len(seen) >= _MAX_FUZZY_LOOKUPS:
                break
            if (tok in seen or tok in STOP_WORDS or not self._fuzzy_min_length <= len(tok) <= _MAX_FUZZY_WORD
                    or not tok.isalpha() or stem(tok) in self._vocab):
                continue
            seen.add(tok)
            hit = self._closest_word(tok)
            if hit is not None:
                fixes[tok] = FuzzyCorrection(tok, hit[0], hit[1])
        if not fixes:
            return normalized, ()
        repaired = " ".join(fixes[tok].corrected if tok in fixes else tok for tok in tokens)
        return repaired, tuple(fixes[tok] for tok in sorted(fixes))

    def _query_vector(self, terms: list[str], vocab: dict[str, int],
                      idf: FloatArray) -> tuple[npt.NDArray[np.int64], FloatArray]:
        counts = Counter(t for t in terms if t in vocab)
        if not counts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        keys = sorted(counts, key=vocab.__getitem__)
        idx = np.fromiter((vocab[k] for k in keys), dtype=np.int64, count=len(keys))
        tf = np.fromiter((1.0 + math.log(counts[k]) for k in keys), dtype=np.float64, count=len(keys))
        values = tf * idf[idx]
        return idx, values / np.linalg.norm(values)

    def query_vector(self, normalized: str) -> tuple[npt.NDArray[np.int64], FloatArray]:
        """Sparse word TF-IDF vector (indices, values) of an already repaired query."""
        return self._query_vector(word_terms(normalized), self._vocab, self._idf)

    def score(self, normalized: str) -> KeywordScores:
        """Raw keyword scores in [0, 1] of a normalized query against every profile."""
        repaired, corrections = self._repair(normalized)
        return KeywordScores(combine(self._components(repaired), self._weights), corrections, repaired,
                             self.coverage(repaired))

    def coverage(self, repaired: str) -> float:
        """Share of the query's content words that the catalog vocabulary knows (0 when none).

        A query such as "foo bar baz" whose only known word is "bar" may score high against a
        profile that uses that word; its low coverage lets calibration lower its confidence.
        """
        stems = [stem(tok) for tok in tokenize(repaired) if tok not in STOP_WORDS]
        if not stems:
            return 0.0
        return round(sum(s in self._vocab for s in stems) / len(stems), 4)

    def components(self, normalized: str) -> dict[str, FloatArray]:
        """Each signal's similarity (title, description, ... char_ngrams) to every profile."""
        return self._components(self._repair(normalized)[0])

    def _components(self, repaired: str) -> dict[str, FloatArray]:
        n = self._n
        idx, values = self.query_vector(repaired)
        if len(idx):
            flat = np.asarray(self._stacked_t[idx].T @ values).ravel()
        else:
            flat = np.zeros(4 * n + len(self._phrase_texts))
        parts = {name: flat[i * n:(i + 1) * n] for i, name in enumerate(_FIELDS)}
        phrase_scores = flat[4 * n:]
        best = np.zeros(n)
        if len(phrase_scores):
            starts = self._phrase_starts[self._has_phrases]
            best[self._has_phrases] = np.maximum.reduceat(phrase_scores, starts)
        parts["best_phrase"] = best
        cidx, cvalues = self._query_vector(self._char_analyzer(_char_text(repaired)),
                                           self._char_vocab, self._char_idf)
        parts["char_ngrams"] = (np.asarray(self._char_matrix_t[cidx].T @ cvalues).ravel()
                                if len(cidx) else np.zeros(n))
        return parts

    def explain(self, repaired: str,
                positions: Sequence[int]) -> list[tuple[tuple[FieldMatch, ...], str | None]]:
        """For each profile position: per-field matched terms (with their share of the raw score)
        and the nearest phrase. The query is vectorized and scored once for all of them."""
        idx, values = self.query_vector(repaired)
        components = self._components(repaired)
        w = self._weights.as_dict()
        total = sum(w.values())
        return [self._explain_one(idx, values, components, w, total, position) for position in positions]

    def _explain_one(self, idx: npt.NDArray[np.int64], values: FloatArray, components: dict[str, FloatArray],
                     w: dict[str, float], total: float,
                     position: int) -> tuple[tuple[FieldMatch, ...], str | None]:
        matches = []
        for name in (f for f in _FIELDS if w[f] > 0):
            row = self._field_matrices[name].getrow(position)
            weights = dict(zip(row.indices.tolist(), row.data.tolist(), strict=False))
            terms = tuple(sorted(
                ((self._terms[i], round(w[name] * v * weights[i] / total, 4))
                 for i, v in zip(idx.tolist(), values.tolist(), strict=False) if i in weights),
                key=lambda item: (-item[1], item[0]),
            ))
            if terms:
                matches.append(FieldMatch(name, round(float(components[name][position]), 4),
                                          w[name], terms))
        for name in ("best_phrase", "char_ngrams"):
            value = float(components[name][position])
            if value > 0 and w[name] > 0:
                matches.append(FieldMatch(name, round(value, 4), w[name], ()))
        best_phrase = None
        if self._has_phrases[position] and len(idx):
            start = int(self._phrase_starts[position])
            stop = int(self._phrase_starts[position + 1]) if position + 1 < self._n else len(self._phrase_texts)
            block = np.asarray(self._phrase_matrix[start:stop][:, idx] @ values).ravel()
            if block.max() > 0:
                best_phrase = self._phrase_texts[start + int(np.argmax(block))]
        return tuple(matches), best_phrase

    def profile_vectors(self) -> sp.csr_matrix:
        """Unit-norm word TF-IDF vector of each whole profile (all fields), one row per profile."""
        vectors = self._field_matrices["title"] + self._field_matrices["description"]
        vectors = vectors + self._field_matrices["keywords"] + self._field_matrices["phrases"]
        norms = np.sqrt(np.asarray(vectors.multiply(vectors).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        return sp.csr_matrix(sp.diags(1.0 / norms) @ vectors)

    def shared_words(self, repaired: str, position: int) -> tuple[str, ...]:
        """Words of the query whose stem appears in the profile, in query order, once each."""
        row = self._profile_terms.getrow(position)
        present = {self._terms[i] for i in row.indices.tolist()}
        words: list[str] = []
        for tok in tokenize(repaired):
            if tok not in STOP_WORDS and stem(tok) in present and tok not in words:
                words.append(tok)
        return tuple(words)

    def repair(self, normalized: str) -> tuple[str, tuple[FuzzyCorrection, ...]]:
        """The query with out-of-vocabulary words repaired, and the corrections made."""
        return self._repair(normalized)
