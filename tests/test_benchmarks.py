"""Fast tests of the benchmark harness (`benchmarks/`) on hand-made inputs and small subsets.

The metric tests use inputs whose answers are worked out by hand in the comments, so a wrong
formula fails. CLINC150 tests use a 10-intent subset and are skipped when the data is absent
(CI keeps it in `shared/` beside the repository, or `$CLINC150_DIR`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from benchmarks import datasets, encoders, metrics, peers, quality, report, synthetic
from benchmarks.embeddings import CachingEmbedder
from benchmarks.metrics import Prediction
from matcher import Catalog, Matcher

CLINC = datasets.clinc_dir()
needs_clinc = pytest.mark.skipif(not (CLINC / "labels.json").is_file(),
                                 reason=f"CLINC150 data not found at {CLINC} (set CLINC150_DIR)")


def pred(gold: str | None, ranking: Sequence[str], score: float = 0.5, accepted: bool = True,
         **extra: Any) -> Prediction:
    """A `Prediction` in one short line."""
    return Prediction(gold, tuple(ranking), score, accepted, **extra)


# Four in-scope queries and two out-of-scope ones:
#   q1 gold a, ranked a first, accepted       -> top-1 hit, answered right
#   q2 gold b, ranked a then b, accepted      -> top-1 miss, in top-5, answered wrong (as a)
#   q3 gold c, ranked c first, rejected       -> top-1 hit, not answered
#   q4 gold d, ranked x, y (d absent)         -> miss everywhere
#   q5 out of scope, rejected                 -> OOS hit
#   q6 out of scope, accepted as a            -> OOS miss
PREDS = [
    pred("a", ["a", "b"], 0.9, True, tier="high", ambiguous=False, path="keyword"),
    pred("b", ["a", "b"], 0.8, True, tier="high", ambiguous=True, path="semantic"),
    pred("c", ["c", "a"], 0.4, False, tier="medium", ambiguous=False, path="semantic"),
    pred("d", ["x", "y"], 0.2, False, tier="low", ambiguous=False, path="keyword"),
    pred(None, ["a"], 0.1, False, tier="low", ambiguous=False, path="keyword"),
    pred(None, ["a"], 0.7, True, tier="high", ambiguous=True, path="semantic"),
]


def test_accuracy_metrics_match_hand_counts() -> None:
    assert metrics.top1_accuracy(PREDS) == pytest.approx(2 / 4)  # q1, q3
    assert metrics.recall_at_k(PREDS, 5) == pytest.approx(3 / 4)  # q1, q2, q3
    assert metrics.recall_at_k(PREDS, 1) == pytest.approx(2 / 4)
    assert metrics.accepted_accuracy(PREDS) == pytest.approx(1 / 4)  # only q1 is answered right
    assert metrics.oos_recall(PREDS) == pytest.approx(1 / 2)  # q5
    assert metrics.ambiguity_rate(PREDS) == pytest.approx(2 / 6)
    assert metrics.path_share(PREDS, "semantic") == pytest.approx(3 / 6)


def test_metrics_of_an_empty_group_are_nan_not_zero() -> None:
    only_oos = [pred(None, ["a"], accepted=False)]
    assert math.isnan(metrics.top1_accuracy(only_oos))
    assert math.isnan(metrics.oos_recall([pred("a", ["a"])]))


def test_tier_precision_counts_out_of_scope_answers_as_wrong() -> None:
    tiers = metrics.tier_stats(PREDS)
    assert (tiers["high"].count, tiers["high"].correct) == (3, 1)  # q1 right; q2 wrong; q6 is OOS
    assert tiers["high"].precision == pytest.approx(1 / 3)
    assert tiers["high"].coverage == pytest.approx(3 / 6)
    assert (tiers["medium"].count, tiers["medium"].correct) == (1, 1)
    assert (tiers["low"].count, tiers["low"].correct) == (2, 0)


def test_per_task_precision_and_recall() -> None:
    by_task = {s.task_id: s for s in metrics.per_task_scores(PREDS)}
    # "a" was answered three times (q1 right, q2 and q6 wrong) and labelled once (q1)
    assert (by_task["a"].answered, by_task["a"].support) == (3, 1)
    assert by_task["a"].precision == pytest.approx(1 / 3)
    assert by_task["a"].recall == pytest.approx(1.0)
    assert by_task["a"].f1 == pytest.approx(0.5)
    # "b" was labelled once and never answered: recall 0, precision undefined
    assert by_task["b"].recall == 0.0
    assert math.isnan(by_task["b"].precision)
    assert by_task["b"].f1 == 0.0


def test_confused_pairs_are_counted_and_ordered() -> None:
    preds = [pred("b", ["a"]), pred("b", ["a"]), pred("c", ["a"]), pred("a", ["c"]), pred("a", ["a"]),
             pred(None, ["a"])]
    assert metrics.confused_pairs(preds) == [("b", "a", 2), ("a", "c", 1), ("c", "a", 1)]
    assert metrics.confused_pairs(preds, 1) == [("b", "a", 2)]


def test_balanced_threshold_picks_the_best_cut_by_hand() -> None:
    # in-scope right 0.9, 0.8; out-of-scope 0.7; in-scope wrong 0.6; out-of-scope 0.5.
    # accept >= 0.9: 1/3 + 2/2 = 1.33; >= 0.8: 2/3 + 1 = 1.67 (best); >= 0.7: 2/3 + 1/2; none: 1.
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    correct = [True, True, False, False, False]
    in_scope = [True, True, False, True, False]
    assert metrics.balanced_threshold(scores, correct, in_scope) == pytest.approx(0.75)
    # an out-of-scope profile outranking the 0.7 query makes it ineligible: accepting >= 0.6 then
    # costs no out-of-scope recall but gains nothing either, so >= 0.8 still wins (tie -> lowest
    # cut among equals: >= 0.6 and >= 0.8 both give 2/3 + 1)
    eligible = [True, True, False, True, True]
    assert metrics.balanced_threshold(scores, correct, in_scope, eligible) == pytest.approx(0.55)


def test_balanced_threshold_edges() -> None:
    # no out-of-scope queries: accuracy alone, accepting everything is best
    assert metrics.balanced_threshold([0.3, 0.2], [True, True], [True, True]) == -math.inf
    # only out-of-scope queries: accept nothing
    assert metrics.balanced_threshold([0.3, 0.2], [False, False], [False, False]) == math.inf


def test_precision_threshold_by_hand() -> None:
    scores = [0.9, 0.8, 0.7, 0.6]
    correct = [True, True, False, True]
    # >= 0.8: 2/2; >= 0.7: 2/3; >= 0.6: 3/4
    assert metrics.precision_threshold(scores, correct, 0.97) == pytest.approx(0.75)
    assert metrics.precision_threshold(scores, correct, 0.75) == -math.inf
    assert metrics.precision_threshold([0.5], [False], 0.97) == math.inf


def test_operating_curve_by_hand() -> None:
    # PREDS by top score: 0.9 a right, 0.8 b wrong, 0.7 out-of-scope, 0.4 c right, 0.2 d wrong,
    # 0.1 out-of-scope. Accuracy over 4 in-scope, OOS recall over 2 out-of-scope.
    accuracy, recall = metrics.operating_curve(PREDS)
    assert accuracy.tolist() == pytest.approx([0, 0.25, 0.25, 0.25, 0.5, 0.5, 0.5])
    assert recall.tolist() == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0])
    assert metrics.accuracy_at_oos_recall(PREDS, 1.0) == pytest.approx(0.25)
    assert metrics.accuracy_at_oos_recall(PREDS, 0.5) == pytest.approx(0.5)
    assert metrics.oos_recall_at_accuracy(PREDS, 0.5) == pytest.approx(0.5)
    assert metrics.oos_recall_at_accuracy(PREDS, 0.25) == pytest.approx(1.0)
    assert math.isnan(metrics.oos_recall_at_accuracy(PREDS, 0.75))
    # an ineligible query is never accepted: the out-of-scope 0.7 one no longer costs recall
    ruled_out = [replace(p, eligible=p.top_score != 0.7) for p in PREDS]
    assert metrics.accuracy_at_oos_recall(ruled_out, 1.0) == pytest.approx(0.5)
    # tied scores are accepted together
    tied = [pred("a", ["a"], 0.5), pred(None, ["a"], 0.5)]
    assert metrics.operating_curve(tied)[1].tolist() == [1.0, 0.0]


def test_precision_curve_by_hand() -> None:
    # PREDS by top score: 0.9 right, 0.8 wrong, 0.7 out-of-scope, 0.4 right, 0.2 wrong, 0.1 OOS.
    precision, accuracy = metrics.precision_curve(PREDS)
    assert math.isnan(precision[0])
    assert precision[1:].tolist() == pytest.approx([1, 1 / 2, 1 / 3, 2 / 4, 2 / 5, 2 / 6])
    assert accuracy.tolist() == pytest.approx([0, 0.25, 0.25, 0.25, 0.5, 0.5, 0.5])
    assert metrics.accuracy_at_precision(PREDS, 0.97) == pytest.approx(0.25)
    assert metrics.accuracy_at_precision(PREDS, 0.5) == pytest.approx(0.5)
    assert metrics.precision_at_accuracy(PREDS, 0.5) == pytest.approx(0.5)
    assert metrics.precision_at_accuracy(PREDS, 0.25) == pytest.approx(1.0)
    assert math.isnan(metrics.precision_at_accuracy(PREDS, 0.75))
    assert metrics.accuracy_at_precision([pred(None, ["a"], 0.9)], 0.97) == 0.0


def test_calibration_error_and_reliability_curve() -> None:
    # one bin [0.9, 1.0): mean score 0.95, half right -> |0.95 - 0.5| = 0.45
    assert metrics.expected_calibration_error([0.95, 0.95], [True, False]) == pytest.approx(0.45)
    curve = metrics.reliability_curve([0.05, 0.15, 0.15, 1.0], [False, True, False, True], bins=10)
    assert [(round(low, 2), count) for low, _, _, count in curve] == [(0.0, 1), (0.1, 2), (0.9, 1)]
    assert curve[1][2] == pytest.approx(0.5)


def test_latency_summary() -> None:
    median, p99, count = metrics.latency_summary([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (median, count) == (3.0, 5)
    assert 4.0 < p99 <= 100.0
    assert math.isnan(metrics.latency_summary([])[0])


def _tiny_catalog() -> Catalog:
    return Catalog.from_records([
        {"id": "book-flight", "title": "book flight", "phrases": ["book me a flight to paris",
                                                                  "reserve a plane ticket"]},
        {"id": "weather", "title": "weather", "phrases": ["what is the weather tomorrow",
                                                          "will it rain today"]},
        {"id": "alarm", "title": "alarm", "phrases": ["set an alarm for 7am", "wake me up at six"]},
        {"id": "unsupported-chat", "kind": "unsupported", "title": "chit chat",
         "phrases": ["tell me a joke", "how are you doing"]},
    ])


class _HashEmbedder:
    """Deterministic bag-of-words embedder: each word hashes to a fixed random unit vector."""

    model_id = "test-hash-embedder"

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls += 1
        out = np.zeros((len(texts), 32), dtype=np.float64)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little")
                out[row] += np.random.default_rng(seed).standard_normal(32)
            out[row] /= max(np.linalg.norm(out[row]), 1e-12)
        return out.astype(np.float32)


def _all_peers() -> list[peers.Peer]:
    embedder = _HashEmbedder()
    return [peers.TfidfPeer(), peers.BM25Peer(), peers.RapidFuzzPeer(),
            peers.EmbeddingPeer(embedder, centroid=False), peers.EmbeddingPeer(embedder, centroid=True)]


def test_peers_rank_the_obvious_task_first_and_deterministically() -> None:
    catalog = _tiny_catalog()
    profiles = catalog.profiles()
    ids = [p.id for p in profiles]
    is_task = np.array([p.kind == "task" for p in profiles])
    queries = ["book a flight to paris", "will it rain tomorrow", "set an alarm for 7am"]
    expected = ["book-flight", "weather", "alarm"]
    for peer in _all_peers():
        peer.fit(catalog, queries, expected)
        scores = peer.scores(queries)
        assert scores.shape == (3, len(profiles)), peer.name
        first = peers.rank_tasks(scores, is_task, ids, k=5)
        again = peers.rank_tasks(peer.scores(queries), is_task, ids, k=5)
        assert first == again, peer.name
        assert [r[0][0] for r in first] == expected, peer.name
        # out-of-scope profiles are never ranked as tasks
        assert all("unsupported-chat" not in ranking for ranking, _, _ in first), peer.name


def test_rank_tasks_breaks_ties_by_profile_order() -> None:
    scores = np.array([[0.5, 0.5, 0.5, 0.9]])
    ids = ["alarm", "book-flight", "unsupported-x", "weather"]
    is_task = np.array([True, True, False, True])
    ranking, top, best_oos = peers.rank_tasks(scores, is_task, ids, k=3)[0]
    assert ranking == ("weather", "alarm", "book-flight")
    assert (top, best_oos) == (0.9, 0.5)


def test_caching_embedder_encodes_each_text_once() -> None:
    inner = _HashEmbedder()
    cache = CachingEmbedder(inner, batch_size=2)
    first = cache.encode(["a b", "c", "a b", "d"])
    assert cache.encoded == 3
    again = cache.encode(["d", "c"])
    assert cache.encoded == 3
    np.testing.assert_array_equal(first[3], again[0])
    assert cache.model_id == inner.model_id


def test_synthetic_catalog_is_deterministic() -> None:
    first = synthetic.synthetic_catalog(50, n_queries=10, seed=3)
    second = synthetic.synthetic_catalog(50, n_queries=10, seed=3)
    other = synthetic.synthetic_catalog(50, n_queries=10, seed=4)
    assert len(first.catalog) == 50
    assert first.catalog.fingerprint == second.catalog.fingerprint != other.catalog.fingerprint
    assert first.queries == second.queries
    assert all(gold in first.catalog for _, gold in first.queries)


def test_default_dataset_loads_labelled_subset() -> None:
    dataset = datasets.load_default(limit=30)
    assert len(dataset.tune) == 30
    assert all(q.task_id is None or q.task_id in dataset.catalog for q in dataset.tune)
    assert len(dataset.test()) == 30
    assert dataset.subset


def _recording_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the files `datasets.read_jsonl` reads from now on, in order."""
    read: list[str] = []
    original = datasets.read_jsonl

    def recording(path: Path) -> list[dict[str, Any]]:
        read.append(Path(path).name)
        return original(path)

    monkeypatch.setattr(datasets, "read_jsonl", recording)
    return read


