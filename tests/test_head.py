"""The discriminative head: fitted on a catalog's own texts, deterministic, cached only when provably its fit."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import matcher
from matcher import head as task_head
from matcher.cachefiles import load_arrays, save_arrays
from matcher.semantic import profile_texts
from matcher.text import normalize
from tests.conftest import small_records


def _training_rows(m: matcher.Matcher) -> tuple[list[task_head.SparseRow], np.ndarray, np.ndarray]:
    """The head's training rows as the engine builds them: every profile text's word vector, embedding and label."""
    index = m._semantic_index()
    assert index is not None
    words, labels = m._head_training_rows()
    return words, index.text_vectors, labels


@pytest.fixture
def small_semantic(tmp_path: Path, default_semantic_matcher: matcher.Matcher) -> matcher.Matcher:
    return matcher.Matcher(matcher.Catalog.from_records(small_records()), semantic=default_semantic_matcher.embedder,
                           cache_dir=tmp_path, config=matcher.MatcherConfig())


def test_fuse_without_the_head_is_the_keyword_and_embedding_mix_exactly() -> None:
    keyword, similarity = np.array([0.2, 0.9, 0.0]), np.array([0.5, 0.1, 0.3])
    mixed = 0.3 * keyword + 0.7 * similarity
    assert np.array_equal(task_head.fuse(keyword, similarity, None, fusion=0.3, head_weight=0.5), mixed)
    head = np.array([0.1, 0.8, 0.1])
    assert np.array_equal(task_head.fuse(keyword, similarity, head, fusion=0.3, head_weight=0.0), mixed)


def test_fuse_reads_the_head_on_a_log_scale_from_one_in_ten_thousand_to_certainty() -> None:
    zeros = np.zeros(4)
    head = np.array([1.0, 0.01, 1e-4, 0.0])
    fused = task_head.fuse(zeros, zeros, head, fusion=0.5, head_weight=1.0)
    assert fused.tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0])


def test_the_head_tells_the_catalog_tasks_apart_from_their_own_words(small_semantic: matcher.Matcher) -> None:
    head = small_semantic._task_head()
    assert head is not None
    assert head.classes.tolist() == [0, 1, 2]  # three tasks, no out-of-scope profile
    index = small_semantic._semantic_index()
    assert index is not None
    for query, expected in [("totals from supplier invoices", "invoice-extraction"),
                            ("merchant and date on shop receipts", "receipt-extraction"),
                            ("are reviewers happy or angry", "sentiment-analysis")]:
        probabilities = small_semantic.head_probabilities(normalize(query), index.encode([normalize(query)])[0])
        assert probabilities is not None
        assert small_semantic._profiles[int(np.argmax(probabilities))].id == expected
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-3)


def test_out_of_scope_profiles_share_the_no_match_class(default_semantic_matcher: matcher.Matcher) -> None:
    m = default_semantic_matcher
    head = m._task_head()
    assert head is not None and head.classes[0] == -1
    index = m._semantic_index()
    assert index is not None
    query = normalize("generate a short video clip of a cat")
    probabilities = m.head_probabilities(query, index.encode([query])[0])
    assert probabilities is not None
    unsupported = probabilities[~m._is_task]
    assert np.all(unsupported == unsupported[0])  # one no-match probability, given to each
    assert probabilities[m._is_task].sum() + unsupported[0] == pytest.approx(1.0, abs=1e-3)


def test_fitting_twice_gives_the_same_weights(small_semantic: matcher.Matcher) -> None:
    words, vectors, labels = _training_rows(small_semantic)
    size = small_semantic._keyword_index().vocabulary_size
    first = task_head.fit_head(words, vectors, labels, vocabulary=size)
    second = task_head.fit_head(words, vectors, labels, vocabulary=size)
    assert first is not None and second is not None
    for field in dataclasses.fields(task_head.TaskHead):
        assert np.array_equal(getattr(first, field.name), getattr(second, field.name))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["invoice", "receipt", "totals", "happy", "tweets", "merchant", "the", "zzz"]),
                min_size=1, max_size=6))
def test_a_batch_scores_exactly_as_its_rows_one_by_one(words_in: list[str]) -> None:
    rng = np.random.default_rng(7)
    head = task_head.TaskHead(classes=np.array([-1, 0, 2]), word_weights=np.round(rng.normal(size=(8, 3)), 4),
                              embedding_weights=np.round(rng.normal(size=(4, 3)), 4),
                              intercept=np.array([0.1, -0.2, 0.3]))
    vocabulary = ["invoice", "receipt", "totals", "happy", "tweets", "merchant", "the", "zzz"]
    idx = np.array(sorted({vocabulary.index(w) for w in words_in}), dtype=np.int64)
    rows = [(idx, np.full(len(idx), 1 / np.sqrt(len(idx)))), (np.zeros(0, dtype=np.int64), np.zeros(0))]
    vectors = rng.normal(size=(2, 4)).astype(np.float32)
    is_task = np.array([True, False, True, False])
    batch = head.profile_probabilities(rows, vectors, is_task)
    for row in range(2):
        one = head.profile_probabilities(rows[row:row + 1], vectors[row:row + 1], is_task)[0]
        assert np.array_equal(batch[row], one)
    assert batch[:, 1].tolist() == batch[:, 3].tolist()  # both out-of-scope profiles read the no-match class


def test_a_catalog_with_one_class_has_no_head_and_still_matches(tmp_path: Path,
                                                                default_semantic_matcher: matcher.Matcher) -> None:
    one = matcher.Catalog.from_records(small_records()[:1])
    m = matcher.Matcher(one, semantic=default_semantic_matcher.embedder, cache_dir=tmp_path,
                        config=matcher.MatcherConfig(semantic_head_weight=0.5, fallback_threshold=1.0))
    assert m._task_head() is None
    result = m.match("pull totals out of supplier invoices")
    assert result.matcher == "semantic" and result.candidates[0].task_id == "invoice-extraction"


def test_the_head_is_read_back_from_the_cache(small_semantic: matcher.Matcher, tmp_path: Path) -> None:
    fitted = small_semantic._task_head()
    assert fitted is not None and len(list(tmp_path.glob("head-*.npz"))) == 1
    again = matcher.Matcher(small_semantic.catalog, semantic=small_semantic.embedder, cache_dir=tmp_path,
                            config=small_semantic.config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read = again._task_head()
    assert read is not None and np.array_equal(read.word_weights, fitted.word_weights)


def _forge(path: Path, change: dict[str, np.ndarray]) -> None:
    """Rewrite the cache at `path` with some arrays changed and a checksum that matches them."""
    import json

    with np.load(path) as data:
        manifest = json.loads(str(data["manifest"]))
    arrays = load_arrays(path, manifest, ("classes", "word_weights", "embedding_weights", "intercept"),
                         max_bytes=1 << 30)
    assert arrays is not None
    save_arrays(path, manifest, {**arrays, **change})


@pytest.mark.parametrize("forgery", ["zeros", "noise", "width", "floats"])
def test_a_cache_whose_weights_are_not_the_fit_is_refitted(small_semantic: matcher.Matcher, tmp_path: Path,
                                                           forgery: str) -> None:
    fitted = small_semantic._task_head()
    assert fitted is not None
    path = next(tmp_path.glob("head-*.npz"))
    units = np.rint(fitted.embedding_weights * 1e4).astype(np.int64)
    noise = np.random.default_rng(1).integers(-100, 101, units.shape)  # +-0.01
    change = {"zeros": {"word_weights": np.zeros(fitted.word_weights.shape, dtype=np.int64)},
              "noise": {"embedding_weights": units + noise},
              "width": {"embedding_weights": units[:-1]},
              "floats": {"embedding_weights": fitted.embedding_weights}}[forgery]
    _forge(path, change)
    again = matcher.Matcher(small_semantic.catalog, semantic=small_semantic.embedder, cache_dir=tmp_path,
                            config=small_semantic.config)
    with pytest.warns(RuntimeWarning, match="discriminative head cache .* is unusable"):
        refitted = again._task_head()
    assert refitted is not None and np.array_equal(refitted.embedding_weights, fitted.embedding_weights)


def test_the_default_catalog_reads_its_shipped_head_on_either_backend(
        default_semantic_matcher: matcher.Matcher, torch_semantic_matcher: matcher.Matcher) -> None:
    # a head fitted here could round a few weights the other way than the shipped one (another CPU,
    # or the other backend's embeddings); the shipped one makes the default catalog score the same anywhere
    rows = sum(len(profile_texts(p)) for p in default_semantic_matcher._profiles)
    embedder = default_semantic_matcher.embedder
    assert embedder is not None
    name, _ = task_head.head_file_name(
        task_head.head_key(default_semantic_matcher.catalog.fingerprint, embedder.model_id), rows=rows,
        vocabulary=default_semantic_matcher._keyword_index().vocabulary_size)
    shipped = task_head.SHIPPED_HEADS / name
    assert shipped.is_file(), (
        f"no shipped head {shipped.name} for the default catalog: after a catalog edit, run a semantic match once "
        f"and copy {shipped.name} from the cache folder (matcher.semantic.default_cache_dir()) into {shipped.parent}")
    onnx_head, torch_head = default_semantic_matcher._task_head(), torch_semantic_matcher._task_head()
    assert onnx_head is not None and torch_head is not None
    assert np.array_equal(onnx_head.word_weights, torch_head.word_weights)
    assert np.array_equal(onnx_head.embedding_weights, torch_head.embedding_weights)


def test_the_fitted_weights_are_the_optimum_the_cache_check_asks_for(small_semantic: matcher.Matcher) -> None:
    fitted = small_semantic._task_head()
    assert fitted is not None
    words, vectors, labels = _training_rows(small_semantic)
    error = task_head._stationarity_error(fitted, words, vectors, labels, task_head.HEAD_REGULARIZATION)
    assert error <= task_head._STATIONARITY_TOLERANCE
    moved = dataclasses.replace(fitted, intercept=fitted.intercept + np.array([0.5, -0.5, 0.0]))
    assert task_head._stationarity_error(moved, words, vectors, labels,
                                         task_head.HEAD_REGULARIZATION) > task_head._STATIONARITY_TOLERANCE


def test_the_head_weight_changes_the_semantic_score_and_nothing_else(small_semantic: matcher.Matcher,
                                                                     tmp_path: Path) -> None:
    query = "three people retype what suppliers send us"
    plain = matcher.Matcher(small_semantic.catalog, semantic=small_semantic.embedder, cache_dir=tmp_path,
                            config=matcher.MatcherConfig(fallback_threshold=1.0))
    headed = matcher.Matcher(small_semantic.catalog, semantic=small_semantic.embedder, cache_dir=tmp_path,
                             config=matcher.MatcherConfig(fallback_threshold=1.0, semantic_head_weight=0.5))
    a, b = plain.explain(query), headed.explain(query)
    assert [c.semantic_similarity for c in sorted(a, key=lambda c: c.task_id)] == \
        [c.semantic_similarity for c in sorted(b, key=lambda c: c.task_id)]
    assert [c.score for c in a] != [c.score for c in b]
    assert plain._head is None  # weight 0: the head is never fitted


def test_a_head_weight_outside_zero_to_one_is_a_config_error() -> None:
    with pytest.raises(matcher.ConfigError, match="semantic_head_weight"):
        matcher.MatcherConfig(semantic_head_weight=1.5)
