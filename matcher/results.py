"""Immutable result types: the body of `POST /v1/tasks/match` and per-candidate explanations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CandidateExplanation",
    "Capability",
    "FieldMatch",
    "FuzzyCorrection",
    "TaskMatch",
    "TaskMatchCandidate",
]

MATCH_TYPES = ("task", "capability", "unsupported", "none")


@dataclass(frozen=True)
class TaskMatchCandidate:
    """One ranked task: its id, calibrated score in [0, 1] and confidence tier."""

    task_id: str
    score: float
    confidence: str

    def to_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "score": self.score, "confidence": self.confidence}


@dataclass(frozen=True)
class Capability:
    """A general lane (a `capability`-category task such as general-chat) the request fits."""

    id: str
    label: str
    category: str
    category_id: str
    desc: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "category": self.category,
                "category_id": self.category_id, "desc": self.desc}


@dataclass(frozen=True)
class TaskMatch:
    """Outcome of matching one query; `to_dict()` is the API response body.

    `type` is ``"task"`` (a task matched), ``"capability"`` (a general lane fits),
    ``"unsupported"`` (recognizably outside the catalog) or ``"none"`` (nothing confident);
    `confidence` is the tier of that outcome and `reasoning` says why in plain sentences.
    `ambiguous` describes the query, not the page: it compares the two best tasks of the
    catalog even when `top_k` is 1, so it never changes with `top_k`.
    """

    query: str
    matched: bool
    chosen: TaskMatchCandidate | None
    candidates: tuple[TaskMatchCandidate, ...]
    ambiguous: bool
    matcher: str
    type: str = "none"
    confidence: str = "low"
    reasoning: str = ""
    capability: Capability | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "matched": self.matched,
            "chosen": None if self.chosen is None else self.chosen.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "ambiguous": self.ambiguous,
            "matcher": self.matcher,
            "type": self.type,
            "confidence": self.confidence,
            "reasoning": self.reasoning,
            "capability": None if self.capability is None else self.capability.to_dict(),
        }


@dataclass(frozen=True)
class FuzzyCorrection:
    """A query word missing from the catalog vocabulary, read as a close catalog word instead."""

    original: str
    corrected: str
    similarity: float


@dataclass(frozen=True)
class FieldMatch:
    """Query terms that matched one profile field, with their share of the raw score."""

    field: str
    similarity: float
    weight: float
    terms: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class CandidateExplanation:
    """Why a task scored what it did: per-field term matches, nearest phrase, corrections."""

    task_id: str
    score: float
    confidence: str
    keyword_raw: float
    semantic_similarity: float | None
    fields: tuple[FieldMatch, ...]
    best_phrase: str | None
    corrections: tuple[FuzzyCorrection, ...] = field(default=())
    head_probability: float | None = None
    """The discriminative head's probability of the task (None: not on the semantic path, or no head)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "score": self.score,
            "confidence": self.confidence,
            "keyword_raw": self.keyword_raw,
            "semantic_similarity": self.semantic_similarity,
            "head_probability": self.head_probability,
            "fields": [
                {"field": f.field, "similarity": f.similarity, "weight": f.weight,
                 "terms": [{"term": t, "contribution": c} for t, c in f.terms]}
                for f in self.fields
            ],
            "best_phrase": self.best_phrase,
            "corrections": [
                {"original": c.original, "corrected": c.corrected, "similarity": c.similarity}
                for c in self.corrections
            ],
        }
