"""Benchmark datasets: a catalog, a tuning split and a held-out test split.

Two families:

* ``default``, ``hard`` and ``traffic``: the bundled catalog tuned on `corpora/queries/`
  `tune.jsonl` + `hard-tune.jsonl` + `traffic-tune.jsonl` (as the shipped configs are);
  ``default`` reports on `test.jsonl`, ``hard`` on `hard-test.jsonl` (requests in the shapes of
  real traffic and near-miss out-of-scope ones), ``traffic`` on `traffic-dev.jsonl` (the same
  shapes by other writers; the validation split on which design choices were compared, never
  fitted on).
* ``clinc-k5``, ``clinc-k10``, ``clinc-full``: CLINC150 (Larson et al. 2019) turned into an
  external catalog, one task per intent, whose phrases are K training utterances (the few-shot
  files for K = 5 and 10, all 100 for ``full``); tuned on `val.jsonl`, reported on `test.jsonl`,
  and also run self-calibrated (`matcher.tuning.self_calibrate`, no labelled queries).

The test split is read lazily, only when `Dataset.test()` is called, so everything that tunes
(engine configuration, peer thresholds) provably runs before a single test row is read.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matcher
from matcher import Catalog
from matcher.text import normalize

__all__ = [
    "CLINC_DATASETS",
    "DEFAULT_QUERIES_DIR",
    "DEFAULT_TUNE_FILES",
    "HARD_TEST_COUNTS",
    "QUICK_LIMIT",
    "TRAFFIC_DEV_COUNTS",
    "Dataset",
    "LabelledQuery",
    "clinc_dir",
    "load_clinc",
    "load_dataset",
    "load_default",
    "load_hard",
    "load_traffic",
    "read_jsonl",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_QUERIES_DIR = REPO_ROOT / "corpora" / "queries"
CLINC_DATASETS: dict[str, int | None] = {"clinc-k5": 5, "clinc-k10": 10, "clinc-full": None}
DEFAULT_TUNE_FILES = ("tune.jsonl", "hard-tune.jsonl", "traffic-tune.jsonl")
HARD_TEST_COUNTS = (318, 188)
"""In-scope and out-of-scope lines of the whole `hard-test.jsonl` (checked by the tests)."""
TRAFFIC_DEV_COUNTS = (406, 200)
"""In-scope and out-of-scope lines of the whole `traffic-dev.jsonl` (checked by the tests)."""
QUICK_LIMIT = 120


@dataclass(frozen=True)
class LabelledQuery:
    """One request and the task it should match (`task_id` None: out of scope, must match nothing)."""

    text: str
    task_id: str | None
    style: str | None = None
    """The corpus's `style` or `kind` of the request (None when the corpus has neither)."""

    @property
    def in_scope(self) -> bool:
        return self.task_id is not None


@dataclass
class Dataset:
    """A catalog with its tuning split (eager) and test split (read on first `test()` call)."""

    name: str
    catalog: Catalog
    tune: tuple[LabelledQuery, ...]
    description: str
    _load_test: Callable[[], tuple[LabelledQuery, ...]] = field(repr=False)
    _test: tuple[LabelledQuery, ...] | None = field(default=None, repr=False)
    subset: bool = False
    self_calibrate: bool = False
    """Also run our engine self-calibrated on the catalog alone (no labelled queries)."""

    def test(self) -> tuple[LabelledQuery, ...]:
        """The held-out split: report on it, never tune on it."""
        if self._test is None:
            self._test = self._load_test()
        return self._test


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file (blank lines skipped). Every data file goes through here."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def clinc_dir() -> Path:
    """`$CLINC150_DIR` if set, else `shared/data/clinc150` beside the repository (as in CI)."""
    explicit = os.environ.get("CLINC150_DIR")
    if explicit:
        return Path(explicit)
    return REPO_ROOT.parent / "shared" / "data" / "clinc150"


def _check_labels(rows: Iterable[LabelledQuery], catalog: Catalog, source: str) -> None:
    for row in rows:
        if row.task_id is not None and row.task_id not in catalog:
            raise ValueError(f"{source}: label {row.task_id!r} is not a task of the catalog")


