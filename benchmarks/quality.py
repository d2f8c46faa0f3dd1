"""Quality runs: tune every system on a dataset's tuning split, then measure it on the test split.

Two stages, in this order, so tuning can never see a test row:

1. `tune_systems` reads only `Dataset.tune`: it tunes our engine's `MatcherConfig`
   (`matcher.tune`, or `MatcherConfig()` defaults when it is not importable), builds its
   indexes, fits each peer and picks each peer's no-match threshold by one rule for all
   (`metrics.balanced_threshold`) and its 97%-precision threshold (`metrics.precision_threshold`).
   Self-calibrated systems read the catalog only (`matcher.tuning.self_calibrate`).
2. `evaluate` reads `Dataset.test()` and collects one `Prediction` per system and query.

Systems: ``ours: keyword`` (semantic=False), ``ours: full`` (MiniLM backstop), ``ours: full,
peer rule`` (the full engine's ranking with its no-match decision replaced by the peers' rule
on its top score, so acceptance is compared like for like), the peers of `benchmarks.peers`,
and for datasets with `Dataset.self_calibrate` ``ours: keyword, self-calibrated`` and ``ours:
full, self-calibrated`` (config fitted without a single labelled query) and ``ours: full, 40
labels`` (`tune` on a seeded sample of 40 rows of the tuning split: a new user's first labels).

A `TuningCache` shared by the datasets of a run fits each system once per catalog and tuning
split: the ``default``, ``hard`` and ``traffic`` datasets share both and differ only in the test split.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from matcher import Catalog, Embedder, Matcher, MatcherConfig
from matcher.metrics import Prediction, balanced_threshold, latency_summary, precision_threshold, prediction
from matcher.text import normalize

from .datasets import Dataset, LabelledQuery
from .embeddings import CachingEmbedder
from .peers import EmbeddingPeer, Peer, default_peers, embedding_texts, rank_tasks

__all__ = [
    "OURS_FULL",
    "OURS_FULL_FEW",
    "OURS_FULL_SELF",
    "OURS_KEYWORD",
    "OURS_KEYWORD_SELF",
    "OURS_PEER_RULE",
    "DatasetResult",
    "FittedSystem",
    "SystemResult",
    "TuningCache",
    "build_times",
    "engine_predictions",
    "evaluate",
    "measure_latency",
    "peer_latency",
    "run_dataset",
    "self_calibrated_config",
    "tune_config",
    "tune_systems",
]

OURS_KEYWORD = "ours: keyword"
OURS_FULL = "ours: full"
OURS_PEER_RULE = "ours: full, peer rule"
OURS_KEYWORD_SELF = "ours: keyword, self-calibrated"
OURS_FULL_SELF = "ours: full, self-calibrated"
FEW_LABELS = 40
OURS_FULL_FEW = f"ours: full, {FEW_LABELS} labels"
TOP_K = 5
HIGH_PRECISION = 0.97


def tune_config(catalog: Catalog, pairs: Sequence[tuple[str, str | None]],
                semantic: bool | Embedder) -> tuple[MatcherConfig, str]:
    """`matcher.tune` on the pairs (same `semantic` option as the Matcher), or the defaults.

    Returns the config and where it came from, which the report prints.
    """
    try:
        tune: Callable[..., MatcherConfig] = importlib.import_module("matcher.tuning").tune
    except (ImportError, AttributeError):
        return MatcherConfig(), "MatcherConfig() defaults (matcher.tune not importable)"
    return tune(catalog, list(pairs), semantic=semantic), "matcher.tune on the tuning split"


def self_calibrated_config(catalog: Catalog, semantic: bool | Embedder) -> tuple[MatcherConfig, str]:
    """`matcher.tuning.self_calibrate` on the catalog alone: no labelled query is read."""
    from matcher.tuning import self_calibrate

    return (self_calibrate(catalog, semantic=semantic),
            "matcher.tuning.self_calibrate on the catalog alone (no labelled queries)")


def engine_predictions(engine: Matcher, queries: Sequence[LabelledQuery]) -> list[Prediction]:
    """One `Prediction` per query from `Matcher.match_many` (top 5 candidates)."""
    results = engine.match_many([q.text for q in queries], top_k=TOP_K)
    return [prediction(q.task_id, r) for q, r in zip(queries, results, strict=True)]


@dataclass
class FittedSystem:
    """A system ready for the test split: how to predict, and what tuning decided."""

    name: str
    kind: str
    predict: Callable[[Sequence[LabelledQuery]], list[Prediction]]
    tune_preds: list[Prediction]
    settings: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    peer: Peer | None = None
    config: MatcherConfig | None = None
    config_source: str = ""
    reused_from: str | None = None
    """The dataset whose identical catalog and tuning split this system was fitted on, if not this one."""


class TuningCache:
    """Fitted systems of one run by (catalog fingerprint, tuning rows, system name).

    A dataset with the same catalog and tuning rows as an earlier one gets that dataset's fitted
    systems back (their predictions on the tuning rows are the same too). Only one catalog's
    systems are kept: a dataset with another catalog clears the rest, which bounds memory.
    """

    def __init__(self) -> None:
        self._fingerprint = ""
        self._systems: dict[tuple[tuple[tuple[str, str | None], ...], str], tuple[str, FittedSystem]] = {}
        self.fits = 0

    def fitted(self, dataset: Dataset, name: str, fit: Callable[[], FittedSystem]) -> FittedSystem:
        """The cached system for this dataset's catalog, tuning rows and `name`, or `fit()`'s."""
        if dataset.catalog.fingerprint != self._fingerprint:
            self._fingerprint, self._systems = dataset.catalog.fingerprint, {}
        key = (tuple((q.text, q.task_id) for q in dataset.tune), name)
        hit = self._systems.get(key)
        if hit is None:
            system = fit()
            self.fits += 1
            self._systems[key] = (dataset.name, system)
            return system
        origin, system = hit
        return dataclasses.replace(system, seconds={}, reused_from=origin)


@dataclass
class SystemResult:
    """One system's predictions on both splits, with its settings and timings."""

    name: str
    kind: str
    tune_preds: list[Prediction]
    test_preds: list[Prediction]
    settings: dict[str, str]
    seconds: dict[str, float]