def test_default_hard_and_traffic_share_catalog_and_tuning_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    read = _recording_reads(monkeypatch)
    default = datasets.load_dataset("default")
    hard = datasets.load_dataset("hard")
    traffic = datasets.load_dataset("traffic")
    assert read == ["tune.jsonl", "hard-tune.jsonl", "traffic-tune.jsonl"] * 3  # no test file before `test()`
    assert hard.catalog.fingerprint == default.catalog.fingerprint == traffic.catalog.fingerprint
    assert hard.tune == default.tune == traffic.tune
    assert len(default.tune) == 384 + 514 + 640 and not default.subset
    # `style` of the older corpus and `kind` of the hard one both land in `style`
    assert {q.style for q in default.tune[:384]} == {"short", "plain", "long", "jargon", "typo",
                                                     "paraphrase", "oos"}
    assert "situation" in {q.style for q in default.tune[384:]}

    test = hard.test()
    assert read[-1] == "hard-test.jsonl"
    in_scope = [q for q in test if q.in_scope]
    assert (len(in_scope), len(test) - len(in_scope)) == datasets.HARD_TEST_COUNTS == (318, 188)
    assert "318 in-scope + 188 near-miss out-of-scope" in hard.description
    assert {q.style for q in in_scope} == {"situation", "jargon", "chat", "terse", "typo", "negated",
                                           "confusable", "plain"}
    assert {q.style for q in test if not q.in_scope} == {
        "service-question", "physical-action", "live-data", "chit-chat", "missing-ml", "figurative",
        "negated", "other-action"}
    assert all(q.task_id is None or q.task_id in hard.catalog for q in test)
    assert len(default.test()) == 353 and read[-1] == "test.jsonl"

    validation = traffic.test()
    assert read[-1] == "traffic-dev.jsonl"
    in_scope = [q for q in validation if q.in_scope]
    assert (len(in_scope), len(validation) - len(in_scope)) == datasets.TRAFFIC_DEV_COUNTS == (406, 200)
    assert "validation split" in traffic.description
    shared = {q.text for q in validation} & {q.text for q in traffic.tune}
    assert all(len(text.split()) <= 4 for text in shared)  # only terse lines such as "transcribe audio" recur