def _labelled(row: dict[str, Any]) -> LabelledQuery:
    return LabelledQuery(row["text"], row["task_id"], row.get("style", row.get("kind")))


def _default_rows(folder: Path, names: Sequence[str], catalog: Catalog, limit: int | None,
                  seed: int) -> tuple[LabelledQuery, ...]:
    """The rows of the files in order; `limit` keeps a seeded sample of them all together."""
    items: list[LabelledQuery] = []
    for name in names:
        rows = [_labelled(r) for r in read_jsonl(folder / name)]
        _check_labels(rows, catalog, str(folder / name))
        items.extend(rows)
    if limit is not None and limit < len(items):
        keep = sorted(random.Random(seed).sample(range(len(items)), limit))
        items = [items[i] for i in keep]
    return tuple(items)


def _bundled(name: str, test_file: str, about: str, queries_dir: Path | None, limit: int | None,
             seed: int) -> Dataset:
    folder = queries_dir if queries_dir is not None else DEFAULT_QUERIES_DIR
    catalog = matcher.default_catalog()
    sample = f"; seeded sample of {limit} lines per split" if limit is not None else ""
    return Dataset(
        name=name,
        catalog=catalog,
        tune=_default_rows(folder, DEFAULT_TUNE_FILES, catalog, limit, seed),
        description=(f"bundled catalog ({len(catalog)} tasks + "
                     f"{len(catalog.profiles()) - len(catalog)} out-of-scope profiles); "
                     f"{about}; tuned on corpora/queries {' + '.join(DEFAULT_TUNE_FILES)} as the shipped "
                     f"configs{sample}"),
        _load_test=lambda: _default_rows(folder, (test_file,), catalog, limit, seed),
        subset=limit is not None,
    )


def load_default(queries_dir: Path | None = None, *, limit: int | None = None,
                 seed: int = 0) -> Dataset:
    """The bundled catalog, tuned on the `DEFAULT_TUNE_FILES`, reported on `test.jsonl`.

    `limit` keeps a seeded sample of that many lines of each split.
    """
    return _bundled("default", "test.jsonl", "reported on corpora/queries test.jsonl", queries_dir,
                    limit, seed)


def load_hard(queries_dir: Path | None = None, *, limit: int | None = None, seed: int = 0) -> Dataset:
    """As `load_default` (same catalog and tuning rows), reported on `hard-test.jsonl`."""
    in_scope, oos = HARD_TEST_COUNTS
    about = (f"reported on corpora/queries hard-test.jsonl, written in the shapes of real traffic, "
             f"{in_scope} in-scope + {oos} near-miss out-of-scope test lines")
    return _bundled("hard", "hard-test.jsonl", about, queries_dir, limit, seed)


def load_traffic(queries_dir: Path | None = None, *, limit: int | None = None, seed: int = 0) -> Dataset:
    """As `load_default` (same catalog and tuning rows), reported on the validation split `traffic-dev.jsonl`."""
    in_scope, oos = TRAFFIC_DEV_COUNTS
    about = (f"reported on corpora/queries traffic-dev.jsonl, the same shapes by other writers, {in_scope} "
             f"in-scope + {oos} near-miss out-of-scope lines: the validation split on which design choices "
             "were compared (never fitted on)")
    return _bundled("traffic", "traffic-dev.jsonl", about, queries_dir, limit, seed)


def intent_to_id(intent: str) -> str:
    """CLINC intent name to a kebab-case catalog id (`book_flight` -> `book-flight`)."""
    return intent.replace("_", "-")


