"""Keyword scoring: differential checks against scikit-learn, scipy and rapidfuzz, the on-disk
index cache, and its guarantees."""

from __future__ import annotations

import gc
import hashlib
import io
import json
import os
import stat
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rapidfuzz import fuzz
from sklearn.feature_extraction.text import TfidfVectorizer

import matcher
from matcher import Catalog, FieldWeights
from matcher import keyword as keyword_module
from matcher.keyword import (
    _ROWS,
    SIGNALS,
    KeywordIndex,
    _collector_paused,
    _distinct,
    _field_texts,
    _keyword_rows,
    _stem_line_terms,
    _transpose,
    _word_terms_of_lines,
    char_wb_ngrams,
    combine,
    word_terms,
)
from matcher.text import STOP_WORDS, normalize, tokenize
from tests.conftest import last_json_line_in_a_closed_folder, run_python_as_an_ordinary_user, small_records
from tests.test_determinism import WORDS

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
QUERIES = ["pull line items and totals out of vendor invoices", "invoice invoice invoice receipts",
           "translate emails", "zzz", "Résumé parsing — naïve café, 'quoted' it's don't", "a b c",
           "transcribe customer support calls and summarise each one in two lines",
           "invoce recipts", "x" * 300, "line items\ntotal due", "   ", "日本語のテキストを分類する",
           "invoice " * 70 + "totals"]  # a term counted 64 times or more leaves the sublinear-TF table
def _char_text(text: str) -> str:
    """The text scikit-learn's ``char_wb`` analyzer reads for the character n-grams: content tokens joined by spaces."""
    return " ".join(tok for tok in tokenize(text) if tok not in STOP_WORDS)


texts = st.one_of(st.text(max_size=200), st.lists(st.sampled_from(WORDS), max_size=12).map(" ".join))


@pytest.fixture(scope="module")
def index() -> KeywordIndex:
    return KeywordIndex(matcher.default_catalog().profiles(), weights=FieldWeights())


class Reference:
    """scikit-learn's vectorizers fitted as the index once fitted them, on the same profile texts."""

    def __init__(self, profiles: list[matcher.Task]) -> None:
        fields = [_field_texts(p) for p in profiles]
        self.word = TfidfVectorizer(analyzer=word_terms, sublinear_tf=True, smooth_idf=True, norm="l2",
                                    dtype=np.float64).fit(["\n".join(f.values()) for f in fields])
        self.fields = {name: self.word.transform([f[name] for f in fields]) for name in ("title", "description",
                                                                                           "phrases")}
        self.fields["phrase_rows"] = self.word.transform([normalize(x) for p in profiles for x in p.phrases])
        self.char = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), lowercase=False, sublinear_tf=True,
                                    smooth_idf=True, norm="l2", dtype=np.float64)
        self.char_matrix = self.char.fit_transform([_char_text(" ".join(f.values())) for f in fields])


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference(matcher.default_catalog().profiles())


def dense(idx: np.ndarray[Any, Any], values: np.ndarray[Any, Any], size: int) -> np.ndarray[Any, Any]:
    out = np.zeros(size)
    out[idx] = values
    return out


@pytest.mark.parametrize("records", ["default", "small"])
def test_the_built_index_equals_scikit_learns_vectorizers(records: str) -> None:
    profiles = (matcher.default_catalog() if records == "default" else Catalog.from_records(small_records())).profiles()
    built, ref = KeywordIndex(profiles, weights=FieldWeights()), Reference(profiles)
    assert built._terms == list(ref.word.get_feature_names_out())
    np.testing.assert_array_equal(built._idf, ref.word.idf_)
    for name in ("title", "description", "phrases", "phrase_rows"):
        mine = sp.csr_matrix(built._rows[name], shape=ref.fields[name].shape)
        assert (mine != ref.fields[name]).nnz == 0, name  # equal to the last bit
    grams = sorted(built._char_vocab, key=built._char_vocab.__getitem__)
    assert grams == list(ref.char.get_feature_names_out())
    np.testing.assert_array_equal(built._char_idf, ref.char.idf_)
    char_t = sp.csr_matrix(built._char_t, shape=ref.char_matrix.T.shape)
    assert (char_t != ref.char_matrix.T).nnz == 0