def test_quick_hard_dataset_is_limited_like_default() -> None:
    default = datasets.load_dataset("default", quick=True)
    hard = datasets.load_dataset("hard", quick=True)
    assert len(hard.tune) == len(hard.test()) == len(default.tune) == datasets.QUICK_LIMIT
    assert hard.tune == default.tune
    assert hard.subset and hard.name == "hard"
    with pytest.raises(KeyError, match="hard"):
        datasets.load_dataset("nope")


def test_per_kind_scores_by_hand() -> None:
    preds = [
        pred("a", ["a"], accepted=True),    # terse: right, answered
        pred("b", ["a"], accepted=True),    # terse: wrong, answered
        pred("c", ["c"], accepted=False),   # terse: right at top-1, not answered
        pred("d", ["d"], accepted=True),    # negated in scope: right, answered
        pred(None, ["a"], accepted=False),  # negated out of scope: rejected
        pred(None, ["b"], accepted=True),   # negated out of scope: wrongly answered
        pred(None, ["a"], accepted=False),  # live-data: rejected
        pred(None, ["a"], accepted=False),  # no kind: rejected
    ]
    kinds = ["terse", "terse", "terse", "negated", "negated", "negated", "live-data", None]
    scores = metrics.per_kind_scores(preds, kinds)
    assert [(s.in_scope, s.kind, s.count) for s in scores] == [
        (True, "negated", 1), (True, "terse", 3),
        (False, "live-data", 1), (False, "negated", 2), (False, "unlabelled", 1)]
    terse = scores[1]
    assert terse.top1 == pytest.approx(2 / 3)  # a, c
    assert terse.answered_right == pytest.approx(1 / 3)  # only a
    assert terse.precision == pytest.approx(1 / 2)  # a right, b wrong among the two answered
    assert math.isnan(terse.oos_recall)
    assert (scores[0].top1, scores[0].answered_right, scores[0].precision) == (1.0, 1.0, 1.0)
    negated_oos = scores[3]
    assert negated_oos.oos_recall == pytest.approx(1 / 2)
    assert math.isnan(negated_oos.top1) and math.isnan(negated_oos.precision)
    assert scores[2].oos_recall == scores[4].oos_recall == 1.0
    with pytest.raises(ValueError, match="8 predictions but 7 kinds"):
        metrics.per_kind_scores(preds, kinds[:-1])