def clinc_catalog_records(train_rows: Sequence[dict[str, Any]], intents: Sequence[str],
                          k: int | None) -> list[dict[str, Any]]:
    """Catalog records: title from the intent name, the first K utterances (file order) as phrases.

    A phrase whose normalized text occurs under two intents is dropped (it cannot tell them
    apart and the catalog would warn); repeats within an intent are kept once.
    """
    by_intent: dict[str, list[str]] = {intent: [] for intent in intents}
    for row in train_rows:
        label = row["label"]
        if label in by_intent and (k is None or len(by_intent[label]) < k):
            by_intent[label].append(row["text"].strip())
    owners: dict[str, set[str]] = {}
    for intent, texts in by_intent.items():
        for text in texts:
            owners.setdefault(normalize(text), set()).add(intent)
    records = []
    for intent in intents:
        seen: set[str] = set()
        phrases = []
        for text in by_intent[intent]:
            key = normalize(text)
            if key and len(owners[key]) == 1 and key not in seen:
                seen.add(key)
                phrases.append(text)
        records.append({"id": intent_to_id(intent), "title": intent.replace("_", " "),
                        "phrases": phrases})
    return records


def _subset_rows(rows: list[dict[str, Any]], intents: set[str], oos_share: float | None,
                 seed: int) -> list[dict[str, Any]]:
    """In-scope rows of `intents` plus a seeded sample of out-of-scope rows of the same share."""
    kept = [r for r in rows if r["label"] in intents]
    oos = [r for r in rows if r["label"] is None]
    if oos_share is None:
        return kept + oos
    n_oos = min(len(oos), round(oos_share * len(kept)))
    picked = sorted(random.Random(seed).sample(range(len(oos)), n_oos))
    return kept + [oos[i] for i in picked]


def load_clinc(k: int | None, *, root: Path | None = None, intents: int | None = None,
               seed: int = 0) -> Dataset:
    """CLINC150 as a catalog of K-shot intents (K=None: all 100), tuned on val, tested on test.

    `intents` keeps a seeded sample of that many intents (for CI and `--quick`); out-of-scope
    rows are then sampled to keep the split's original out-of-scope share.
    """
    folder = root if root is not None else clinc_dir()
    labels: list[str] = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
    chosen = sorted(labels)
    if intents is not None and intents < len(chosen):
        chosen = sorted(random.Random(seed).sample(chosen, intents))
    keep = set(chosen)
    train_file = folder / "train.jsonl" if k is None else folder / "fewshot" / f"train_{k}.jsonl"
    train = [r for r in read_jsonl(train_file) if r["label"] is not None]
    records = clinc_catalog_records(train, chosen, k)
    name = "clinc-full" if k is None else f"clinc-k{k}"
    catalog = Catalog.from_records(records, source=f"{name}:{train_file.name}")

    def split(file: str) -> tuple[LabelledQuery, ...]:
        rows = read_jsonl(folder / file)
        if intents is not None and intents < len(labels):
            in_scope = sum(r["label"] is not None for r in rows)
            share = (len(rows) - in_scope) / max(in_scope, 1)
            rows = _subset_rows(rows, keep, share, seed)
        items = tuple(LabelledQuery(r["text"], None if r["label"] is None else intent_to_id(r["label"]))
                      for r in rows)
        _check_labels(items, catalog, str(folder / file))
        return items

    shots = "all 100" if k is None else str(k)
    subset = "" if intents is None or intents >= len(labels) else f", seeded subset of {len(chosen)} intents"
    return Dataset(
        name=name,
        catalog=catalog,
        tune=split("val.jsonl"),
        description=f"CLINC150, {len(chosen)} intents x {shots} training utterances as phrases{subset}; "
                    "tuned on val.jsonl, reported on test.jsonl",
        _load_test=lambda: split("test.jsonl"),
        subset=bool(subset),
        self_calibrate=True,
    )


def load_dataset(name: str, *, quick: bool = False, clinc_intents: int | None = None) -> Dataset:
    """A dataset by name (`default`, `hard`, `traffic` or a key of `CLINC_DATASETS`)."""
    limit = QUICK_LIMIT if quick else None
    if name == "default":
        return load_default(limit=limit)
    if name == "hard":
        return load_hard(limit=limit)
    if name == "traffic":
        return load_traffic(limit=limit)
    if name in CLINC_DATASETS:
        return load_clinc(CLINC_DATASETS[name], intents=clinc_intents)
    raise KeyError(f"unknown dataset {name!r}; known: default, hard, traffic, {', '.join(CLINC_DATASETS)}")