@dataclass
class DatasetResult:
    """Everything measured on one dataset."""

    name: str
    description: str
    tasks: int
    profiles: int
    tune_counts: tuple[int, int]
    test_counts: tuple[int, int]
    systems: list[SystemResult]
    latency: dict[str, dict[str, tuple[float, float, int]]] = field(default_factory=dict)
    throughput: dict[str, float] = field(default_factory=dict)
    build_seconds: dict[str, float] = field(default_factory=dict)
    config_source: str = ""
    subset: bool = False
    timing_load: tuple[float, float] = (math.nan, math.nan)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    test_kinds: tuple[str | None, ...] = ()
    """The `style` / `kind` of each test query, aligned with every system's `test_preds`."""

    def system(self, name: str) -> SystemResult | None:
        return next((s for s in self.systems if s.name == name), None)


def _counts(rows: Sequence[LabelledQuery]) -> tuple[int, int]:
    in_scope = sum(r.in_scope for r in rows)
    return in_scope, len(rows) - in_scope


def _fmt(value: float) -> str:
    return "none (accept all)" if value == -math.inf else ("accept none" if value == math.inf
                                                          else f"{value:.4g}")


def _peer_predictions(peer: Peer, ids: Sequence[str], is_task: np.ndarray, queries: Sequence[LabelledQuery],
                      threshold: float, high: float) -> list[Prediction]:
    ranked = rank_tasks(peer.scores([q.text for q in queries]), is_task, ids, TOP_K)
    preds = []
    for q, (ranking, top, best_oos) in zip(queries, ranked, strict=True):
        eligible = not best_oos > top
        preds.append(Prediction(q.task_id, ranking, top, eligible and top >= threshold,
                                tier="high" if eligible and top >= high else None, eligible=eligible))
    return preds


