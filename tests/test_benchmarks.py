"""Fast tests of the benchmark harness (`benchmarks/`) on hand-made inputs and small subsets.

The metric functions themselves (`matcher.metrics`) are tested in `test_metrics.py`. CLINC150
tests use a 10-intent subset and are skipped when the data is absent
(CI keeps it in `shared/` beside the repository, or `$CLINC150_DIR`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from benchmarks import datasets, encoders, peers, quality, report, synthetic
from benchmarks.embeddings import CachingEmbedder
from matcher import Catalog, Matcher, metrics

CLINC = datasets.clinc_dir()
needs_clinc = pytest.mark.skipif(not (CLINC / "labels.json").is_file(),
                                 reason=f"CLINC150 data not found at {CLINC} (set CLINC150_DIR)")


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


def test_finetune_section_sets_both_models_beside_the_published_rows() -> None:
    columns = ["top-1", "recall@5", "in-scope acc.", "OOS recall", "(acc. + OOS) / 2", "high precision",
               "high coverage", "high answered right", "high OOS recall"]
    shipped = {"backend": "onnx", "ours: full": dict.fromkeys(columns, 89.5)}
    tuned = {"backend": "onnx", "ours: full": dict.fromkeys(columns, 92.2)}
    data = {"settings": {"epochs": 4, "batch_size": 32, "learning_rate": 5e-05, "seed": 0}, "cpu_count": 2,
            "runs": [{"k": 10, "tasks": 150, "texts": 1650, "steps": 220, "threads": 2, "finetune_minutes": 3.7,
                      "loss": [0.4, 0.1], "shipped": shipped, "finetuned": tuned}]}
    text = report.finetune_section(data)
    assert "### clinc-k10: 150 tasks, 1650 texts, 220 steps on 2 threads in 3.7 minutes" in text
    assert "| ours: full, shipped MiniLM | 89.5 | 89.5 | 89.5 |" in text
    assert "| ours: full, fine-tuned | 92.2 |" in text
    assert "| _published: CPFT, 10-shot (closed set)_ | 94.2 | — |" in text


def test_reload_section_counts_errors_and_splits_latency_by_reload_window() -> None:
    from benchmarks import reload

    run = reload.Run("keyword-only", latencies=[(0.0, 10.0), (1.0, 12.0), (5.0, 30.0), (20.0, 11.0)], requests=5,
                     errors=["503: warming up"], generations={"abcdef0123456789": 4},
                     reloads=[("admin route", 4.0, 2.0), ("SIGHUP", 10.0, 1.0)])
    assert run.quiet() == [10.0, 12.0] and run.during_reloads() == [30.0]
    text = reload.render([run])
    assert "| **reload under load: errors** | **1** of 5 requests |" in text
    assert "| reloads (admin route / SIGHUP) | 1 / 1 |" in text
    assert "| time until every worker serves the new generation, median / max | 1.50 s / 2.00 s |" in text
    assert "| latency median / p99, quiet | 11.0 / 12.0 ms |" in text
    assert "| latency median / p99, while reloading | 30.0 / 30.0 ms |" in text
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


def test_a_failed_section_says_so_with_its_output_instead_of_losing_the_run() -> None:
    import subprocess

    from benchmarks import run_all

    error = subprocess.CalledProcessError(1, ["python", "-m", "benchmarks.reload"],
                                          stderr="line 1\nTimeoutError: the workers did not all reach it\n")
    text = run_all.failed_section("reload under load", "benchmarks.reload", error)
    assert text.startswith("## reload under load (`python -m benchmarks.reload`): failed in this run")
    assert "TimeoutError: the workers did not all reach it" in text and "exit status 1" in text


def test_the_load_report_states_the_keyword_path_as_a_share_of_the_ceiling() -> None:
    from benchmarks.load import Level, keyword_share_of_ceiling

    def level(path: str, concurrency: int, seconds: float) -> Level:
        return Level("keyword-only", concurrency, path, 1000, 0, seconds, (1.0,))

    rows = [level("healthz", 16, 0.5), level("keyword", 16, 1.25), level("healthz", 1, 1.0), level("keyword", 1, 2.0)]
    assert keyword_share_of_ceiling(rows) == ("Keyword path as a share of the healthz ceiling, same run: "
                                              "c = 1: 500 / 1000 rps = **50%**; c = 16: 800 / 2000 rps = **40%**")
    assert keyword_share_of_ceiling([level("keyword", 16, 1.0)]) == ""


def test_the_load_share_is_the_median_of_each_rounds_back_to_back_ratio() -> None:
    from benchmarks.load import Level, keyword_share_of_ceiling, render

    def level(path: str, seconds: float, round_: int) -> Level:
        return Level("keyword-only", 16, path, 1000, 0, seconds, (float(round_ + 1),), round_)

    # the machine slows down between rounds: each round's own ratio is 80%, 50% and 90%
    rows = [level("healthz", 1.0, 0), level("keyword", 1.25, 0), level("healthz", 2.0, 1), level("keyword", 4.0, 1),
            level("healthz", 0.9, 2), level("keyword", 1.0, 2)]
    assert keyword_share_of_ceiling(rows) == ("Keyword path as a share of the healthz ceiling, same run: "
                                              "c = 16: **80%** (rounds: 80%, 50%, 90%)")
    table = render(rows).splitlines()
    assert len(table) == 4  # header, rule, one row per (server, level, path)
    assert table[2] == "| keyword-only | 16 | healthz | 3 | 3000 | 0 | 1000.0 | 500-1111 | 2.0 | 3.0 |"
    assert table[3] == "| keyword-only | 16 | keyword | 3 | 3000 | 0 | 800.0 | 250-1000 | 2.0 | 3.0 |"


def test_the_load_benchmark_refuses_zero_rounds() -> None:
    from benchmarks import load

    with pytest.raises(SystemExit):
        load.main(["--rounds", "0"])


def test_the_keyword_path_report_judges_each_bar_and_states_the_machine_yardstick() -> None:
    from benchmarks.keyword_path import BARS, render

    def row(median: float) -> dict[str, float]:
        return {"queries": 150, "passes": 5, "median": median, "p99": 2 * median, "fastest per query": median}

    result = {"cores": 2, "python": "3.11.7", "repeats": 7, "start-up load average": (0.1, 0.2),
              "latency load average": (0.2, 0.3),
              "latency": {"cpu reference ms": 4.25, "short": row(BARS["short"] - 0.01),
                          "sentences": row(BARS["sentences"] + 0.01)},
              "start-up": {"import matcher": 0.2, "import to first keyword answer": 0.25,
                           "process start to first keyword answer": BARS["first answer"] + 0.1,
                           "process start to first keyword answer, empty cache": 5.0,
                           "scikit-learn imported": False}}
    report = render(result)
    short, sentences = (line for line in report.splitlines() if line.startswith(("| short", "| 1-4")))
    assert short.endswith("ms: met |") and sentences.endswith("ms: missed |")
    assert "(bar ≤ 0.4 s: missed) | 0.500 |" in report
    assert "scikit-learn imported by those: no" in report and "Machine yardstick" in report and "4.25 ms" in report


def test_the_machine_yardstick_times_real_work() -> None:
    from benchmarks.perf import cpu_reference_ms

    assert 0 < cpu_reference_ms(repeats=1) < 10_000