@pytest.mark.parametrize("query", QUERIES)
def test_query_vectors_equal_scikit_learns_transform(index: KeywordIndex, reference: Reference, query: str) -> None:
    assert_same_vectors(index, reference, normalize(query))


@FAST
@given(text=texts)
def test_query_vectors_equal_scikit_learns_transform_on_any_text(index: KeywordIndex, reference: Reference,
                                                                 text: str) -> None:
    assert_same_vectors(index, reference, normalize(text))


def assert_same_vectors(index: KeywordIndex, reference: Reference, normalized: str) -> None:
    expected = reference.word.transform([normalized]).toarray()[0]
    np.testing.assert_allclose(dense(*index.query_vector(normalized), len(index._vocab)), expected,
                               rtol=0, atol=1e-12)
    char_text = _char_text(normalized)
    assert char_wb_ngrams(char_text) == reference.char.build_analyzer()(char_text)
    expected = reference.char.transform([char_text]).toarray()[0]
    np.testing.assert_allclose(dense(*index.char_vector(normalized), len(index._char_vocab)), expected,
                               rtol=0, atol=1e-12)


@FAST
@given(text=texts)
def test_scores_equal_scipys_sparse_products_to_the_last_bit(index: KeywordIndex, reference: Reference,
                                                             text: str) -> None:
    repaired = index.repair(normalize(text))[0]
    parts = index.components(normalize(text))
    idx, values = index.query_vector(repaired)
    n = len(index.ids)
    for name in ("title", "description", "phrases"):
        expected = (reference.fields[name].T.tocsr()[idx].T @ values) if len(idx) else np.zeros(n)
        np.testing.assert_array_equal(parts[name], expected, err_msg=name)
    cidx, cvalues = index.char_vector(repaired)
    expected = (reference.char_matrix.T.tocsr()[cidx].T @ cvalues) if len(cidx) else np.zeros(n)
    np.testing.assert_array_equal(parts["char_ngrams"], expected)


@FAST
@given(components=st.lists(st.lists(st.floats(min_value=0, max_value=1), min_size=3, max_size=3),
                           min_size=len(SIGNALS), max_size=len(SIGNALS)),
       weights=st.lists(st.floats(min_value=0, max_value=8), min_size=len(SIGNALS), max_size=len(SIGNALS))
       .filter(lambda w: sum(w) > 0))
def test_combine_adds_the_weighted_signals_in_order_to_the_last_bit(components: list[list[float]],
                                                                   weights: list[float]) -> None:
    signals = {name: np.array(values) for name, values in zip(SIGNALS, components, strict=True)}
    field_weights = FieldWeights(**dict(zip(SIGNALS, weights, strict=True)))
    w = field_weights.as_dict()
    expected = np.clip(sum(w[name] * signals[name] for name in SIGNALS) / sum(w.values()), 0.0, 1.0)
    np.testing.assert_array_equal(combine(signals, field_weights), expected)


def test_idf_is_smoothed_and_positive_even_for_common_terms(index: KeywordIndex) -> None:
    assert np.all(index._idf >= 1.0)


def test_raw_scores_are_bounded(index: KeywordIndex) -> None:
    for query in ["invoice", "x", "the of and", "invoice " * 200, "contracts contracts key fields"]:
        raw = index.score(normalize(query)).raw
        assert raw.shape == (len(index.ids),)
        assert np.all((raw >= 0) & (raw <= 1))


def test_fuzzy_repair_uses_plain_ratio_with_no_processor(index: KeywordIndex) -> None:
    repaired, corrections = index.repair("invoce recipts")
    assert repaired == "invoice receipts"
    for c in corrections:
        assert c.similarity == round(fuzz.ratio(c.original, c.corrected, processor=None), 2)
        assert c.similarity >= 85


def test_known_and_short_words_are_never_rewritten(index: KeywordIndex) -> None:
    assert index.repair("invoice receipt") == ("invoice receipt", ())
    assert index.repair("invo") == ("invo", ())
    assert index.repair("quantum chromodynamics")[1] == ()