def _fit_peer(peer: Peer, dataset: Dataset) -> FittedSystem:
    catalog = dataset.catalog
    profiles = catalog.profiles()
    ids = [p.id for p in profiles]
    is_task = np.array([p.kind == "task" for p in profiles])
    tune = dataset.tune
    start = time.perf_counter()
    peer.fit(catalog, [q.text for q in tune], [q.task_id for q in tune])
    fitted = time.perf_counter() - start
    ranked = rank_tasks(peer.scores([q.text for q in tune]), is_task, ids, TOP_K)
    tops = [top for _, top, _ in ranked]
    eligible = [not oos > top for _, top, oos in ranked]
    correct = [q.task_id is not None and r[0] == q.task_id for q, (r, _, _) in zip(tune, ranked, strict=True)]
    threshold = balanced_threshold(tops, correct, [q.in_scope for q in tune], eligible)
    high = precision_threshold(tops, correct, HIGH_PRECISION, eligible)
    tune_preds = [Prediction(q.task_id, r, top, ok and top >= threshold,
                             tier="high" if ok and top >= high else None, eligible=ok)
                  for q, (r, top, _), ok in zip(tune, ranked, eligible, strict=True)]
    settings = {"no-match threshold": _fmt(threshold), "97% threshold": _fmt(high)}
    scorer = getattr(peer, "scorer", None)
    if scorer is not None:
        settings["scorer"] = str(scorer)
    return FittedSystem(
        name=peer.name, kind="peer",
        predict=lambda qs: _peer_predictions(peer, ids, is_task, qs, threshold, high),
        tune_preds=tune_preds, settings=settings, seconds={"fit": fitted}, peer=peer,
    )


def _few_labels(dataset: Dataset) -> list[LabelledQuery]:
    """A seeded sample of `FEW_LABELS` rows of the tuning split: what a new user labels in an afternoon."""
    rows = list(dataset.tune)
    return [rows[i] for i in sorted(random.Random(0).sample(range(len(rows)), min(FEW_LABELS, len(rows))))]


def _fit_engine(name: str, dataset: Dataset, semantic: bool | Embedder, mode: str) -> FittedSystem:
    """Our engine tuned on the tuning split (`mode` "tuned"), on `FEW_LABELS` rows of it ("few"), or
    self-calibrated on the catalog alone ("self")."""
    start = time.perf_counter()
    if mode == "self":
        config, source = self_calibrated_config(dataset.catalog, semantic)
    else:
        rows = _few_labels(dataset) if mode == "few" else dataset.tune
        config, source = tune_config(dataset.catalog, [(q.text, q.task_id) for q in rows], semantic)
        if mode == "few":
            source = f"matcher.tune on a seeded sample of {len(rows)} rows of the tuning split"
    tuned = time.perf_counter() - start
    engine = Matcher(dataset.catalog, semantic=semantic, config=config)
    start = time.perf_counter()
    engine.warm_up()
    built = time.perf_counter() - start
    settings = {k: str(v) for k, v in config.to_dict().items()
                if k in ("high_threshold", "high_margin", "medium_threshold", "fallback_threshold",
                         "semantic_fusion", "ambiguity_margin")}
    return FittedSystem(name=name, kind="ours", predict=lambda qs: engine_predictions(engine, qs),
                        tune_preds=engine_predictions(engine, dataset.tune), settings=settings,
                        seconds={"tune": tuned, "build": built}, config=config, config_source=source)


def tune_systems(dataset: Dataset, embedder: Embedder | None, *, progress: bool = False,
                 peers: Sequence[Peer] | None = None, cache: TuningCache | None = None
                 ) -> tuple[list[FittedSystem], dict[str, MatcherConfig], str]:
    """Stage 1: tune and fit every system on `dataset.tune` only (the test split is not read).

    Returns the systems, our engine's configs by system name, and where the tuned config came from.
    """
    if isinstance(embedder, CachingEmbedder):
        texts = [t for p in dataset.catalog.profiles() for t in embedding_texts(p)]
        embedder.prime(texts + [normalize(q.text) for q in dataset.tune], progress=progress,
                       desc=f"{dataset.name}: embed catalog + tune split")
    jobs: list[tuple[str, bool | Embedder, str]] = [(OURS_KEYWORD, False, "tuned")]
    if dataset.self_calibrate:
        jobs.append((OURS_KEYWORD_SELF, False, "self"))
    if embedder is not None:
        jobs.append((OURS_FULL, embedder, "tuned"))
        if dataset.self_calibrate:
            jobs.extend([(OURS_FULL_SELF, embedder, "self"), (OURS_FULL_FEW, embedder, "few")])
    chosen_peers = list(peers) if peers is not None else default_peers(embedder)
    bar = _bar(len(jobs) + len(chosen_peers), f"{dataset.name}: tune", progress)
    cache = cache if cache is not None else TuningCache()
    systems: list[FittedSystem] = []
    for name, option, mode in jobs:
        systems.append(cache.fitted(dataset, name, functools.partial(_fit_engine, name, dataset, option, mode)))
        bar(name)
    for peer in chosen_peers:
        systems.append(cache.fitted(dataset, peer.name, functools.partial(_fit_peer, peer, dataset)))
        bar(peer.name)
    configs = {s.name: s.config for s in systems if s.config is not None}
    tuned = systems[0]
    source = tuned.config_source + (f" (fitted once, for {tuned.reused_from}: same catalog and tuning split)"
                                    if tuned.reused_from else "")
    return systems, configs, source