_SIX_PHRASES = {
    "alarm": ["set an alarm for 7am", "wake me up at six", "alarm for tomorrow morning",
              "remind me to wake at dawn", "set a wake up call", "turn on my morning alarm"],
    "book-flight": ["book me a flight to paris", "reserve a plane ticket", "find flights to tokyo",
                    "i need to fly to berlin on monday", "buy an airline ticket", "get me on a plane to rome"],
    "recipe": ["how do i cook lasagna", "give me a pancake recipe", "what can i make with eggs and rice",
               "recipe for chicken curry", "how to bake bread at home", "steps to make a chocolate cake"],
    "weather": ["what is the weather tomorrow", "will it rain today", "is it going to snow this weekend",
                "how hot will it be", "forecast for london", "do i need an umbrella"],
}
_TINY_TUNE = (
    ("wake me at 6 tomorrow", "alarm"), ("alarm at seven please", "alarm"), ("morning alarm", "alarm"),
    ("flight to madrid", "book-flight"), ("book a plane ticket to oslo", "book-flight"),
    ("fly me to lisbon", "book-flight"), ("how to cook rice", "recipe"), ("a recipe for soup", "recipe"),
    ("bake a cake", "recipe"), ("rain tomorrow?", "weather"), ("weather in paris", "weather"),
    ("is it cold outside", "weather"), ("tell me a joke", None), ("who won the game", None),
)
_TINY_TEST = (
    ("set an alarm for 5am", "alarm", "plain"), ("alarm", "alarm", "terse"),
    ("book flight", "book-flight", "terse"), ("pancakes recipe", "recipe", "terse"),
    ("will it snow", "weather", "plain"), ("sing me a song", None, "chit-chat"),
    ("what is the stock price of acme", None, "live-data"),
)


