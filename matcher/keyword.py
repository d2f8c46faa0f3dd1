"""Keyword scoring: field-weighted word TF-IDF, nearest phrase, character n-grams, fuzzy repair.

scikit-learn fits the smoothed IDF once per catalog (`_build`); the built index is plain numpy
arrays, cached on disk beside the task embeddings (`cachefiles.save_arrays`), so a process with a
warm cache imports neither scikit-learn nor scipy. Queries are vectorized with the same analyzers
and formula (sublinear TF, IDF, L2 norm) directly in numpy and scored against term-major arrays
with one `np.bincount`, which adds each profile's products in the order scipy's product does.
Query words missing from the catalog vocabulary are repaired with rapidfuzz's plain `fuzz.ratio`
(no processor), so "invoce" reads "invoice", while whole-string scorers such as WRatio, which
rate a short query against a long text far too high, are never used.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import logging
import math
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt
from rapidfuzz import fuzz, process

from .cachefiles import load_arrays, save_arrays
from .catalog import Task
from .config import FieldWeights
from .results import FieldMatch, FuzzyCorrection
from .text import STOP_WORDS, normalize, stem, tokenize

if TYPE_CHECKING:
    import scipy.sparse as sp

__all__ = ["SIGNALS", "KeywordIndex", "KeywordScores", "char_wb_ngrams", "combine", "word_terms"]

_FIELDS = ("title", "description", "keywords", "phrases")
_ROWS = (*_FIELDS, "phrase_rows")  # the word matrices: one row per profile per field, then per phrase
_MAX_REPAIRED_WORDS = 32
_MAX_FUZZY_LOOKUPS = 64
_MAX_FUZZY_WORD = 40
_FUZZY_CACHE_SIZE = 8192
_PROFILE_TERMS_CACHE_SIZE = 1024  # profiles whose word-term sets `shared_words` keeps (the recent leaders)
_GRAM_CACHE_SIZE = 65536  # words whose known character n-grams are kept (a few hundred bytes each)
_CHAR_NGRAMS = (3, 5)
_CACHE_FORMAT = 2
# A cache holds at most a few entries per character of profile text (character n-grams of 3 to 5
# letters per letter, word terms per word), 12 bytes each; nothing larger is read.
_MAX_CACHE_BYTES_PER_CHAR = 256
_MAX_CACHE_OVERHEAD = 1 << 20
# Indices larger than this do not fit the int32 index arrays the cache stores.
_MAX_INDEX = np.iinfo(np.int32).max
_PROBES = 3
# Average posting-list length above which `_product` copies slices instead of gathering positions.
_LONG_POSTINGS = 256
# Word-term keys below this bound are made distinct through a table of every key (4 bytes each).
_DENSE_KEYS = 1 << 24
_TOLERANCE = 1e-12
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
# Sublinear term frequency ``1 + log(count)`` of the small counts a query holds (math.log's values).
_SUBLINEAR_TF = np.array([0.0, *(1.0 + math.log(count) for count in range(1, 64))])
_log = logging.getLogger(__name__)


def word_terms(text: str) -> list[str]:
    """Stemmed content unigrams plus bigrams of neighbouring content words, line by line."""
    terms: list[str] = []
    for line in text.split("\n"):
        terms.extend(_line_terms(tokenize(line)))
    return terms


def _line_terms(tokens: list[str]) -> list[str]:
    """`word_terms` of one line's tokens."""
    return _content_line_terms([tok for tok in tokens if tok not in STOP_WORDS])


def _content_line_terms(content: list[str]) -> list[str]:
    """`word_terms` of one line's content tokens (its stop words already dropped)."""
    return _stem_line_terms(list(map(stem, content)))


def _stem_line_terms(stems: list[str]) -> list[str]:
    """`word_terms` of one line's content stems: the stems, then each neighbouring pair's bigram."""
    return stems + [f"{a} {b}" for a, b in itertools.pairwise(stems)]


@lru_cache(maxsize=65536)
def _word_ngrams(word: str) -> tuple[str, ...]:
    """scikit-learn's ``char_wb`` n-grams (3 to 5) of one word padded with a space each side."""
    padded = f" {word} "
    length = len(padded)
    grams: list[str] = []
    for n in range(_CHAR_NGRAMS[0], _CHAR_NGRAMS[1] + 1):
        offset = 0
        grams.append(padded[:n])
        while offset + n < length:
            offset += 1
            grams.append(padded[offset:offset + n])
        if offset == 0:  # a word shorter than n counts once, as in scikit-learn
            break
    return tuple(grams)


def char_wb_ngrams(text: str) -> list[str]:
    """The character n-grams scikit-learn's ``TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5),
    lowercase=False)`` reads from `text`: each whitespace-separated word's, in order."""
    return [gram for word in text.split() for gram in _word_ngrams(word)]


SIGNALS = (*_FIELDS, "best_phrase", "char_ngrams")


def combine(components: dict[str, FloatArray], weights: FieldWeights) -> FloatArray:
    """Weighted mean of the signals: the raw keyword score, in [0, 1].

    The weighted signals are added one by one in `SIGNALS` order into one array, the same sums in
    the same order as ``sum(w * signal for ...)``, without a temporary array per addition.
    """
    factors, total = _signal_weights(weights)
    raw = np.multiply(factors[0], components[SIGNALS[0]], dtype=np.float64)
    for factor, name in zip(factors[1:], SIGNALS[1:], strict=True):
        raw += factor * components[name]
    raw /= total
    return np.clip(raw, 0.0, 1.0, out=raw)