def _bar(total: int, desc: str, enabled: bool) -> Callable[[str], None]:
    """A tqdm bar on stderr advanced once per finished step (a no-op when disabled)."""
    if not enabled:
        return lambda _label: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="system", leave=False)

    def step(label: str) -> None:
        bar.set_postfix_str(label)
        bar.update(1)
        if bar.n >= total:
            bar.close()

    return step


def _peer_rule(full: SystemResult) -> SystemResult:
    """The full engine's rankings with the peers' balanced no-match rule on its top score."""
    def decide(preds: list[Prediction], threshold: float) -> list[Prediction]:
        return [dataclasses.replace(p, accepted=p.top_score >= threshold) for p in preds]

    tune = full.tune_preds
    threshold = balanced_threshold([p.top_score for p in tune], [p.correct for p in tune],
                                   [p.gold is not None for p in tune])
    return SystemResult(OURS_PEER_RULE, "ours", decide(tune, threshold), decide(full.test_preds, threshold),
                        {"no-match threshold": _fmt(threshold)}, {})


def evaluate(dataset: Dataset, systems: Sequence[FittedSystem], *, progress: bool = False,
             embedder: Embedder | None = None) -> list[SystemResult]:
    """Stage 2: predictions of every fitted system on the test split."""
    test = dataset.test()
    if isinstance(embedder, CachingEmbedder):
        embedder.prime([normalize(q.text) for q in test], progress=progress,
                       desc=f"{dataset.name}: embed test split")
    bar = _bar(len(systems), f"{dataset.name}: test", progress)
    results = []
    for system in systems:
        start = time.perf_counter()
        preds = system.predict(test)
        seconds = {**system.seconds, "test": time.perf_counter() - start}
        settings = {**system.settings, **({"fitted on": system.reused_from} if system.reused_from else {})}
        results.append(SystemResult(system.name, system.kind, system.tune_preds, preds, settings, seconds))
        bar(system.name)
    full = next((r for r in results if r.name == OURS_FULL), None)
    if full is not None:
        results.insert(results.index(full) + 1, _peer_rule(full))
    return results


def measure_latency(engine: Matcher, texts: Sequence[str]) -> tuple[dict[str, list[float]], float]:
    """Per-query wall time of `Matcher.match` grouped by deciding path, and batch throughput.

    The engine is warmed up first (index built, model loaded); throughput is queries per second
    of one `match_many` call over the same texts, one thread.
    """
    engine.warm_up()
    by_path: dict[str, list[float]] = {}
    for text in texts:
        start = time.perf_counter()
        result = engine.match(text, top_k=TOP_K)
        elapsed = (time.perf_counter() - start) * 1000
        by_path.setdefault(result.matcher, []).append(elapsed)
    start = time.perf_counter()
    engine.match_many(texts, top_k=TOP_K)
    throughput = len(texts) / (time.perf_counter() - start)
    head_costs = _head_latency(engine, texts)
    if head_costs:
        by_path["head alone (within semantic)"] = head_costs
    return by_path, throughput


def _head_latency(engine: Matcher, texts: Sequence[str]) -> list[float]:
    """Per-query wall time (ms) of the discriminative head alone (`Matcher.head_probabilities`) on
    queries already normalized, repaired and embedded: its cost on top of the semantic path's."""
    index = engine._semantic_index()
    if index is None or engine.config.semantic_head_weight == 0 or engine._task_head() is None:
        return []
    keyword = engine._keyword_index()
    prepared = [(keyword.repair(normalize(text))[0], index.encode([normalize(text)])[0]) for text in texts]
    costs = []
    for repaired, vector in prepared:
        start = time.perf_counter()
        engine.head_probabilities(repaired, vector)
        costs.append((time.perf_counter() - start) * 1000)
    return costs