def _four_task_dataset(name: str, loaded: list[str] | None = None, *, self_calibrate: bool = True
                       ) -> datasets.Dataset:
    """4 tasks x 6 phrases (enough phrases to hold out for `self_calibrate`), hand-written splits."""
    catalog = Catalog.from_records([{"id": k, "title": k.replace("-", " "), "phrases": v}
                                    for k, v in _SIX_PHRASES.items()], source="four-tasks")

    def load_test() -> tuple[datasets.LabelledQuery, ...]:
        if loaded is not None:
            loaded.append(name)
        return tuple(datasets.LabelledQuery(*row) for row in _TINY_TEST)

    return datasets.Dataset(name=name, catalog=catalog,
                            tune=tuple(datasets.LabelledQuery(t, g) for t, g in _TINY_TUNE),
                            description="four hand-made tasks", _load_test=load_test,
                            self_calibrate=self_calibrate)


@pytest.mark.filterwarnings("ignore:no setting reaches 97% precision")
def test_self_calibrated_systems_are_fitted_from_the_catalog_alone() -> None:
    from matcher.tuning import self_calibrate

    loaded: list[str] = []
    dataset = _four_task_dataset("four", loaded)
    systems, configs, source = quality.tune_systems(dataset, _HashEmbedder(), peers=[])
    assert not loaded  # the test split is read only after every system is fitted
    assert [s.name for s in systems] == [quality.OURS_KEYWORD, quality.OURS_KEYWORD_SELF,
                                         quality.OURS_FULL, quality.OURS_FULL_SELF, quality.OURS_FULL_FEW]
    assert source == "matcher.tune on the tuning split"
    by_name = {s.name: s for s in systems}
    assert "self_calibrate" in by_name[quality.OURS_FULL_SELF].config_source
    few = by_name[quality.OURS_FULL_FEW]
    assert few.config_source == f"matcher.tune on a seeded sample of {len(_TINY_TUNE)} rows of the tuning split"
    assert few.config is not None and few.config.tuning is not None
    assert few.config.tuning["queries"] == min(quality.FEW_LABELS, len(_TINY_TUNE))
    assert configs[quality.OURS_KEYWORD_SELF].to_dict() == self_calibrate(dataset.catalog,
                                                                          semantic=False).to_dict()
    assert configs[quality.OURS_KEYWORD_SELF].to_dict() != configs[quality.OURS_KEYWORD].to_dict()
    assert configs[quality.OURS_FULL_SELF].to_dict()["tuning"]["source"] == \
        "held-out catalog phrases (self-calibration)"
    results = quality.evaluate(dataset, systems)
    assert loaded == ["four"]
    assert [r.name for r in results] == [quality.OURS_KEYWORD, quality.OURS_KEYWORD_SELF, quality.OURS_FULL,
                                         quality.OURS_PEER_RULE, quality.OURS_FULL_SELF, quality.OURS_FULL_FEW]
    assert all(len(r.test_preds) == len(_TINY_TEST) for r in results)
    # without the flag (the bundled catalog's datasets) no self-calibrated system is run
    plain, _, _ = quality.tune_systems(_four_task_dataset("plain", self_calibrate=False), None, peers=[])
    assert [s.name for s in plain] == [quality.OURS_KEYWORD]


