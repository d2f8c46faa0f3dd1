"""Offline tuning: deterministic, validated input, a report with precision and recall per task."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import matcher
from matcher import MatcherConfig, UnknownTaskError
from matcher.text import normalize
from matcher.tuning import load_labelled

from .conftest import REPO

# Keyword-only tuning on this corpus cannot reach 97% precision; tune says so with this warning.
pytestmark = pytest.mark.filterwarnings("ignore:no setting reaches:RuntimeWarning")


def labelled_rows() -> list[tuple[str, str | None]]:
    """The tuning splits the shipped configs are tuned on (see the README's `tune` commands)."""
    queries = REPO / "corpora" / "queries"
    return [row for name in TUNING_FILES for row in load_labelled(queries / name)]


TUNING_FILES = ("tune.jsonl", "hard-tune.jsonl", "traffic-tune.jsonl")


def test_tune_is_deterministic_and_reports_per_task() -> None:
    rows = labelled_rows()
    first = matcher.tune(matcher.default_catalog(), rows, semantic=False)
    second = matcher.tune(matcher.default_catalog(), rows, semantic=False)
    assert first.to_dict() == second.to_dict()
    report = first.tuning
    assert report is not None
    assert 0.0 < report["precision_high"] <= 1.0
    assert 0.0 < report["recall_high"] <= 1.0
    assert report["queries"] == len(rows)  # the report describes the labelled queries
    assert report["source"] == "labelled queries and held-out catalog phrases"
    assert report["catalog_prior"]["held_out_texts"] > 1000
    assert report["catalog_prior"]["weight_each"] == round(200 / len(rows), 4)
    assert report["out_of_scope_share"] == 0.25
    per_task = report["per_task"]
    assert set(per_task) >= {label for _, label in rows if label}
    assert all(0.0 <= v["recall"] <= 1.0 for v in per_task.values() if v["recall"] is not None)


# How far two tuning runs may differ: the calibration settles on a grid (slope step 0.1, null
# steps 0.02), so runs on different CPUs agree exactly; one grid step is the stated tolerance.
_CALIBRATION_TOLERANCE = {"keyword_slope": 0.1, "keyword_null_bias": 0.02, "keyword_null_coverage": 0.02,
                          "semantic_slope": 0.1, "semantic_null_bias": 0.02, "semantic_null_coverage": 0.02}


def assert_same_config(tuned: MatcherConfig, expected: MatcherConfig) -> None:
    """Discrete settings equal, calibration numbers within one grid step."""
    got, want = tuned.to_dict(), expected.to_dict()
    for name, tolerance in _CALIBRATION_TOLERANCE.items():
        assert abs(got.pop(name) - want.pop(name)) <= tolerance + 1e-9, name
    got.pop("tuning"), want.pop("tuning")
    assert got == want


def test_the_shipped_keyword_config_is_what_tune_produces() -> None:
    tuned = matcher.tune(matcher.default_catalog(), labelled_rows(), semantic=False)
    shipped = matcher.default_config(semantic=False)
    assert_same_config(tuned, shipped)
    # Behaviour, not digits: the tuned config answers the held-out queries as the shipped one does.
    held_out = load_labelled(REPO / "corpora" / "queries" / "test.jsonl")
    ours = matcher.Matcher(semantic=False, config=tuned).match_many([t for t, _ in held_out])
    theirs = matcher.Matcher(semantic=False, config=shipped).match_many([t for t, _ in held_out])
    assert [(r.type, r.chosen.task_id if r.chosen else None) for r in ours] == \
        [(r.type, r.chosen.task_id if r.chosen else None) for r in theirs]


_TUNE_IN_A_PROCESS = """
import json, sys, warnings
warnings.simplefilter("ignore")
import matcher
from matcher.tuning import load_labelled
config = matcher.tune(matcher.default_catalog(), [row for path in sys.argv[1:] for row in load_labelled(path)],
                      semantic=False)
print(json.dumps(config.to_dict()))
"""


@pytest.mark.slow
def test_tune_agrees_across_processes_with_different_blas_thread_counts() -> None:
    runs = []
    for threads in ("1", "2"):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads,
               "MKL_NUM_THREADS": threads, "PYTHONHASHSEED": threads}
        out = subprocess.run([sys.executable, "-c", _TUNE_IN_A_PROCESS,
                              str(REPO / "corpora" / "queries" / "tune.jsonl"),
                              str(REPO / "corpora" / "queries" / "hard-tune.jsonl")],
                             capture_output=True, text=True, env=env, check=True, timeout=600)
        runs.append(MatcherConfig.from_dict(json.loads(out.stdout)))
    assert_same_config(runs[0], runs[1])