@lru_cache(maxsize=64)
def _signal_weights(weights: FieldWeights) -> tuple[tuple[float, ...], float]:
    """Each signal's weight in `SIGNALS` order, and the weights' total."""
    w = weights.as_dict()
    return tuple(w[name] for name in SIGNALS), sum(w.values())


def _field_texts(task: Task) -> dict[str, str]:
    return {
        "title": normalize(task.title or ""),
        "description": normalize(task.description or ""),
        "keywords": "\n".join(normalize(term) for term, _ in task.keywords),
        "phrases": "\n".join(normalize(p) for p in task.phrases),
    }


class _QueryWords(NamedTuple):
    """A query's content tokens (stop words dropped), in order, and their stems: what the word
    terms, the character n-grams (``char_wb`` over the content tokens joined by spaces) and the
    coverage read."""

    content: list[str]
    stems: list[str]


def _query_words(text: str) -> _QueryWords:
    content = [tok for tok in tokenize(text) if tok not in STOP_WORDS]
    return _QueryWords(content, list(map(stem, content)))


@dataclass(frozen=True)
class KeywordScores:
    """Raw keyword scores of one query against every profile, in index order."""

    raw: FloatArray
    corrections: tuple[FuzzyCorrection, ...]
    query_text: str
    coverage: float


Csr = tuple[FloatArray, npt.NDArray[np.integer[Any]], npt.NDArray[np.integer[Any]]]  # data, indices, indptr


