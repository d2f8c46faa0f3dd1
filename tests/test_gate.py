"""Request gate: terms, fitting, scoring, explanation and (de)serialisation."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from matcher import ConfigError, MatcherConfig
from matcher.gate import NEGATED_MARKER, RequestGate, fit_gate, gate_terms
from matcher.text import normalize

REQUESTS = ["extract the totals from these invoices", "classify each support ticket by team",
            "transcribe the call recordings", "translate the manual into german",
            "pull names and dates out of the contracts", "detect spam in the comments"]
REMARKS = ["print the invoices and file them in the cabinet", "how much does your api cost per month",
           "my boss spilled coffee on the receipts", "does your service run on premises",
           "shred the old contracts please", "lol the call was so long today"]


@pytest.fixture(scope="module")
def gate() -> RequestGate:
    texts = [normalize(t) for t in REQUESTS + REMARKS]
    return fit_gate(texts, [True] * len(REQUESTS) + [False] * len(REMARKS), min_count=1)


def test_terms_are_stemmed_unigrams_bigrams_and_a_negation_marker() -> None:
    assert gate_terms("print invoices") == ["invoic", "print", "print invoic"]
    assert NEGATED_MARKER in gate_terms("not sentiment, which product is it about")
    assert NEGATED_MARKER not in gate_terms("which product is it about")


def test_the_gate_separates_requests_from_remarks_it_learned(gate: RequestGate) -> None:
    assert all(gate.probability(normalize(t)) > 0.5 for t in REQUESTS)
    assert all(gate.probability(normalize(t)) < 0.5 for t in REMARKS)


def test_evidence_names_the_words_that_weighed_against_a_request(gate: RequestGate) -> None:
    against, for_it = gate.evidence(normalize("print the invoices and file them"))
    assert against == ("and file", "file", "file them")  # strongest first, ties by term
    assert all(gate.weights[t] < 0 for t in against)
    assert all(gate.weights[t] > 0 for t in for_it)


def test_fitting_is_deterministic_and_round_trips_through_json(gate: RequestGate) -> None:
    again = fit_gate([normalize(t) for t in REQUESTS + REMARKS], [True] * len(REQUESTS) + [False] * len(REMARKS),
                     min_count=1)
    assert again == gate
    restored = RequestGate.from_dict(json.loads(json.dumps(gate.to_dict())))
    assert restored == gate
    config = MatcherConfig(gate=gate.to_dict(), gate_threshold=0.5)
    assert MatcherConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_a_broken_gate_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="gate must be"):
        MatcherConfig(gate={"weights": {}})
    with pytest.raises(ConfigError, match="finite"):
        MatcherConfig(gate={"intercept": float("nan"), "weights": {}})
    with pytest.raises(ValueError, match="both requests and non-requests"):
        fit_gate(["a b", "c d"], [True, True])


@given(st.text(max_size=300))
def test_probability_is_a_rounded_number_in_the_unit_interval(gate: RequestGate, text: str) -> None:
    value = gate.probability(normalize(text))
    assert 0.0 <= value <= 1.0
    assert round(value, 4) == value


@given(st.lists(st.floats(-1.0, 1.0, width=32), min_size=8, max_size=8),
       st.lists(st.floats(-5.0, 5.0), min_size=8, max_size=8))
def test_an_embedding_gate_sums_its_products_exactly(vector: list[float], weights: list[float]) -> None:
    import math

    import numpy as np

    gate = RequestGate(intercept=0.25, weights={"invoic": 1.5}, embedding=tuple(weights))
    embedded = np.asarray(vector, dtype=np.float32)
    exact = math.fsum([0.25, 1.5, *(w * float(v) for w, v in zip(weights, embedded, strict=True))])
    assert gate.logit("invoices", embedded) == exact