def test_calibration_settles_on_the_grid_whatever_the_optimiser_last_digits() -> None:
    from matcher.tuning import _settle_on_grid

    def bowl(params: object) -> float:
        slope, bias, weight = (float(v) for v in params)  # type: ignore[attr-defined]
        return (slope - 56.693) ** 2 / 100 + (bias - 7.713) ** 2 + (weight + 2.361) ** 2

    starts = ([56.6929, 7.7131, -2.3612], [56.693, 7.713, -2.3610], [56.75, 7.69, -2.35])
    settled = {_settle_on_grid(bowl, np.asarray(start)) for start in starts}
    assert settled == {(56.7, 7.72, -2.36)}


def test_tuned_thresholds_are_consistent() -> None:
    config = matcher.tune(matcher.default_catalog(), labelled_rows(), semantic=False)
    assert 0.0 <= config.medium_threshold <= config.high_threshold <= 1.0
    assert config.ambiguity_margin == config.high_margin
    assert MatcherConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_an_unreachable_target_warns_and_is_recorded() -> None:
    with pytest.warns(RuntimeWarning, match="no setting reaches 99%"):
        config = matcher.tune(matcher.default_catalog(), labelled_rows(), semantic=False,
                              target_precision=0.99)
    assert config.tuning is not None
    assert config.tuning["target_met"] is False


def test_unknown_labels_and_too_little_data_are_errors() -> None:
    catalog = matcher.default_catalog()
    with pytest.raises(UnknownTaskError, match="invoice-extraction"):
        matcher.tune(catalog, [("bills", "invoice-extractoin")] * 20, semantic=False)
    with pytest.raises(ValueError, match="at least 10 in-scope"):
        matcher.tune(catalog, [("bills", "invoice-extraction")] * 3, semantic=False)
    with pytest.raises(ValueError, match="target_precision"):
        matcher.tune(catalog, labelled_rows(), semantic=False, target_precision=1.5)
    for share in (0.0, 1.0, -0.2):
        with pytest.raises(ValueError, match="out_of_scope_share must be in"):
            matcher.tune(catalog, labelled_rows(), semantic=False, out_of_scope_share=share)


def _out_of_scope_log_likelihood(config: MatcherConfig, rows: list[tuple[str, str | None]]) -> float:
    """Sum over the out-of-scope rows of log P(no task), keyword path (no task = 1 - task scores)."""
    engine = matcher.Matcher(matcher.default_catalog(), semantic=False, config=config)
    is_task = engine._is_task
    total = 0.0
    for text, label in rows:
        if label is None:
            scores = engine._score(normalize(text)).scores
            total += math.log(max(1.0 - float(scores[is_task].sum()), 1e-4))
    return total


def test_weighting_out_of_scope_queries_makes_no_match_likelier_for_them() -> None:
    # Weighted maximum likelihood: the more weight the out-of-scope queries get, the likelier
    # "no match" becomes for them at the optimum; None keeps the labelled share (28% here).
    rows = labelled_rows()
    catalog = matcher.default_catalog()
    as_labelled = matcher.tune(catalog, rows, semantic=False, out_of_scope_share=None)
    weighted = matcher.tune(catalog, rows, semantic=False, out_of_scope_share=0.6)
    assert weighted.keyword_null_bias != as_labelled.keyword_null_bias
    assert (_out_of_scope_log_likelihood(weighted, rows)
            > _out_of_scope_log_likelihood(as_labelled, rows) + 1.0)


