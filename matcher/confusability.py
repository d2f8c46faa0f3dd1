"""Confusability report for catalog authors: which task profiles overlap, and which phrases cause it.

Each task's example phrases are scored against every task's own description fields (title,
description, keywords; never the phrases, so a phrase cannot simply find itself). A phrase
that points at another task first, or nearly as strongly as at its own, is a confusing phrase
for that pair. Pairs are ranked by how many such phrases they share, then by the cosine of
their whole-profile TF-IDF vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .catalog import Catalog
from .config import FieldWeights
from .keyword import KeywordIndex, combine
from .text import normalize

__all__ = ["ConfusablePair", "confusability_report"]

_DESCRIPTIVE = FieldWeights(title=1.0, description=1.0, keywords=2.0, phrases=0.0, best_phrase=0.0,
                            char_ngrams=1.0)


@dataclass(frozen=True)
class ConfusablePair:
    """Two tasks whose profiles overlap; `phrases` are (owner task, phrase, task it points to)."""

    task_a: str
    task_b: str
    profile_similarity: float
    phrases: tuple[tuple[str, str, str], ...]

    def to_dict(self) -> dict[str, object]:
        return {"tasks": [self.task_a, self.task_b], "profile_similarity": self.profile_similarity,
                "phrases": [{"task": t, "phrase": p, "points_to": o} for t, p, o in self.phrases]}


def confusability_report(catalog: Catalog, *, limit: int = 20, margin: float = 0.02) -> list[ConfusablePair]:
    """The `limit` most confusable task pairs of `catalog` (tasks only, not out-of-scope profiles).

    A phrase counts against a pair when another task's descriptive score beats its own task's,
    or comes within `margin` (raw keyword score) of it.
    """
    tasks = catalog.list()
    index = KeywordIndex(tasks, weights=_DESCRIPTIVE)
    position = {t.id: i for i, t in enumerate(tasks)}
    culprits: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    for task in tasks:
        own = position[task.id]
        for phrase in task.phrases:
            raw = combine(index.components(normalize(phrase)), _DESCRIPTIVE)
            rivals = np.flatnonzero(raw >= raw[own] - margin)
            for rival in rivals.tolist():
                if rival == own or raw[rival] <= 0:
                    continue
                other = tasks[rival].id
                key = (min(task.id, other), max(task.id, other))
                culprits.setdefault(key, []).append((task.id, phrase, other))
    vectors = index.profile_vectors()
    pairs = []
    for (a, b), phrases in culprits.items():
        similarity = float(vectors[position[a]].multiply(vectors[position[b]]).sum())
        pairs.append(ConfusablePair(a, b, round(similarity, 4), tuple(sorted(phrases))))
    pairs.sort(key=lambda p: (-len(p.phrases), -p.profile_similarity, p.task_a, p.task_b))
    return pairs[:limit]
