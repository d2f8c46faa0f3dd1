"""Request gate: is a text a request for one of the catalog's tasks at all, or only a mention of one?

Shared words make a sentence *about* invoices look like a request *for* invoice extraction:
"print 200 copies of the meeting summary", "does the invoice model run on-prem", "my boss spilled
coffee on the receipts". The gate reads the form of the request instead of its topic: a logistic
regression over the word unigrams and bigrams of the whole text, function words included ("your",
"does", "print", "copies", "honestly"), plus a marker for negated mentions, and, when the semantic
backstop is on, the sentence embedding of the request. `tune` fits it on the labelled queries and
the catalog's own phrases (out-of-scope profiles as negatives); the engine commits to a ``high``
answer only when the gate's probability reaches `MatcherConfig.gate_threshold`.

The model is a plain mapping of term to weight (and one weight per embedding dimension), so
scoring needs no scikit-learn, every process computes the same exactly rounded sum (`math.fsum`),
and `evidence` names the words that weighed most.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import ConfigError
from .text import STOP_WORDS, split_negated, stem, tokenize

__all__ = ["NEGATED_MARKER", "RequestGate", "fit_gate", "gate_terms"]

NEGATED_MARKER = "<negated>"
_WEIGHT_DECIMALS = 4
_PROBABILITY_DECIMALS = 4


def _names_something(term: str) -> bool:
    """Whether a gate term holds a content word (not only stop words, numbers or the negation marker)."""
    return any(word not in STOP_WORDS and not word.isdigit() and word != NEGATED_MARKER
               for word in term.split(" "))


def gate_terms(normalized: str) -> list[str]:
    """Distinct stemmed unigrams and bigrams of every word (stop words too), and the negation marker."""
    stems = [stem(token) for token in tokenize(normalized)]
    terms = set(stems)
    terms.update(f"{a} {b}" for a, b in itertools.pairwise(stems))
    if split_negated(normalized)[1]:
        terms.add(NEGATED_MARKER)
    return sorted(terms)


@dataclass(frozen=True)
class RequestGate:
    """A linear model over `gate_terms`: ``P(request) = sigmoid(intercept + sum of term weights)``."""

    intercept: float
    weights: Mapping[str, float] = field(default_factory=dict)
    embedding: tuple[float, ...] | None = None

    @property
    def reads_embeddings(self) -> bool:
        """Whether the gate also weighs the request's sentence embedding."""
        return self.embedding is not None

    def logit(self, normalized: str, vector: Sequence[float] | npt.NDArray[np.float32] | None = None) -> float:
        """The model's log-odds that `normalized` (embedded as `vector`) asks for a catalog task."""
        parts = [self.intercept, *(self.weights.get(term, 0.0) for term in gate_terms(normalized))]
        if self.embedding is not None:
            if vector is None or len(vector) != len(self.embedding):
                raise ValueError(f"this gate reads {len(self.embedding)}-dimensional request embeddings; "
                                 "it needs the semantic backstop")
            # numpy's float64 products are Python's, and fsum rounds their exact sum once, whatever the order
            parts.extend((self._embedding_weights * np.asarray(vector, dtype=np.float64)).tolist())
        return math.fsum(parts)

    @functools.cached_property
    def _embedding_weights(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.embedding, dtype=np.float64)

    def probability(self, normalized: str,
                    vector: Sequence[float] | npt.NDArray[np.float32] | None = None) -> float:
        """Probability, rounded so that every process compares the same number with the threshold."""
        return round(1.0 / (1.0 + math.exp(-min(max(self.logit(normalized, vector), -60.0), 60.0))),
                     _PROBABILITY_DECIMALS)

    def evidence(self, normalized: str, *, limit: int = 3) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The terms that weighed most against and for a request, strongest first (ties by term).

        Terms made only of function words or numbers ("the", "of the", "200") weigh too, but
        explain nothing to a reader, so they are named only when nothing else weighed.
        """
        present = [(term, self.weights[term]) for term in gate_terms(normalized) if term in self.weights]
        telling = [(term, weight) for term, weight in present if _names_something(term)]
        present = telling or present
        against = sorted((item for item in present if item[1] < 0), key=lambda item: (item[1], item[0]))
        for_it = sorted((item for item in present if item[1] > 0), key=lambda item: (-item[1], item[0]))
        return (tuple(term for term, _ in against[:limit]), tuple(term for term, _ in for_it[:limit]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, terms sorted."""
        body: dict[str, Any] = {"intercept": self.intercept, "weights": dict(sorted(self.weights.items()))}
        if self.embedding is not None:
            body["embedding"] = list(self.embedding)
        return body

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<config>") -> RequestGate:
        """The gate saved by `to_dict`; anything else is a `ConfigError`."""
        try:
            intercept = float(data["intercept"])
            weights = {str(term): float(weight) for term, weight in dict(data["weights"]).items()}
            raw_embedding = data.get("embedding")
            embedding = None if raw_embedding is None else tuple(float(w) for w in raw_embedding)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: gate must be {{'intercept': number, 'weights': {{term: number}}, "
                              f"optional 'embedding': [number, ...]}}: {exc}") from None
        if not all(math.isfinite(w) for w in (intercept, *weights.values(), *(embedding or ()))):
            raise ConfigError(f"{source}: gate weights must be finite numbers")
        return cls(intercept=intercept, weights=weights, embedding=embedding)


def fit_gate(texts: Sequence[str], is_request: Sequence[bool] | npt.NDArray[np.bool_], *,
             vectors: npt.NDArray[np.float32] | None = None,
             sample_weight: Sequence[float] | npt.NDArray[np.float64] | None = None,
             regularization: float = 1.0, min_count: int = 2) -> RequestGate:
    """Fit the gate on normalized texts; deterministic (L-BFGS, fixed tolerance, rounded weights).

    Only terms seen in at least `min_count` texts are features; weights are rounded to 4 decimals
    and terms whose weight rounds to zero are dropped, so the saved model is small and the same on
    every machine up to that rounding.
    """
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(is_request, dtype=bool)
    if labels.all() or not labels.any():
        raise ValueError("the gate needs both requests and non-requests to learn from")
    vectorizer = CountVectorizer(analyzer=gate_terms, binary=True, min_df=min_count)
    features = vectorizer.fit_transform(list(texts))
    if vectors is not None:
        features = sp.hstack([features, sp.csr_matrix(np.asarray(vectors, dtype=np.float64))]).tocsr()
    weights: npt.NDArray[np.float64] = (np.ones(len(labels)) if sample_weight is None
                                        else np.asarray(sample_weight, dtype=np.float64))
    model = LogisticRegression(C=regularization, solver="lbfgs", tol=1e-8, max_iter=10_000)
    model.fit(features, labels, sample_weight=weights)
    terms = vectorizer.get_feature_names_out()
    coefficients = model.coef_[0]
    rounded = {str(term): round(float(w), _WEIGHT_DECIMALS)
               for term, w in zip(terms, coefficients[: len(terms)], strict=True)}
    embedding = (None if vectors is None
                 else tuple(round(float(w), _WEIGHT_DECIMALS) for w in coefficients[len(terms):]))
    return RequestGate(intercept=round(float(model.intercept_[0]), _WEIGHT_DECIMALS),
                       weights={term: w for term, w in rounded.items() if w != 0.0}, embedding=embedding)