def test_load_labelled_rejects_unknown_and_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"text": "ok", "task_id": null}\n{"text": "bills", "label": "invoice-extraction"}\n')
    with pytest.raises(ValueError, match=r"q\.jsonl:2: unknown key\(s\) \['label'\]; missing key\(s\) \['task_id'\]"):
        load_labelled(path)
    path.write_text('{"text": "bills", "task_id": "invoice-extraction", "style": "short", "kind": "terse"}\n')
    assert load_labelled(path) == [("bills", "invoice-extraction")]


def test_load_labelled_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope\.jsonl: cannot read labelled queries: No such file"):
        load_labelled(tmp_path / "nope.jsonl")


def test_load_labelled_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"text": "ok", "task_id": null}\n{"txt": "missing"}\n')
    with pytest.raises(ValueError, match=r"q\.jsonl:2"):
        load_labelled(path)
    path.write_text('{"text": 3, "task_id": null}\n')
    with pytest.raises(ValueError, match=r"q\.jsonl:1: text must be a string"):
        load_labelled(path)


@pytest.fixture(scope="module")
def self_calibrated() -> MatcherConfig:
    return matcher.tuning.self_calibrate(matcher.default_catalog(), semantic=False)


def test_self_calibration_fits_a_catalog_from_its_own_phrases(self_calibrated: MatcherConfig) -> None:
    report = self_calibrated.tuning
    assert report is not None
    assert "self-calibration" in report["source"]
    assert report["catalog_fingerprint"] == matcher.default_catalog().fingerprint
    assert report["in_scope"] > 500 and report["out_of_scope"] > 200  # held-out phrases + shipped corpus
    assert self_calibrated.gate is not None
    assert 0.0 < self_calibrated.medium_threshold < self_calibrated.high_threshold