@pytest.mark.filterwarnings("ignore:no setting reaches 97% precision")
def test_tuning_cache_reuses_systems_for_the_same_catalog_and_tuning_rows() -> None:
    cache = quality.TuningCache()
    first = _four_task_dataset("first", self_calibrate=False)
    second = _four_task_dataset("second", self_calibrate=False)
    a, configs_a, _ = quality.tune_systems(first, None, peers=[peers.TfidfPeer()], cache=cache)
    b, configs_b, source = quality.tune_systems(second, None, peers=[peers.TfidfPeer()], cache=cache)
    assert cache.fits == 2  # ours: keyword and TF-IDF, once each
    assert [s.reused_from for s in a] == [None, None]
    assert [s.reused_from for s in b] == ["first", "first"]
    assert b[1].peer is a[1].peer and configs_b == configs_a
    assert "tune" not in b[0].seconds and "tune" in a[0].seconds
    assert "fitted once, for first" in source
    # other tuning rows: fitted again
    shorter = replace(second, tune=second.tune[1:])
    quality.tune_systems(shorter, None, peers=[], cache=cache)
    assert cache.fits == 3
    # another catalog clears the cache
    other = replace(first, catalog=Catalog.from_records(
        [{"id": k, "phrases": [*v, f"{k} please"]} for k, v in _SIX_PHRASES.items()]))
    quality.tune_systems(other, None, peers=[], cache=cache)
    quality.tune_systems(first, None, peers=[], cache=cache)
    assert cache.fits == 5


@pytest.mark.filterwarnings("ignore:no setting reaches 97% precision")
def test_per_kind_section_follows_the_dataset_table() -> None:
    result = quality.run_dataset(_four_task_dataset("four", self_calibrate=False), embedder=None,
                                 live_embedder=None, peers=[peers.TfidfPeer()])
    assert result.test_kinds == tuple(k for _, _, k in _TINY_TEST)
    info = report.RunInfo(command="test", regenerate="python -m benchmarks", date="today", wall_seconds=1.0,
                          machine={"cores": "2"}, versions={}, options={})
    markdown = report.render(info, [result], {})
    section = markdown.split("#### four: by kind of request")[1].split("## Does our engine")[0]
    assert markdown.index("### four") < markdown.index("#### four: by kind of request")
    assert "ours: keyword:" in section and "TF-IDF cosine:" in section
    assert "| chit-chat | out | 1 |" in section and "| terse | in | 3 |" in section