class KeywordIndex:
    """Precomputed keyword profiles of a list of tasks, scored against queries.

    With `cache_dir`, the built index is read from (or written to) a cache file there, keyed by
    the profiles' texts; a file that fails any check of `_check` is rebuilt with a warning.
    """

    def __init__(self, profiles: Sequence[Task], *, weights: FieldWeights,
                 fuzzy_cutoff: float = 85.0, fuzzy_min_length: int = 5, cache_dir: Path | None = None) -> None:
        self.ids: tuple[str, ...] = tuple(p.id for p in profiles)
        self._weights = weights
        self._fuzzy_cutoff = fuzzy_cutoff
        self._fuzzy_min_length = fuzzy_min_length
        n = len(profiles)
        self._n = n
        self._phrases = tuple(phrase for profile in profiles for phrase in profile.phrases)  # as written
        self._phrase_owner = np.repeat(np.arange(n, dtype=np.int64), [len(profile.phrases) for profile in profiles])
        self._phrase_starts = np.searchsorted(self._phrase_owner, np.arange(n))
        self._has_phrases = np.bincount(self._phrase_owner, minlength=n) > 0
        with _collector_paused():
            self._load(*_cached_build(profiles, cache_dir))
        self._closest_word = lru_cache(maxsize=_FUZZY_CACHE_SIZE)(self._closest_word_uncached)
        self._gram_ids = lru_cache(maxsize=_GRAM_CACHE_SIZE)(self._gram_ids_uncached)
        self._profile_terms = lru_cache(maxsize=_PROFILE_TERMS_CACHE_SIZE)(self._profile_terms_uncached)

    def _load(self, arrays: dict[str, npt.NDArray[Any]], tables: _Tables) -> None:
        """Set the index up from its arrays (`_build`'s, or a checked cache's) and their string tables."""
        n, phrases = self._n, len(self._phrases)
        self._terms = tables.terms
        self._vocab: dict[str, int] = tables.vocab
        self._idf: FloatArray = arrays["word_idf"]
        self._rows: dict[str, Csr] = {name: (arrays[f"{name}_data"], arrays[f"{name}_indices"],
                                             arrays[f"{name}_indptr"]) for name in _ROWS}
        stacked = _vstack([self._rows[name] for name in _ROWS])
        self._word_t = _transpose(stacked, len(self._terms))
        self._flat_size = 4 * n + phrases
        self._char_vocab: dict[str, int] = tables.gram_index
        self._char_idf: FloatArray = arrays["char_idf"]
        self._char_t: Csr = (arrays["char_data"], arrays["char_indices"], arrays["char_indptr"])
        self._surface_vocab = tables.surface

    @property
    def vocabulary_size(self) -> int:
        """Columns of `query_vector`: the catalog's distinct word terms."""
        return len(self._terms)

    def fuzzy_cache_info(self) -> tuple[int, int]:
        """Hits and misses of the fuzzy word-lookup cache so far."""
        info = self._closest_word.cache_info()
        return info.hits, info.misses

    def _closest_word_uncached(self, token: str) -> tuple[str, float] | None:
        """The catalog word nearest `token` by pinned `fuzz.ratio` (no processor), if above the cutoff."""
        hit = process.extractOne(token, self._surface_vocab, scorer=fuzz.ratio, processor=None,
                                 score_cutoff=self._fuzzy_cutoff)
        return None if hit is None else (str(hit[0]), round(float(hit[1]), 2))

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

    def query_vector(self, normalized: str) -> tuple[npt.NDArray[np.int64], FloatArray]:
        """Sparse word TF-IDF vector (indices, values) of an already repaired query."""
        return self._word_vector(normalized, _query_words(normalized))

    def _word_vector(self, normalized: str, words: _QueryWords) -> tuple[npt.NDArray[np.int64], FloatArray]:
        terms = word_terms(normalized) if "\n" in normalized else _stem_line_terms(words.stems)
        vocab = self._vocab
        return _unit_tfidf(Counter(i for term in terms if (i := vocab.get(term)) is not None), self._idf)

    def char_vector(self, normalized: str) -> tuple[npt.NDArray[np.int64], FloatArray]:
        """Sparse character n-gram TF-IDF vector (indices, values) of an already repaired query."""
        return self._char_vector(_query_words(normalized))

    def _char_vector(self, words: _QueryWords) -> tuple[npt.NDArray[np.int64], FloatArray]:
        return _unit_tfidf(Counter(itertools.chain.from_iterable(map(self._gram_ids, words.content))),
                           self._char_idf)

    def _gram_ids_uncached(self, word: str) -> tuple[int, ...]:
        """The vocabulary positions of `word`'s character n-grams that the catalog knows, in order."""
        vocab = self._char_vocab
        return tuple(i for gram in _word_ngrams(word) if (i := vocab.get(gram)) is not None)

    def score(self, normalized: str) -> KeywordScores:
        """Raw keyword scores in [0, 1] of a normalized query against every profile."""
        repaired, corrections = self._repair(normalized)
        words = _query_words(repaired)  # tokenized and stemmed once for every signal
        return KeywordScores(combine(self._components(repaired, words), self._weights), corrections, repaired,
                             self._coverage(words))

    def coverage(self, repaired: str) -> float:
        """Share of the query's content words that the catalog vocabulary knows (0 when none).

        A query such as "foo bar baz" whose only known word is "bar" may score high against a
        profile that uses that word; its low coverage lets calibration lower its confidence.
        """
        return self._coverage(_query_words(repaired))

    def _coverage(self, words: _QueryWords) -> float:
        if not words.stems:
            return 0.0
        vocab = self._vocab
        return round(sum(s in vocab for s in words.stems) / len(words.stems), 4)

    def components(self, normalized: str) -> dict[str, FloatArray]:
        """Each signal's similarity (title, description, ... char_ngrams) to every profile."""
        return self._components(self._repair(normalized)[0])

    def _components(self, repaired: str, words: _QueryWords | None = None) -> dict[str, FloatArray]:
        n = self._n
        words = _query_words(repaired) if words is None else words
        idx, values = self._word_vector(repaired, words)
        flat = _product(self._word_t, idx, values, self._flat_size)
        parts = {name: flat[i * n:(i + 1) * n] for i, name in enumerate(_FIELDS)}
        phrase_scores = flat[4 * n:]
        best = np.zeros(n)
        if len(phrase_scores):
            starts = self._phrase_starts[self._has_phrases]
            best[self._has_phrases] = np.maximum.reduceat(phrase_scores, starts)
        parts["best_phrase"] = best
        cidx, cvalues = self._char_vector(words)
        parts["char_ngrams"] = _product(self._char_t, cidx, cvalues, n)
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
            weights = _row(self._rows[name], position)
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
            stop = int(self._phrase_starts[position + 1]) if position + 1 < self._n else len(self._phrases)
            query = dict(zip(idx.tolist(), values.tolist(), strict=True))
            block = []
            for phrase in range(start, stop):
                total_score = 0.0  # summed in index order, as a sparse row product does
                for i, v in _row(self._rows["phrase_rows"], phrase).items():
                    if i in query:
                        total_score += v * query[i]
                block.append(total_score)
            if max(block) > 0:
                best_phrase = normalize(self._phrases[start + int(np.argmax(block))])
        return tuple(matches), best_phrase

    def profile_vectors(self) -> sp.csr_matrix:
        """Unit-norm word TF-IDF vector of each whole profile (all fields), one row per profile."""
        import scipy.sparse as sp

        shape = (self._n, len(self._terms))
        fields = [sp.csr_matrix(self._rows[name], shape=shape) for name in _FIELDS]
        vectors = fields[0] + fields[1]
        vectors = vectors + fields[2] + fields[3]
        norms = np.sqrt(np.asarray(vectors.multiply(vectors).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        return sp.csr_matrix(sp.diags(1.0 / norms) @ vectors)

    def shared_words(self, repaired: str, position: int) -> tuple[str, ...]:
        """Words of the query whose stem appears in the profile, in query order, once each."""
        present = self._profile_terms(position)
        words: list[str] = []
        for tok in tokenize(repaired):
            if tok not in STOP_WORDS and self._vocab.get(stem(tok), -1) in present and tok not in words:
                words.append(tok)
        return tuple(words)

    def _profile_terms_uncached(self, position: int) -> frozenset[int]:
        """The word terms of the profile at `position`, in any field."""
        present: set[int] = set()
        for name in _FIELDS:
            _, indices, indptr = self._rows[name]
            present.update(indices[indptr[position]:indptr[position + 1]].tolist())
        return frozenset(present)

    def repair(self, normalized: str) -> tuple[str, tuple[FuzzyCorrection, ...]]:
        """The query with out-of-vocabulary words repaired, and the corrections made."""
        return self._repair(normalized)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while the index is built or read: the build makes
    about a million small lists and strings and no cycles, and the collector's repeated passes over
    them cost about a third of a 10,000-task build. Reference counting still frees everything."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _unit_tfidf(counts: Counter[int], idf: FloatArray) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """Sublinear TF * IDF of the term `counts` (vocabulary position: count), L2-normalised, as
    (sorted indices, values); the same formula as scikit-learn's `TfidfTransformer`."""
    if not counts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    keys = sorted(counts)
    idx = np.fromiter(keys, dtype=np.int64, count=len(keys))
    frequencies = np.fromiter(map(counts.__getitem__, keys), dtype=np.int64, count=len(keys))
    if frequencies.max() < len(_SUBLINEAR_TF):
        tf = _SUBLINEAR_TF[frequencies]
    else:
        tf = np.array([1.0 + math.log(count) for count in frequencies.tolist()])
    values = tf * idf[idx]
    return idx, values / math.sqrt(float(values @ values))  # np.linalg.norm's own formula for a vector


def _product(term_major: Csr, idx: npt.NDArray[np.int64], values: FloatArray, size: int) -> FloatArray:
    """`matrix @ query` for a query (sorted `idx`, `values`) against a term-major matrix.

    Each output adds its products in term order, starting from 0, exactly as scipy's sparse
    product of the same matrices does, so the scores are the same to the last bit. Long posting
    lists (large catalogs) are copied slice by slice, short ones gathered in one vectorized step.
    """
    data, indices, indptr = term_major
    if not len(idx):
        return np.zeros(size)
    starts = indptr[idx]
    lengths = indptr[idx + 1] - starts
    ends = lengths.cumsum()  # where each term's postings end among the gathered ones
    total = int(ends[-1])
    if not total:
        return np.zeros(size)
    if total > _LONG_POSTINGS * len(idx):
        bounds = list(zip(starts.tolist(), (starts + lengths).tolist(), strict=True))
        gathered = np.concatenate([data[a:b] for a, b in bounds])
        columns = np.concatenate([indices[a:b] for a, b in bounds])
    else:
        positions = np.arange(total) + (starts - (ends - lengths)).repeat(lengths)
        gathered, columns = data[positions], indices[positions]
    products = gathered * values.repeat(lengths)
    return np.bincount(columns, weights=products, minlength=size).astype(np.float64, copy=False)


def _row(matrix: Csr, position: int) -> dict[int, float]:
    """Row `position` of a row-major matrix as {column: value}, in column order."""
    data, indices, indptr = matrix
    start, stop = int(indptr[position]), int(indptr[position + 1])
    return dict(zip(indices[start:stop].tolist(), data[start:stop].tolist(), strict=True))


def _vstack(matrices: Sequence[Csr]) -> Csr:
    """Row-major matrices stacked one above the other."""
    offsets = np.cumsum([0] + [len(m[0]) for m in matrices[:-1]])
    indptr = np.concatenate([matrices[0][2][:1]] + [m[2][1:] + offset for m, offset in zip(matrices, offsets,
                                                                                          strict=True)])
    return (np.concatenate([m[0] for m in matrices]), np.concatenate([m[1] for m in matrices]),
            indptr.astype(np.int64))


def _transpose(matrix: Csr, columns: int) -> Csr:
    """The column-major form (term-major, for a profile matrix): rows ascending within each column.

    After a build, scipy is loaded and its C transpose is used: it moves each value to the same
    place (a stable counting sort), so the arrays are the same either way (`tests/test_keyword.py`).
    """
    data, indices, indptr = matrix
    sparse = sys.modules.get("scipy.sparse")
    if sparse is not None:
        column_major = sparse.csr_matrix(matrix, shape=(len(indptr) - 1, columns)).tocsc()
        return (column_major.data, column_major.indices.astype(np.int32, copy=False),
                column_major.indptr.astype(np.int64, copy=False))
    rows = np.repeat(np.arange(len(indptr) - 1, dtype=np.int32), np.diff(indptr))
    # A stable sort by column: the keys (column, position) are distinct, so the faster unstable sort
    # orders them the same way.
    order = np.argsort((indices.astype(np.int64) << 32) | np.arange(len(indices), dtype=np.int64))
    counts = np.bincount(indices, minlength=columns)
    return data[order], rows[order], np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _document_frequencies(fields: Sequence[Csr], columns: int) -> npt.NDArray[np.int64]:
    """How many profiles hold each term in any of their `fields` (row-major matrices of one row per profile)."""
    n = len(fields[0][2]) - 1
    rows = np.concatenate([np.repeat(np.arange(n, dtype=np.int64), np.diff(m[2])) for m in fields])
    keys = np.sort(rows * columns + np.concatenate([m[1] for m in fields]).astype(np.int64))
    distinct = keys[np.concatenate([[True], np.diff(keys) > 0])] if len(keys) else keys
    return np.bincount(distinct % columns, minlength=columns)


def _blob(strings: Sequence[str]) -> npt.NDArray[np.uint8]:
    """Strings (none holding a newline) as one UTF-8 byte array: compact, and no pickle to read."""
    return np.frombuffer("\n".join(strings).encode("utf-8"), dtype=np.uint8)


def _strings(blob: npt.NDArray[Any]) -> list[str]:
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise ValueError("a string table is not a byte array")
    text = blob.tobytes().decode("utf-8")
    return text.split("\n") if text else []


class _Tables(NamedTuple):
    """The index's string tables, decoded once for both `_check` and `KeywordIndex._load`."""

    terms: list[str]
    vocab: dict[str, int]
    grams: list[str]
    gram_index: dict[str, int]
    surface: list[str]

    @classmethod
    def of(cls, arrays: dict[str, npt.NDArray[Any]]) -> _Tables:
        """Decode the tables; `ValueError` unless each is sorted and distinct, as `_build` writes them."""
        terms, grams, surface = (_strings(arrays[name]) for name in ("word_terms", "char_terms", "surface"))
        vocab = dict(zip(terms, range(len(terms)), strict=True))
        gram_index = dict(zip(grams, range(len(grams)), strict=True))
        for name, table, distinct in (("word", terms, len(vocab)), ("character n-gram", grams, len(gram_index)),
                                      ("fuzzy-repair", surface, len(set(surface)))):
            if distinct != len(table) or table != sorted(table):
                raise ValueError(f"the {name} vocabulary is not sorted and distinct")
        return cls(terms, vocab, grams, gram_index, surface)


def _csr(matrix: sp.csr_matrix, name: str) -> dict[str, npt.NDArray[Any]]:
    matrix.sort_indices()
    return {f"{name}_data": np.asarray(matrix.data, dtype=np.float64),
            f"{name}_indices": np.asarray(matrix.indices, dtype=np.int32),
            f"{name}_indptr": np.asarray(matrix.indptr, dtype=np.int64)}


def _counts(rows: Sequence[Sequence[str]], vocab: dict[str, int]) -> sp.csr_matrix:
    """Term counts, one row per term list (every term in `vocab`), as scikit-learn counts them."""
    import scipy.sparse as sp

    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    columns = np.fromiter(map(vocab.__getitem__, itertools.chain.from_iterable(rows)), dtype=np.int64,
                          count=int(lengths.sum()))
    matrix = sp.csr_matrix((np.ones(len(columns)), (np.repeat(np.arange(len(rows)), lengths), columns)),
                           shape=(len(rows), len(vocab)))
    matrix.sum_duplicates()
    return matrix


def _char_counts(docs: Sequence[Sequence[str]]) -> tuple[sp.csr_matrix, list[str]]:
    """Character n-gram counts of each profile's words, and the n-grams in alphabetical order.

    `TfidfVectorizer.fit_transform` stores each row's entries in the order its n-grams first
    appear in the corpus (it numbers them as met, sorts, then renumbers them alphabetically), and
    the L2 norm adds the squares in storage order: counted the same way, every value equals
    scikit-learn's to the last bit. Each distinct word's n-grams are counted once.
    """
    import scipy.sparse as sp

    words = list(dict.fromkeys(itertools.chain.from_iterable(docs)))  # distinct, in order of first use
    first_seen = {gram: i for i, gram in enumerate(dict.fromkeys(g for w in words for g in _word_ngrams(w)))}
    per_word = _counts([_word_ngrams(w) for w in words], first_seen)
    counts = sp.csr_matrix(_counts(docs, {w: i for i, w in enumerate(words)}) @ per_word)
    counts.sort_indices()  # by first appearance
    grams = sorted(first_seen)
    alphabetical = np.empty(len(grams), dtype=np.int32)
    alphabetical[list(map(first_seen.__getitem__, grams))] = np.arange(len(grams), dtype=np.int32)
    counts.indices = alphabetical[counts.indices]
    counts.has_sorted_indices = False
    return counts, grams


def _keyword_rows(owners: IntArray, columns: IntArray, weights: FloatArray, *, profiles: int,
                  idf: FloatArray) -> Csr:
    """Each profile's keyword vector, row-major, from its keyword terms (`owners`, `columns`,
    `weights`, one entry per term of each keyword, profile by profile): each term's largest keyword
    weight times its IDF, in the order the terms first appear, L2-normalised with the squares added
    in that order (`np.add.reduceat`, the same on any CPU)."""
    size = len(idf)
    keys = owners * size + columns
    order = np.lexsort((np.arange(len(keys)), keys))  # by term of each profile, then by appearance
    starts = np.flatnonzero(np.concatenate([[True], np.diff(keys[order]) != 0])) if len(keys) else order
    first = order[starts]  # each distinct (profile, term)'s first appearance ...
    largest = np.maximum.reduceat(weights[order], starts) if len(keys) else weights[:0]  # ... and largest weight
    appearance = np.argsort(first, kind="stable")  # profiles come in order, so this is by profile, then appearance
    indices = columns[first][appearance]
    values = largest[appearance] * idf[indices]
    sizes = np.bincount(owners[first], minlength=profiles).astype(np.int64)
    indptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    if len(values):
        filled = sizes > 0
        norms = np.sqrt(np.add.reduceat(values * values, indptr[:-1][filled]))
        values /= np.repeat(norms, sizes[filled])
    return values, indices, indptr


@dataclass(frozen=True)
class _Texts:
    """What the index reads of its profiles, analysed once: each line's content stems (a line's
    word terms are its stems and their neighbouring pairs, `_stem_line_terms`) and each profile's
    content words for the character n-grams."""

    title: list[list[str]]
    description: list[list[str]]
    keywords: list[list[tuple[list[str], float]]]
    phrases: list[list[list[str]]]
    char_words: list[list[str]]
    surface: list[str]

    @classmethod
    def of(cls, profiles: Sequence[Task]) -> _Texts:
        title, description, keywords, phrases, char_words = [], [], [], [], []
        surface: set[str] = set()
        def content(text: str) -> list[str]:
            return [tok for tok in tokenize(normalize(text)) if tok not in STOP_WORDS]

        for p in profiles:
            head = [content(p.title or ""), content(p.description or "")]
            terms = [content(term) for term, _ in p.keywords]
            lines = [content(phrase) for phrase in p.phrases]
            title.append(list(map(stem, head[0])))
            description.append(list(map(stem, head[1])))
            keywords.append([(list(map(stem, tokens)), weight) for tokens, (_, weight) in zip(terms, p.keywords,
                                                                                              strict=True)])
            phrases.append([list(map(stem, tokens)) for tokens in lines])
            words = list(itertools.chain(*head, *terms, *lines))
            char_words.append(words)  # the content tokens of all fields, in field order: what ``char_wb`` reads
            surface.update(words)
        return cls(title=title, description=description, keywords=keywords, phrases=phrases, char_words=char_words,
                   surface=sorted(tok for tok in surface if tok.isalpha()))


def _word_terms_of_lines(lines: Sequence[Sequence[str]]) -> tuple[list[str], IntArray, IntArray]:
    """The distinct word terms of `lines` (each a list of stems; see `_stem_line_terms`) in sorted
    order, and every term occurrence's line and column, line by line in `_stem_line_terms` order.

    No bigram string is made but the vocabulary's own: a term is keyed by integers, a stem's rank
    `r` as ``r * (V + 1)`` and the bigram of ranks `r` and `s` as ``r * (V + 1) + 1 + s``. Since
    every token character sorts after the space, "a b" sorts right after "a", before any longer
    word that starts with "a", and after "a c" exactly when "b" does after "c": the keys sort as
    the term strings do.
    """
    stems = sorted(set(itertools.chain.from_iterable(lines)))
    rank = dict(zip(stems, range(len(stems)), strict=True))
    lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
    ranks = np.fromiter(map(rank.__getitem__, itertools.chain.from_iterable(lines)), dtype=np.int64,
                        count=int(lengths.sum()))
    width = len(stems) + 1
    line_of = np.repeat(np.arange(len(lines), dtype=np.int64), lengths)
    paired = np.ones(len(ranks), dtype=bool)  # a stem that follows another in its line closes a bigram
    paired[(np.cumsum(lengths) - lengths)[lengths > 0]] = False
    second = np.flatnonzero(paired)
    keys = np.concatenate([ranks * width, ranks[second - 1] * width + 1 + ranks[second]])
    rows = np.concatenate([line_of, line_of[second]])
    order = np.argsort(rows, kind="stable")  # each line's stems, then its bigrams
    distinct, columns = _distinct(keys[order], width * width)
    first, following = np.divmod(distinct, width)
    terms = [stems[a] if b == 0 else f"{stems[a]} {stems[b - 1]}" for a, b in zip(first.tolist(), following.tolist(),
                                                                                   strict=True)]
    return terms, rows[order], columns


def _distinct(keys: IntArray, bound: int) -> tuple[IntArray, IntArray]:
    """``np.unique(keys, return_inverse=True)`` of keys in ``0..bound - 1``; through a table of
    every key when `bound` is at most `_DENSE_KEYS`, which skips the sort."""
    if bound > _DENSE_KEYS:
        distinct, inverse = np.unique(keys, return_inverse=True)
        return distinct, inverse.astype(np.int64, copy=False)
    present = np.zeros(bound, dtype=bool)
    present[keys] = True
    distinct = np.flatnonzero(present)
    position = np.empty(bound, dtype=np.int32)  # vocabularies stay below _MAX_INDEX
    position[distinct] = np.arange(len(distinct), dtype=np.int32)
    return distinct, position[keys].astype(np.int64)


def _build(profiles: Sequence[Task]) -> dict[str, npt.NDArray[Any]]:
    """The index's arrays: scikit-learn fits the smoothed IDF and weighs the counts (as its
    `TfidfVectorizer` would on the same texts, which `tests/test_keyword.py` checks); the text is
    analysed once per field, and character n-grams once per distinct word."""
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfTransformer  # heavy: only when building

    texts = _Texts.of(profiles)
    n = len(profiles)
    phrase_rows = [stems for per in texts.phrases for stems in per]
    pieces = [stems for per in texts.keywords for stems, _ in per]
    lines = [*texts.title, *texts.description, *phrase_rows, *pieces]  # every line, analysed in one pass
    terms, line_of, columns = _word_terms_of_lines(lines)
    if not terms:
        raise ValueError("empty vocabulary: the profiles hold no content words")
    counts = sp.csr_matrix((np.ones(len(columns)), (line_of, columns)), shape=(len(lines), len(terms)))
    counts.sum_duplicates()
    p = len(phrase_rows)
    piece_owner = np.repeat(np.arange(n), [len(per) for per in texts.keywords])

    def per_profile(line_counts: sp.csr_matrix, owner: npt.NDArray[np.int64]) -> sp.csr_matrix:
        """The lines' counts summed per owning profile (a profile's phrases are one text, as are its keywords)."""
        lines_ = len(owner)
        return sp.csr_matrix(sp.csr_matrix((np.ones(lines_), (owner, np.arange(lines_))), shape=(n, lines_))
                             @ line_counts)

    rows = {"title": counts[:n], "description": counts[n:2 * n], "phrase_rows": counts[2 * n:2 * n + p]}
    rows["phrases"] = per_profile(rows["phrase_rows"], np.repeat(np.arange(n), [len(per) for per in texts.phrases]))
    rows["phrases"].sort_indices()
    keyword_counts = per_profile(counts[2 * n + p:], piece_owner)
    documents = rows["title"] + rows["description"] + rows["phrases"] + keyword_counts
    word = TfidfTransformer(norm="l2", use_idf=True, smooth_idf=True, sublinear_tf=True)
    word.fit(documents)  # the document frequencies of the profiles' whole texts
    idf = np.asarray(word.idf_, dtype=np.float64)
    arrays: dict[str, npt.NDArray[Any]] = {"word_terms": _blob(terms), "word_idf": idf}
    for name, matrix in rows.items():  # (scikit-learn refuses a matrix of no rows: catalogs without phrases)
        arrays.update(_csr(sp.csr_matrix(word.transform(matrix)) if matrix.shape[0] else matrix, name))
    in_pieces = line_of >= 2 * n + p
    piece = line_of[in_pieces] - (2 * n + p)  # each keyword term's keyword
    piece_weights = np.asarray([weight for per in texts.keywords for _, weight in per], dtype=np.float64)
    keyword_rows = _keyword_rows(piece_owner[piece], columns[in_pieces], piece_weights[piece], profiles=n, idf=idf)
    arrays.update(_csr(sp.csr_matrix(keyword_rows, shape=(n, len(terms))), "keywords"))

    char_counts, grams = _char_counts(texts.char_words)
    char = TfidfTransformer(norm="l2", use_idf=True, smooth_idf=True, sublinear_tf=True)
    char_matrix = sp.csr_matrix(char.fit(char_counts).transform(char_counts, copy=False)).T.tocsr()
    char_matrix.sort_indices()
    arrays.update(_csr(char_matrix, "char"))
    arrays["char_terms"] = _blob(grams)
    arrays["char_idf"] = np.asarray(char.idf_, dtype=np.float64)
    arrays["surface"] = _blob(texts.surface)
    return arrays


_ARRAYS = ("word_terms", "word_idf", *(f"{name}_{part}" for name in _ROWS for part in ("data", "indices", "indptr")),
           "char_terms", "char_idf", "char_data", "char_indices", "char_indptr", "surface")


def _cache_key(profiles: Sequence[Task]) -> tuple[str, int]:
    """Digest of everything the index reads (each profile's id, texts and keyword weights, in
    order), and the length of that text, which bounds the size of the index."""
    canonical = [[p.id, p.title, p.description, p.keywords, p.phrases] for p in profiles]
    settings = {"format": _CACHE_FORMAT, "char_ngrams": list(_CHAR_NGRAMS)}
    blob = json.dumps([settings, canonical], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest(), len(blob)


def _cached_build(profiles: Sequence[Task], cache_dir: Path | None) -> tuple[dict[str, npt.NDArray[Any]], _Tables]:
    """The index's arrays and string tables, read from the cache in `cache_dir` when it passes
    `_check`, else built (and written there). Without `cache_dir`, always built."""
    if cache_dir is None:
        arrays = _build(profiles)
        return arrays, _Tables.of(arrays)
    from .semantic import sweep_stale_temporaries

    key, chars = _cache_key(profiles)
    path = cache_dir / f"keyword-{key[:24]}.npz"
    manifest = {"format": _CACHE_FORMAT, "key": key, "profiles": len(profiles)}
    sweep_stale_temporaries(cache_dir)
    try:
        cached = load_arrays(path, manifest, _ARRAYS, max_bytes=chars * _MAX_CACHE_BYTES_PER_CHAR + _MAX_CACHE_OVERHEAD)
        if cached is not None:
            tables = _Tables.of(cached)
            _check(cached, tables, profiles)
            _log.info("keyword index read from the cache %s", path)
            return cached, tables
    except Exception as exc:  # any unusable cache is rebuilt, never trusted
        warnings.warn(f"keyword index cache {path} is unusable ({exc}); rebuilding it", RuntimeWarning, stacklevel=5)
    started = time.perf_counter()
    arrays = _build(profiles)
    _log.info("keyword index of %d profiles built in %.2f s (no usable cache at %s)", len(profiles),
              time.perf_counter() - started, path)
    try:
        save_arrays(path, manifest, arrays)
        _log.info("keyword index cache written: %s", path)
    except OSError as exc:
        warnings.warn(f"cannot write keyword index cache {path} ({exc}); continuing without it",
                      RuntimeWarning, stacklevel=5)
    return arrays, _Tables.of(arrays)


def _check(arrays: dict[str, npt.NDArray[Any]], tables: _Tables, profiles: Sequence[Task]) -> None:
    """Raise `ValueError` unless the cached arrays can be the index of `profiles`.

    A checksum only proves the file whole (whoever can write it can recompute it), so the arrays
    must also be well-formed sparse matrices of the right shapes, the IDF must be the smoothed IDF
    of the stored matrices' document frequencies, and the rows of a few profiles (first, middle,
    last), analysed again now, must equal the stored ones.
    """
    n = len(profiles)
    terms, grams = tables.terms, tables.grams
    if len(terms) > _MAX_INDEX or len(grams) > _MAX_INDEX:
        raise ValueError("a vocabulary is larger than the index can hold")
    shapes = {name: (len(profiles), len(terms)) for name in _FIELDS}
    shapes["phrase_rows"] = (sum(len(p.phrases) for p in profiles), len(terms))
    for name, (rows, columns) in shapes.items():
        _check_csr(arrays, name, rows, columns)
    _check_csr(arrays, "char", len(grams), n)
    for name, size in (("word_idf", len(terms)), ("char_idf", len(grams))):
        idf = arrays[name]
        if idf.dtype != np.float64 or idf.shape != (size,):
            raise ValueError(f"{name} holds {idf.shape} {idf.dtype} values, expected {size} float64")
    word_df = _document_frequencies([(arrays[f"{k}_data"], arrays[f"{k}_indices"], arrays[f"{k}_indptr"])
                                     for k in _FIELDS], max(len(terms), 1))
    char_df = np.diff(arrays["char_indptr"])  # term-major: a gram's entries are the profiles that hold it
    for name, df, size in (("word_idf", word_df, len(terms)), ("char_idf", char_df, len(grams))):
        counts = df.astype(np.float64)
        expected = np.log(np.full(size, n + 1.0) / (counts + 1.0)) + 1.0
        if not np.allclose(arrays[name], expected, rtol=0.0, atol=_TOLERANCE):
            raise ValueError(f"{name} is not the smoothed IDF of the stored matrices")
    if not all(w.isalpha() for w in tables.surface):
        raise ValueError("the fuzzy-repair vocabulary is not alphabetic")
    _check_probes(arrays, profiles, tables)


def _check_csr(arrays: dict[str, npt.NDArray[Any]], name: str, rows: int, columns: int) -> None:
    data, indices, indptr = (arrays[f"{name}_{part}"] for part in ("data", "indices", "indptr"))
    if data.dtype != np.float64 or indices.dtype != np.int32 or indptr.dtype != np.int64:
        raise ValueError(f"matrix {name} has dtypes {data.dtype}, {indices.dtype}, {indptr.dtype}")
    if data.ndim != 1 or indices.shape != data.shape or indptr.shape != (rows + 1,):
        raise ValueError(f"matrix {name} has arrays of shapes {data.shape}, {indices.shape}, {indptr.shape}; "
                         f"expected {rows} rows")
    if indptr[0] != 0 or indptr[-1] != len(data) or np.any(np.diff(indptr) < 0):
        raise ValueError(f"matrix {name} has malformed row pointers")
    if len(indices) and (indices.min() < 0 or indices.max() >= columns):
        raise ValueError(f"matrix {name} has a column outside 0..{columns - 1}")
    if not np.all(np.isfinite(data)) or np.any(data <= 0) or np.any(data > 1.0 + 1e-9):
        raise ValueError(f"matrix {name} holds values outside (0, 1]")
    inner = np.diff(indices.astype(np.int64)) > 0
    starts = indptr[1:-1][(indptr[1:-1] > 0) & (indptr[1:-1] < len(indices))] - 1
    inner[starts] = True
    if not np.all(inner):
        raise ValueError(f"matrix {name} has unsorted or repeated columns within a row")


def _check_probes(arrays: dict[str, npt.NDArray[Any]], profiles: Sequence[Task], tables: _Tables) -> None:
    """Rows of `_PROBES` profiles (spread from first to last) analysed again must equal the stored ones."""
    n = len(profiles)
    vocab, gram_index, grams, surface = tables.vocab, tables.gram_index, tables.grams, set(tables.surface)
    idf, char_idf = arrays["word_idf"], arrays["char_idf"]
    positions = sorted({round(i * (n - 1) / (_PROBES - 1)) for i in range(_PROBES)}) if n > 1 else list(range(n))
    phrase_start = np.concatenate([[0], np.cumsum([len(p.phrases) for p in profiles])])
    char_rows = np.repeat(np.arange(len(grams)), np.diff(arrays["char_indptr"]))

    def tfidf(items: Sequence[str], index: dict[str, int], weights: FloatArray) -> dict[int, float]:
        try:
            keys, values = _unit_tfidf(Counter(map(index.__getitem__, items)), weights)
        except KeyError:
            raise ValueError("a probed profile uses a term missing from the vocabulary") from None
        return dict(zip(keys.tolist(), values.tolist(), strict=True))

    for position in positions:
        texts = _Texts.of([profiles[position]])
        phrases = [_stem_line_terms(stems) for stems in texts.phrases[0]]
        expected = {
            "title": tfidf(_stem_line_terms(texts.title[0]), vocab, idf),
            "description": tfidf(_stem_line_terms(texts.description[0]), vocab, idf),
            "phrases": tfidf([t for terms_ in phrases for t in terms_], vocab, idf),
        }
        pieces = [(vocab[t], weight) for stems, weight in texts.keywords[0] for t in _stem_line_terms(stems)
                  if t in vocab]
        values, idx, _ = _keyword_rows(np.zeros(len(pieces), dtype=np.int64),
                                       np.asarray([c for c, _ in pieces], dtype=np.int64),
                                       np.asarray([w for _, w in pieces], dtype=np.float64), profiles=1, idf=idf)
        expected["keywords"] = dict(zip(idx.tolist(), values.tolist(), strict=True))
        rows = {name: (position, expected[name]) for name in _FIELDS}
        for k, phrase in enumerate(phrases):
            rows[f"phrase {k}"] = (int(phrase_start[position]) + k, tfidf(phrase, vocab, idf))
        for label, (row, want) in rows.items():
            name = "phrase_rows" if label.startswith("phrase ") else label
            stored = _row((arrays[f"{name}_data"], arrays[f"{name}_indices"], arrays[f"{name}_indptr"]), row)
            if stored.keys() != want.keys() or any(abs(stored[i] - want[i]) > _TOLERANCE for i in want):
                raise ValueError(f"the {label} row of profile {profiles[position].id!r} disagrees with its text")
        mine = char_rows[arrays["char_indices"] == position]
        stored_char = dict(zip(mine.tolist(), arrays["char_data"][arrays["char_indices"] == position].tolist(),
                               strict=True))
        want_char = tfidf([g for w in texts.char_words[0] for g in _word_ngrams(w)], gram_index, char_idf)
        if stored_char.keys() != want_char.keys() or any(abs(stored_char[i] - want_char[i]) > _TOLERANCE
                                                         for i in want_char):
            raise ValueError(f"the character n-gram row of profile {profiles[position].id!r} disagrees with its text")
        if not set(texts.surface) <= surface:
            raise ValueError(f"the fuzzy-repair vocabulary lacks words of profile {profiles[position].id!r}")