def test_a_few_labels_refine_the_self_calibration_instead_of_replacing_it(
        self_calibrated: MatcherConfig) -> None:
    rows = labelled_rows()
    few = rows[::len(rows) // 40][:40]
    refined = matcher.tune(matcher.default_catalog(), few, semantic=False)
    alone = matcher.tune(matcher.default_catalog(), few, semantic=False, catalog_phrases=False)
    assert alone.tuning is not None and refined.tuning is not None and self_calibrated.tuning is not None
    assert alone.tuning["source"] == "labelled queries" and alone.tuning["catalog_prior"] is None
    shipped_negatives = {normalize(text) for text, _ in load_labelled(
        REPO / "matcher" / "data" / "out-of-scope.jsonl")}
    repeated = sum(normalize(text) in shipped_negatives for text, _ in few)  # counted once, as labelled
    assert refined.tuning["queries"] == alone.tuning["queries"] == 40
    # every text self-calibration learns from, each counting fully while labels are few
    assert refined.tuning["catalog_prior"] == {"held_out_texts": self_calibrated.tuning["queries"] - repeated,
                                               "weight_each": 1.0}


def test_the_shipped_out_of_scope_corpus_is_the_tuning_splits_out_of_scope_lines() -> None:
    queries = REPO / "corpora" / "queries"
    expected = [text for name in TUNING_FILES for text, label in load_labelled(queries / name) if label is None]
    assert [text for text, _ in load_labelled(REPO / "matcher" / "data" / "out-of-scope.jsonl")] == expected


def test_tuned_thresholds_always_leave_a_medium_tier() -> None:
    for config in (matcher.default_config(semantic=False), matcher.default_config(semantic=True)):
        assert config.medium_threshold < config.high_threshold


def test_a_catalog_without_a_tuned_config_self_calibrates_once_and_caches_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    profiles = matcher.default_catalog().profiles()
    other = matcher.Catalog([p for p in profiles if p.id != "translation"], source="without translation")
    with caplog.at_level("INFO", logger="matcher"):
        first = matcher.Matcher(other, semantic=False, cache_dir=tmp_path).config
    assert first.tuning is not None and first.tuning["catalog_fingerprint"] == other.fingerprint
    assert len(list(tmp_path.glob("selfcal-*.json"))) == 1
    caplog.clear()
    with caplog.at_level("INFO", logger="matcher"):
        again = matcher.Matcher(other, semantic=False, cache_dir=tmp_path).config
    assert again == first
    assert any("self-calibration read from" in r.getMessage() for r in caplog.records)


def test_a_catalog_too_small_to_self_calibrate_falls_back_with_a_warning(
        small_catalog: matcher.Catalog, tmp_path: Path) -> None:
    with pytest.warns(matcher.ConfigWarning, match="self-calibration needs at least 10"):
        config = matcher.Matcher(small_catalog, semantic=False, cache_dir=tmp_path).config
    assert config == matcher.default_config(semantic=False)


def test_a_config_tuned_for_another_catalog_is_used_with_a_warning(small_catalog: matcher.Catalog) -> None:
    shipped = matcher.default_config(semantic=False)
    with pytest.warns(matcher.ConfigWarning, match="tuned for another catalog"):
        engine = matcher.Matcher(small_catalog, semantic=False, config=shipped)
    assert engine.config is shipped


def test_tune_reports_how_many_answers_the_precision_target_needs() -> None:
    report = matcher.default_config(semantic=True).tuning
    assert report is not None
    assert report["labels_needed"] is None or report["labels_needed"] >= 1
    from matcher.tuning import _labels_needed

    assert _labels_needed(99.0, 100.0, 0.97, 1.645) is not None
    assert _labels_needed(90.0, 100.0, 0.97, 1.645) is None
    n = _labels_needed(1.0, 1.0, 0.95, 1.645)
    assert n is not None and 40 < n < 60  # all right: about 50 answers put the 95% bound at 95%
    fewer = _labels_needed(1.0, 1.0, 0.95, 1.0)
    assert fewer is not None and 15 < fewer < 25  # one standard error: about 19


def test_a_catalog_too_large_to_self_calibrate_falls_back_with_a_warning(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(matcher.tuning, "_SELF_CALIBRATION_MAX_PROFILES", 20)
    profiles = matcher.default_catalog().profiles()
    other = matcher.Catalog([p for p in profiles if p.id != "translation"], source="without translation")
    with pytest.warns(matcher.ConfigWarning, match="self-calibration handles up to 20 profiles"):
        config = matcher.Matcher(other, semantic=False, cache_dir=tmp_path).config
    assert config == matcher.default_config(semantic=False)


def test_a_task_gets_its_own_threshold_only_with_enough_labelled_answers() -> None:
    from matcher.tuning import _fit_task_thresholds, _Path, _task_threshold_rows

    assert _task_threshold_rows(0.97, 1.645) == 88 and _task_threshold_rows(1.0, 1.645) is None
    assert _task_threshold_rows(0.97, matcher.tuning.PRECISION_Z) == 33
    # task "a": 90 right answers at 0.9 and 10 wrong ones at 0.5; task "b": 20 right answers at 0.8
    top = np.array([0.9] * 90 + [0.5] * 10 + [0.8] * 20)
    ones = np.ones(len(top), dtype=bool)
    path = _Path(first=np.array([0] * 100 + [1] * 20), top=top, second=np.zeros(len(top)),
                 correct=np.array([True] * 90 + [False] * 10 + [True] * 20), unsupported=np.full(len(top), -1.0),
                 known_words=ones)
    config = MatcherConfig(high_threshold=0.4, medium_threshold=0.3, high_margin=0.1, fallback_threshold=0.4)
    args = (path, None, ones, 0.97, np.ones(len(top)), np.ones(len(top)))
    fitted, report = _fit_task_thresholds(config, *args, ones, ["a", "b"], z=1.645)
    assert fitted.task_high_thresholds == {"a": 0.9}  # the strictest threshold that keeps every right answer
    assert set(report["tasks"]) == {"a"} and report["min_answers"] == 88
    assert report["tasks"]["a"]["answers"] == 100 and report["tasks"]["a"]["target_met"]
    assert fitted.high_threshold_for("b") == 0.4
    unlabelled, _ = _fit_task_thresholds(config, *args, ~ones, ["a", "b"], z=1.645)  # catalog texts, not labels
    assert unlabelled.task_high_thresholds == {}


def test_tune_fits_a_task_threshold_where_labels_allow_and_the_engine_applies_it() -> None:
    extra = [(f"we get vendor invoice number {i} by mail: pull its line items and totals", "invoice-extraction")
             for i in range(100)]
    rows = labelled_rows() + extra
    tuned = matcher.tune(matcher.default_catalog(), rows, semantic=False, precision_z=1.645)
    report = tuned.tuning
    assert report is not None and report["precision_z"] == 1.645
    rule = report["task_thresholds"]
    assert rule["min_answers"] == 88 and "88 labelled answers" in rule["rule"]
    assert set(rule["tasks"]) == {"invoice-extraction"}  # no other task has 88 answers in these files
    own = tuned.task_high_thresholds["invoice-extraction"]
    assert own == rule["tasks"]["invoice-extraction"]["threshold"] != tuned.high_threshold
    assert report["per_task"]["invoice-extraction"]["high_threshold"] == own
    with_own = matcher.Matcher(semantic=False, config=tuned)
    without = matcher.Matcher(semantic=False, config=tuned.with_changes(task_high_thresholds={}))
    low, high = sorted((own, tuned.high_threshold))
    for text, _ in rows:  # only invoice answers between the two thresholds may differ (the effect itself:
        a, b = with_own.match(text), without.match(text)  # test_engine's task-threshold test)
        if a.matched != b.matched:
            assert a.candidates[0].task_id == "invoice-extraction" and low <= a.candidates[0].score < high
        else:  # the same answer; the reasoning may name the threshold or the gate as what decided
            assert {**a.to_dict(), "reasoning": ""} == {**b.to_dict(), "reasoning": ""}


def test_tune_starts_from_a_config_with_task_thresholds_without_keeping_them() -> None:
    base = MatcherConfig(task_high_thresholds={"invoice-extraction": 0.9})
    tuned = matcher.tune(matcher.default_catalog(), labelled_rows(), semantic=False, base=base)
    assert tuned.task_high_thresholds == {}  # fitted again from these labels, where none qualifies


def test_the_grid_walk_reaches_the_grid_minimum_and_evaluates_each_point_once() -> None:
    from matcher.tuning import _settle_on_grid

    target = np.array([10.0, 1.0, -0.5])  # on the grid: slope step 0.1, bias and weight steps 0.02
    calls: list[tuple[float, ...]] = []

    def loss(params: np.ndarray) -> float:
        calls.append(tuple(np.round(params, 6)))
        return float(np.sum(((params - target) / np.array([0.1, 0.02, 0.02])) ** 2))

    assert _settle_on_grid(loss, np.array([9.0, 0.8, -0.3])) == (10.0, 1.0, -0.5)
    assert len(calls) == len(set(calls))  # a neighbourhood shared by consecutive steps is not recomputed


def _calibration_problem(seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Raw scores of 400 queries against 20 profiles (18 tasks, then 2 out-of-scope profiles):
    an in-scope query's task scores near 1, an out-of-scope query has out-of-scope profile 18 near
    0.9 and some task near it, everything else is near 0. "No match" then barely matters next to
    profile 18, so the loss is nearly flat along the null bias."""
    rng = np.random.default_rng(seed)
    n, profiles = 400, 20
    rows = np.arange(n)
    raw = rng.uniform(0.0, 0.05, size=(n, profiles))
    labels = np.where(rng.uniform(size=n) < 0.3, -1, rng.integers(0, 18, size=n))
    raw[rows, np.maximum(labels, 0)] = np.where(labels >= 0, rng.uniform(0.85, 1.0, size=n), raw[rows, 0])
    outside = labels < 0
    raw[outside, 18] = rng.uniform(0.8, 0.95, size=int(outside.sum()))
    raw[outside, rng.integers(0, 18, size=n)[outside]] = rng.uniform(0.6, 1.0, size=int(outside.sum()))
    is_task = np.arange(profiles) < 18
    return raw, rng.uniform(0.0, 1.0, size=n), labels.astype(np.int64), is_task, rng.uniform(0.5, 2.0, size=n)


def test_the_calibration_loss_is_the_softmax_log_likelihood_and_its_gradient_is_exact() -> None:
    from scipy.special import logsumexp

    from matcher.tuning import _CalibrationLoss

    raw, coverage, labels, is_task, weights = _calibration_problem()
    loss = _CalibrationLoss(raw, coverage, labels, is_task, weights)

    def reference(params: np.ndarray) -> float:
        slope, bias, weight = params
        logits, null = slope * raw, bias + weight * coverage
        log_total = logsumexp(np.column_stack([null, logits]), axis=1)
        log_outside = logsumexp(np.column_stack([null, np.where(~is_task, logits, -np.inf)]), axis=1)
        log_right = np.where(labels < 0, log_outside, logits[np.arange(len(raw)), np.maximum(labels, 0)])
        return float(np.sum(weights * (log_total - log_right)) / weights.sum())

    for params in (np.array([15.0, 5.0, 0.0]), np.array([40.0, 30.0, -8.0]), np.array([0.5, -50.0, 50.0])):
        value, gradient = loss.value_and_gradient(params)
        assert value == pytest.approx(reference(params), rel=1e-12, abs=1e-12)
        assert loss(params) == value
        step = 1e-6
        numeric = [(reference(params + step * unit) - reference(params - step * unit)) / (2 * step)
                   for unit in np.eye(3)]
        assert gradient == pytest.approx(numeric, rel=1e-5, abs=1e-7)


def test_the_calibration_fit_crosses_a_flat_start_and_ends_at_the_optimum(monkeypatch: pytest.MonkeyPatch) -> None:
    from scipy.optimize import minimize

    from matcher import tuning

    raw, coverage, labels, is_task, weights = _calibration_problem()
    loss = tuning._CalibrationLoss(raw, coverage, labels, is_task, weights)
    best = minimize(loss.value_and_gradient, np.array([30.0, 25.0, 0.0]), jac=True, method="L-BFGS-B",
                    bounds=tuning._CALIBRATION_BOUNDS, options={"gtol": 1e-12, "ftol": 1e-16})
    start = (15.0, 5.0, 0.0)
    assert abs(loss.value_and_gradient(np.asarray(start))[1][1]) < 1e-3  # nearly flat along the bias
    assert abs(best.x[1] - start[1]) > 10.0  # and its optimum is hundreds of bias steps (0.02) away
    evaluations: list[int] = []
    counted = tuning._CalibrationLoss.__call__
    monkeypatch.setattr(tuning._CalibrationLoss, "__call__",
                        lambda self, params: evaluations.append(1) or counted(self, params))
    fitted = tuning._fit_calibration(raw, coverage, labels, is_task, weights, start)
    assert loss(np.asarray(fitted)) <= best.fun + 1e-6
    assert len(evaluations) < 200  # the grid walk starts beside the optimum (it took 2,907 from a
    # finite-difference L-BFGS, which stopped where the bias gradient fell under its tolerance)