def peer_latency(peer: Peer, catalog: Catalog, texts: Sequence[str]) -> tuple[list[float], float]:
    """Per-query wall time (ms) of a fitted peer scoring and ranking one query, and batch throughput."""
    profiles = catalog.profiles()
    ids = [p.id for p in profiles]
    is_task = np.array([p.kind == "task" for p in profiles])
    latencies = []
    for text in texts:
        start = time.perf_counter()
        rank_tasks(peer.scores([text]), is_task, ids, TOP_K)
        latencies.append((time.perf_counter() - start) * 1000)
    start = time.perf_counter()
    rank_tasks(peer.scores(list(texts)), is_task, ids, TOP_K)
    return latencies, len(texts) / (time.perf_counter() - start)


def build_times(catalog: Catalog, live_embedder: Embedder | None) -> dict[str, float]:
    """Seconds to build the keyword index, and the semantic index with an empty and a warm disk cache.

    The model is loaded before the clock starts; the cold build encodes every profile text.
    """
    out = {}
    start = time.perf_counter()
    Matcher(catalog, semantic=False).warm_up()
    out["keyword index"] = time.perf_counter() - start
    if live_embedder is not None:
        live_embedder.encode(["load the model"])
        with tempfile.TemporaryDirectory(prefix="bench-embeddings-") as folder:
            for label in ("semantic index, empty cache", "semantic index, warm cache"):
                engine = Matcher(catalog, semantic=live_embedder, cache_dir=folder)
                start = time.perf_counter()
                engine.warm_up()
                out[label] = time.perf_counter() - start
    return out


def run_dataset(dataset: Dataset, *, embedder: Embedder | None, live_embedder: Embedder | None,
                latency_sample: int | None = 300, progress: bool = False, seed: int = 0,
                cache: TuningCache | None = None, peers: Sequence[Peer] | None = None) -> DatasetResult:
    """Tune, evaluate and time every system on one dataset.

    Latency uses `live_embedder` (the plain model, no in-run cache) on a seeded sample of the
    test split (`latency_sample`; None: all of it), so semantic-path times include encoding.
    `cache` shares fitted systems with earlier datasets of the run (same catalog and tuning rows);
    `peers` defaults to `default_peers(embedder)`.
    """
    systems, configs, source = tune_systems(dataset, embedder, progress=progress, peers=peers, cache=cache)
    results = evaluate(dataset, systems, progress=progress, embedder=embedder)
    test = dataset.test()
    texts = [q.text for q in test]
    if latency_sample is not None and latency_sample < len(texts):
        texts = [texts[i] for i in sorted(random.Random(seed).sample(range(len(texts)), latency_sample))]
    out = DatasetResult(
        name=dataset.name, description=dataset.description, tasks=len(dataset.catalog),
        profiles=len(dataset.catalog.profiles()), tune_counts=_counts(dataset.tune),
        test_counts=_counts(test), systems=results, config_source=source, subset=dataset.subset,
        configs={name: {k: v for k, v in config.to_dict().items() if k != "tuning"}
                 for name, config in configs.items()},
        test_kinds=tuple(q.style for q in test),
    )
    timed: list[tuple[str, bool | Embedder, MatcherConfig]] = [(OURS_KEYWORD, False, configs[OURS_KEYWORD])]
    if live_embedder is not None and OURS_FULL in configs:
        timed.append((OURS_FULL, live_embedder, configs[OURS_FULL]))
    bar = _bar(len(timed) + sum(s.peer is not None for s in systems) + 1, f"{dataset.name}: timing", progress)
    load_before = os.getloadavg()[0]
    for name, option, config in timed:
        engine = Matcher(dataset.catalog, semantic=option, config=config)
        by_path, throughput = measure_latency(engine, texts)
        out.latency[name] = {path: latency_summary(values) for path, values in sorted(by_path.items())}
        out.latency[name]["all"] = latency_summary([v for values in by_path.values() for v in values])
        out.throughput[name] = throughput
        bar(name)
    for system in systems:
        if system.peer is None:
            continue
        peer = system.peer
        if isinstance(peer, EmbeddingPeer) and live_embedder is not None:
            peer = peer.with_query_embedder(live_embedder)
        values, throughput = peer_latency(peer, dataset.catalog, texts)
        out.latency[system.name] = {"all": latency_summary(values)}
        out.throughput[system.name] = throughput
        bar(system.name)
    out.timing_load = (load_before, os.getloadavg()[0])
    out.build_seconds = build_times(dataset.catalog, live_embedder)
    for done in results:
        if done.kind == "ours" and "tune" in done.seconds:
            out.build_seconds[f"tune ({done.name})"] = done.seconds["tune"]
    bar("build")
    return out