@needs_clinc
def test_clinc_loader_builds_a_valid_catalog() -> None:
    dataset = datasets.load_clinc(10, intents=10)
    tasks = dataset.catalog.list()
    assert len(tasks) == 10
    for task in tasks:
        assert task.id == task.id.lower() and "_" not in task.id
        assert task.title == task.id.replace("-", " ")
        assert 1 <= len(task.phrases) <= 10
    in_scope = [q for q in dataset.tune if q.in_scope]
    assert len(in_scope) == 10 * 20  # val has 20 utterances per intent
    assert all(q.task_id in dataset.catalog for q in in_scope)
    assert any(not q.in_scope for q in dataset.tune)
    full = datasets.load_clinc(None, intents=3)
    assert all(len(t.phrases) == 100 for t in full.catalog.list())


@needs_clinc
def test_tuning_never_reads_the_test_split(monkeypatch: pytest.MonkeyPatch) -> None:
    read = _recording_reads(monkeypatch)
    dataset = datasets.load_clinc(5, intents=10)
    systems, configs, _ = quality.tune_systems(dataset, None,
                                               peers=[peers.TfidfPeer(), peers.RapidFuzzPeer()])
    assert "test.jsonl" not in read
    assert {"train_5.jsonl", "val.jsonl"} <= set(read)
    assert [s.name for s in systems] == [quality.OURS_KEYWORD, quality.OURS_KEYWORD_SELF, "TF-IDF cosine",
                                         "rapidfuzz best match"]
    assert {quality.OURS_KEYWORD, quality.OURS_KEYWORD_SELF} <= set(configs)
    results = quality.evaluate(dataset, systems)
    assert "test.jsonl" in read
    assert all(len(r.test_preds) == len(dataset.test()) for r in results)


@needs_clinc
def test_small_end_to_end_run_renders_every_section() -> None:
    dataset = datasets.load_clinc(10, intents=10)
    result = quality.run_dataset(dataset, embedder=None, live_embedder=None, latency_sample=20)
    names = [s.name for s in result.systems]
    assert names[0] == quality.OURS_KEYWORD
    assert {"TF-IDF cosine", "BM25 (bm25s)", "rapidfuzz best match"} <= set(names)
    assert result.latency[quality.OURS_KEYWORD]["all"][2] == 20
    for system in result.systems:
        top1 = metrics.top1_accuracy(system.test_preds)
        assert 0.3 < top1 <= 1.0, system.name  # 10 intents: every method is far above chance
    info = report.RunInfo(command="test", regenerate="python -m benchmarks", date="today", wall_seconds=1.0,
                          machine={"cores": "2"}, versions={}, options={})
    markdown = report.render(info, [result], {})
    for heading in ("## Headline", "## Does our engine beat every peer?", "## Confidence tiers",
                    "## Per-task precision and recall", "## Most confused task pairs", "## Latency"):
        assert heading in markdown
    assert "published:" not in markdown  # reference rows only for the full 150-intent sets


@needs_clinc
@pytest.mark.slow
def test_one_command_writes_the_report(tmp_path: Path) -> None:
    from benchmarks import run_all

    output = tmp_path / "RESULTS.md"
    status = run_all.main(["--quick", "--no-semantic", "--no-perf", "--clinc-intents", "5",
                           "--latency-sample", "10", "--skip-clinc-full", "--output", str(output)])
    assert status == 0
    text = output.read_text(encoding="utf-8")
    assert text.startswith("# Benchmark results")
    assert "python -m benchmarks" in text.split("## Headline")[0]  # the command is named at the top
    for name in ("### default", "### hard", "#### hard: by kind of request", "### clinc-k5", "### clinc-k10"):
        assert name in text
    assert "### clinc-full" not in text
    assert text.index("### default") < text.index("### hard") < text.index("### clinc-k5")
    assert "ours: keyword, self-calibrated" in text.split("### clinc-k5")[1].split("### clinc-k10")[0]


def test_settings_print_a_learned_weight_table_as_its_size() -> None:
    gate = {"intercept": 0.5, "weights": {"a": 1.0, "b": -1.0}}
    assert report._brief(gate) == {"intercept": 0.5, "weights": "2 learned weights"}
    assert report._brief({"title": 2.0}) == {"title": 2.0}
    assert report._brief(0.25) == 0.25