def test_a_short_query_does_not_score_high_against_long_text(index: KeywordIndex) -> None:
    # WRatio would rate "america" ~90 against a long name; our signals are length-normalized.
    raw = index.score(normalize("america")).raw
    assert raw.max() < 0.1


def test_word_terms_make_bigrams_within_lines_only() -> None:
    assert word_terms("line items\ntotal due") == ["line", "item", "line item", "total", "due", "total due"]


def test_coverage_counts_known_content_words(index: KeywordIndex) -> None:
    assert index.coverage("invoice totals") == 1.0
    assert index.coverage("foo invoice") == 0.5
    assert index.coverage("the and of") == 0.0


def test_fuzzy_repair_work_is_bounded_per_query(index: KeywordIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    from rapidfuzz import process  # the module `matcher.keyword` looks words up with

    calls: list[str] = []
    real = process.extractOne

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(process, "extractOne", counting)
    fresh = KeywordIndex(matcher.default_catalog().profiles(), weights=FieldWeights())
    words = [f"zq{chr(97 + i // 26)}{chr(97 + i % 26)}xv" for i in range(500)]
    fresh.score(normalize(" ".join(words * 3)))
    assert len(calls) == 64  # distinct out-of-vocabulary words looked up once each, 64 at most
    fresh.score(normalize(" ".join(words * 3)))
    assert len(calls) == 64  # misses are cached too
    fresh.score(normalize("x" * 3000))
    assert len(calls) == 64  # no word longer than 40 letters is looked up


def test_a_query_that_normalization_expands_past_the_limit_is_refused_before_any_work() -> None:
    engine = matcher.Matcher(semantic=False)
    with pytest.raises(matcher.QueryError, match="expands to 73,728 characters"):
        engine.match("\ufdfa" * 4096)
    assert engine.match("\ufdfa" * 100).candidates


def cached(cache: Path, records: list[dict[str, Any]] | None = None) -> KeywordIndex:
    catalog = Catalog.from_records(records if records is not None else small_records())
    return KeywordIndex(catalog.profiles(), weights=FieldWeights(), cache_dir=cache)


def same_scores(a: KeywordIndex, b: KeywordIndex) -> None:
    for query in ("restaurant receipts", "invoce line items", "translate", "zzz"):
        for name, values in a.components(normalize(query)).items():
            np.testing.assert_array_equal(values, b.components(normalize(query))[name], err_msg=name)
        assert a.shared_words(normalize(query), 0) == b.shared_words(normalize(query), 0)


def test_a_warm_cache_is_read_instead_of_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = cached(tmp_path)
    assert len(list(tmp_path.glob("keyword-*.npz"))) == 1
    monkeypatch.setattr("matcher.keyword._build", lambda profiles: pytest.fail("built despite a warm cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read = cached(tmp_path)
    same_scores(built, read)
    assert read.explain("receipts", [0, 1]) == built.explain("receipts", [0, 1])
    assert (read.profile_vectors() != built.profile_vectors()).nnz == 0


def test_a_changed_catalog_gets_its_own_index_cache(tmp_path: Path) -> None:
    records = small_records()
    cached(tmp_path, records)
    records[1]["keywords"] = {**records[1]["keywords"], "merchant": 0.9}
    changed = cached(tmp_path, records)
    assert len(list(tmp_path.glob("keyword-*.npz"))) == 2
    same_scores(changed, KeywordIndex(Catalog.from_records(records).profiles(), weights=FieldWeights()))


def _swap_first_terms(arrays: dict[str, Any]) -> None:
    terms = bytes(arrays["word_terms"]).decode().split("\n")
    terms[0], terms[1] = terms[1], terms[0]
    arrays["word_terms"] = np.frombuffer("\n".join(terms).encode(), dtype=np.uint8)


def _repeat_first_string(blob: Any) -> Any:
    strings = bytes(blob).decode().split("\n")
    return np.frombuffer("\n".join([strings[0], *strings]).encode(), dtype=np.uint8)


Arrays = dict[str, Any]
FORGERIES: dict[str, tuple[Callable[[Arrays], None], str]] = {
    "idf scaled": (lambda a: a.update(word_idf=a["word_idf"] * 1.01), "word_idf is not the smoothed IDF"),
    "char idf scaled": (lambda a: a.update(char_idf=a["char_idf"] * 0.99), "char_idf is not the smoothed IDF"),
    "title values reversed": (lambda a: a.update(title_data=np.ascontiguousarray(a["title_data"][::-1])),
                              "title row of profile 'invoice-extraction' disagrees"),
    "phrase values halved": (lambda a: a.update(phrase_rows_data=a["phrase_rows_data"] * 0.5),
                             "phrase 0 row of profile 'invoice-extraction' disagrees"),
    "character values shuffled": (lambda a: a.update(char_data=np.ascontiguousarray(a["char_data"][::-1])),
                                  "character n-gram row of profile 'invoice-extraction' disagrees"),
    "column out of range": (lambda a: a.update(keywords_indices=a["keywords_indices"] + 10_000),
                            "matrix keywords has a column outside"),
    "terms swapped": (_swap_first_terms, "word vocabulary is not sorted"),
    "term repeated": (lambda a: a.update(word_terms=_repeat_first_string(a["word_terms"])),
                      "word vocabulary is not sorted and distinct"),
    "grams repeated": (lambda a: a.update(char_terms=_repeat_first_string(a["char_terms"])),
                       "character n-gram vocabulary is not sorted and distinct"),
    "fuzzy word not a word": (lambda a: a.update(surface=np.frombuffer(b"a1\nzzz", dtype=np.uint8)),
                              "fuzzy-repair vocabulary is not alphabetic"),
    "zero weights": (lambda a: a.update(description_data=np.zeros_like(a["description_data"])),
                     r"matrix description holds values outside \(0, 1\]"),
    "row pointers cut": (lambda a: a.update(title_indptr=a["title_indptr"][:-1]), "expected 3 rows"),
    "wider indices": (lambda a: a.update(char_indices=a["char_indices"].astype(np.int64)), "dtypes"),
    "fuzzy words dropped": (lambda a: a.update(surface=np.frombuffer(b"aaa\nzzz", dtype=np.uint8)),
                            "fuzzy-repair vocabulary lacks words"),
    "array missing": (lambda a: a.pop("surface"), "arrays surface are missing"),
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_an_index_cache_whose_checksum_holds_but_whose_arrays_lie_is_rebuilt(tmp_path: Path, forgery: str) -> None:
    # whoever can write the file can recompute its checksum: the arrays themselves are checked
    from matcher.cachefiles import _checksum

    reference = cached(tmp_path)
    (path,) = tmp_path.glob("keyword-*.npz")
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files if name not in ("manifest", "checksum")}
        manifest = str(data["manifest"])
    change, reason = FORGERIES[forgery]
    change(arrays)
    np.savez(path, manifest=np.asarray(manifest), checksum=np.asarray(_checksum(arrays)), **arrays)
    with pytest.warns(RuntimeWarning, match=f"keyword index cache .* is unusable .*{reason}.*; rebuilding it"):
        rebuilt = cached(tmp_path)
    same_scores(rebuilt, reference)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt cache passes every check
        same_scores(cached(tmp_path), reference)


@pytest.mark.parametrize("damage", ["manifest", "checksum", "truncated"])
def test_a_damaged_index_cache_is_rebuilt(tmp_path: Path, damage: str) -> None:
    reference = cached(tmp_path)
    (path,) = tmp_path.glob("keyword-*.npz")
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:500])
        reason = "is unusable"
    else:
        with np.load(path) as data:
            content = {name: data[name] for name in data.files}
        if damage == "manifest":
            content["manifest"] = np.asarray(json.dumps({**json.loads(str(content["manifest"])), "profiles": 4}))
            reason = "manifest does not match"
        else:
            content["checksum"] = np.asarray(hashlib.sha256(b"other").hexdigest())
            reason = "checksum mismatch"
        buffer = io.BytesIO()
        np.savez(buffer, **content)
        path.write_bytes(buffer.getvalue())
    with pytest.warns(RuntimeWarning, match=reason):
        same_scores(cached(tmp_path), reference)


def test_a_fifo_at_the_index_cache_path_is_never_opened(tmp_path: Path) -> None:
    cached(tmp_path / "first")
    path = tmp_path / next((tmp_path / "first").glob("keyword-*.npz")).name
    os.mkfifo(path)
    built: list[KeywordIndex] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        worker = threading.Thread(target=lambda: built.append(cached(tmp_path)), daemon=True)
        worker.start()
        worker.join(60)
    if worker.is_alive():  # a reader stuck in open(): let it go
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    assert built, "building the index hung on the FIFO at the cache path"
    assert any("is not a regular file" in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert stat.S_ISREG(path.lstat().st_mode)


def test_an_unwritable_index_cache_folder_only_warns(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.warns(RuntimeWarning, match="cannot write keyword index cache"):
        index = cached(blocker)
    same_scores(index, KeywordIndex(Catalog.from_records(small_records()).profiles(), weights=FieldWeights()))


def test_an_index_cache_folder_the_process_may_not_enter_only_warns(tmp_path: Path) -> None:
    code = (
        "import json, sys, warnings\n"
        "from pathlib import Path\n"
        "import matcher\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    result = matcher.Matcher(semantic=False, cache_dir=Path(sys.argv[1])).match('translate emails')\n"
        "print(json.dumps([result.to_dict(), [str(w.message) for w in caught]]))\n"
    )
    body, messages = last_json_line_in_a_closed_folder(tmp_path / "locked", code)
    assert body == matcher.Matcher(semantic=False).match("translate emails").to_dict()
    assert any("keyword index cache" in m and "cannot inspect it: Permission denied" in m for m in messages), messages
    assert any("cannot write keyword index cache" in m for m in messages), messages


def test_a_fresh_process_with_a_warm_cache_answers_without_scikit_learn_or_scipy(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "import matcher\n"
        "result = matcher.Matcher(semantic=False, cache_dir=sys.argv[1]).match(sys.argv[2])\n"
        "print(json.dumps([result.to_dict(), sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sklearn', 'scipy'))]))\n"
    )
    query = "pull line items and totals out of vendor invoices"
    runs = [run_python_as_an_ordinary_user(code, str(tmp_path), query) for _ in range(2)]
    (cold_body, cold_modules), (warm_body, warm_modules) = (json.loads(r.stdout.splitlines()[-1]) for r in runs)
    assert "sklearn" in {m.split(".")[0] for m in cold_modules}  # the first process built the index
    assert warm_modules == []
    assert warm_body == cold_body == matcher.Matcher(semantic=False).match(query).to_dict()


def test_the_row_sets_cover_every_matrix_the_index_reads(index: KeywordIndex) -> None:
    assert set(index._rows) == set(_ROWS)
    assert index._flat_size == 4 * len(index.ids) + len(index._phrases)


@FAST
@given(text=texts)
def test_long_and_short_posting_lists_give_the_same_scores_to_the_last_bit(index: KeywordIndex, text: str) -> None:
    import matcher.keyword as keyword_module

    gathered = index.components(normalize(text))
    original = keyword_module._LONG_POSTINGS
    keyword_module._LONG_POSTINGS = 0  # every product copies slices, as it does for large catalogs
    try:
        sliced = index.components(normalize(text))
    finally:
        keyword_module._LONG_POSTINGS = original
    for name, values in gathered.items():
        np.testing.assert_array_equal(values, sliced[name], err_msg=name)


def test_a_catalog_without_phrases_builds_caches_and_scores(tmp_path: Path) -> None:
    records = [{key: value for key, value in record.items() if key != "phrases"} for record in small_records()]
    built = cached(tmp_path, records)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read = cached(tmp_path, records)
    same_scores(built, read)
    assert built.components(normalize("restaurant receipts"))["best_phrase"].tolist() == [0.0, 0.0, 0.0]


def test_keyword_rows_take_each_terms_largest_weight_and_have_unit_norm() -> None:
    idf = np.array([2.0, 1.0, 3.0])
    # profile 0: "invoic total" weight 0.5, then "invoic" weight 2.0; profile 1: none; profile 2: "line" weight 1.0
    owners, columns, weights = np.array([0, 0, 0, 2]), np.array([0, 1, 0, 2]), np.array([0.5, 0.5, 2.0, 1.0])
    values, indices, indptr = _keyword_rows(owners, columns, weights, profiles=3, idf=idf)
    assert indptr.tolist() == [0, 2, 2, 3]
    assert indices.tolist() == [0, 1, 2]
    first = np.array([2.0 * 2.0, 0.5 * 1.0])  # invoic keeps its larger weight, 2.0
    np.testing.assert_allclose(values[:2], first / np.linalg.norm(first), rtol=0, atol=1e-15)
    assert values[2] == 1.0


def test_keyword_rows_keep_the_order_terms_first_appear_in() -> None:
    values, indices, indptr = _keyword_rows(np.array([0, 0, 0]), np.array([2, 0, 2]), np.array([1.0, 1.0, 3.0]),
                                            profiles=1, idf=np.ones(3))
    assert indptr.tolist() == [0, 2]
    assert indices.tolist() == [2, 0]  # (`_csr` sorts them when the index is stored)
    np.testing.assert_allclose(values, np.array([3.0, 1.0]) / np.sqrt(10.0), rtol=0, atol=1e-15)


# Stems that are prefixes of one another, with digits and apostrophes, so bigrams interleave with longer words.
_STEMS = st.sampled_from(["a", "ab", "abc", "b", "b2", "ba", "d'or", "d", "zz", "z", "9", "été", "ete"])


@FAST
@given(lines=st.lists(st.lists(_STEMS, max_size=6), max_size=8))
def test_word_terms_keyed_by_integers_sort_as_their_strings_do(lines: list[list[str]]) -> None:
    terms, line_of, columns = _word_terms_of_lines(lines)
    expected = [_stem_line_terms(stems) for stems in lines]
    assert terms == sorted({term for line in expected for term in line})
    assert [terms[c] for c in columns.tolist()] == [term for line in expected for term in line]
    assert line_of.tolist() == [i for i, line in enumerate(expected) for _ in line]


@FAST
@given(keys=st.lists(st.integers(min_value=0, max_value=999), max_size=50))
def test_distinct_keys_agree_with_numpy_unique_through_the_table_and_the_sort(keys: list[int]) -> None:
    array = np.asarray(keys, dtype=np.int64)
    want, want_inverse = np.unique(array, return_inverse=True)
    for bound in (1000, keyword_module._DENSE_KEYS + 1):  # the table, then the sort
        distinct, inverse = _distinct(array, bound)
        assert distinct.tolist() == want.tolist() and inverse.tolist() == want_inverse.tolist()
        assert inverse.dtype == np.int64


def test_the_transpose_is_the_same_with_and_without_scipy(index: KeywordIndex,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    stacked = keyword_module._vstack([index._rows[name] for name in _ROWS])
    columns = index.vocabulary_size
    with_scipy = _transpose(stacked, columns)
    monkeypatch.delitem(sys.modules, "scipy.sparse")
    without = _transpose(stacked, columns)
    for mine, theirs in zip(without, with_scipy, strict=True):
        assert mine.dtype == theirs.dtype
        np.testing.assert_array_equal(mine, theirs)


def test_building_an_index_pauses_the_collector_and_restores_it(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    real_build = keyword_module._build

    def watched(profiles: Any) -> Any:
        seen.append(gc.isenabled())
        return real_build(profiles)

    monkeypatch.setattr(keyword_module, "_build", watched)
    KeywordIndex(matcher.default_catalog().profiles(), weights=FieldWeights())
    assert seen == [False]
    assert gc.isenabled()
    gc.disable()
    try:
        with pytest.raises(RuntimeError), _collector_paused():
            raise RuntimeError("boom")
        assert not gc.isenabled()  # a collector the caller had turned off stays off
    finally:
        gc.enable()
    with pytest.raises(RuntimeError), _collector_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()