def test_attack_inputs_are_the_costliest_the_limits_let_through(default_keyword_matcher: Matcher) -> None:
    from benchmarks import attack
    from matcher.text import normalize, tokenize

    fresh = [attack.fresh_unknown_words() for _ in range(2)]
    assert fresh[0] != fresh[1]  # new words each time: every fuzzy lookup is a cache miss
    assert all(len(text) == attack.LIMIT for text in fresh)
    assert len(normalize(attack.nfkc_expanding())) > 2 * attack.LIMIT - 18  # expanded to the limit
    for make in attack.ATTACK_INPUTS.values():
        query = make()
        assert default_keyword_matcher.match(query).candidates  # accepted: it costs a full match
        assert len(tokenize(normalize(query))) <= attack.LIMIT // 2
    assert len(attack.ASCII_QUERY) == attack.LIMIT and attack.ASCII_QUERY.isascii()


def test_encoder_query_sets_are_seeded_and_sized_by_words() -> None:
    short, sentences = encoders.load_queries("short", 30), encoders.load_queries("sentences", 30)
    assert len(short) == len(sentences) == 30
    assert all(len(q.split()) <= 10 for q in short) and all(len(q.split()) >= 20 for q in sentences)
    assert short == encoders.load_queries("short", 30) != encoders.load_queries("short", 30, seed=1)


def test_encoder_section_prints_ratios_within_the_run() -> None:
    def stats(median: float, p99: float) -> dict[str, float]:
        return {"median": median, "p99": p99, "max": p99, "count": 10}

    encode = {"torch": stats(20.0, 30.0), "onnx fp32": stats(8.0, 9.0), "int8": stats(4.0, 5.0)}
    data = {
        "cores": 2, "load average at start": 0.5,
        "latency": {"encode": {"short": encode},
                    "match": {"short": {"onnx": {"all": stats(9.0, 12.0), "semantic": None}}}},
        "quality": {"corpus queries": 3, "cosine": {"int8": {"mean": 0.96, "min": 0.9}},
                    "decisions": {"int8": {"test.jsonl": {"queries": 3, "top-1 moved": 1, "decisions moved": 0},
                                           "passes the bar": False}}},
        "load": {"busy processes": 2, "cases": [{"case": "library default", "effective threads": 1, **stats(10.0, 40.0),
                                                 "load average": 4.0}]},
    }
    text = report.encoder_section(data)
    assert "| short (<= 10 words) | onnx fp32 | 10 | 8.00 | 9.00 | 2.50 | 1.00 |" in text
    assert "| short (<= 10 words) | int8 | 10 | 4.00 | 5.00 | 5.00 | 0.50 |" in text
    assert "| short (<= 10 words) | onnx | 9.00 | 12.00 | — | 0.45 |" in text
    assert "| int8 | 0.9600000 | 0.9000000 | 1 / 0 | **no** |" in text
    assert "| library default | 1 | 10 | 10.00 | 40.00 | 40.00 | 4.00 | 4.0 |" in text


def test_batch_benchmark_queries_are_seeded_varied_and_carry_bad_rows() -> None:
    from benchmarks import batch

    queries = batch.corpus_derived_queries(3000)
    assert queries == batch.corpus_derived_queries(3000) != batch.corpus_derived_queries(3000, seed=1)
    bad = [i for i, q in enumerate(queries) if not isinstance(q, str) or not q.strip() or len(q) > 4096]
    assert bad == [i for i in range(3000) if batch.is_bad_row(i)] == [999, 1999, 2999]
    good = [q for i, q in enumerate(queries) if not batch.is_bad_row(i)]
    assert len(set(good)) > 0.8 * len(good)  # varied, not the corpus repeated


def test_batch_benchmark_section_flags_an_output_unlike_match_many() -> None:
    from benchmarks import batch

    summary = {"errors": 1, "seconds": 10.0, "first_result_seconds": 2.0, "first_result_rows": 200}
    cases = [batch.Case("keyword", "1 worker", 1000, 12.5, summary, 150.0, "a" * 64),
             batch.Case("keyword", "2 workers", 1000, 8.0, summary, 290.0, "b" * 64)]
    facts = {"load average at start": 1.0, "load average at end": 2.0,
             "reference": {"keyword": {"digest": "a" * 64, "match_many rate": 900.0}}}
    lines = batch.render(cases, facts).splitlines()
    rows = [line for line in lines if line.startswith("| keyword")]
    assert rows[0] == "| keyword | 1 worker | 1,000 | 1 | 12.5 | 80 | 100 | 150 | `aaaaaaaaaaaa` | yes |"
    assert rows[1].endswith("| **no** |")
