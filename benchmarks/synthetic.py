"""Deterministic synthetic catalogs of any size, for the scaling run.

Words come from the default catalog's own profiles, so the vocabulary, word lengths and the
tokenizer's work look like the real thing. Each synthetic task draws a few "topic" words that
appear in its title, keywords and phrases, plus filler words from the whole vocabulary; a query
is built from three topic words of one task and two random words, so it has a known answer.
Everything is drawn from `random.Random(seed)`: the same size and seed give the same catalog.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import matcher
from matcher import Catalog
from matcher.text import STOP_WORDS, normalize, tokenize

__all__ = ["SyntheticCatalog", "catalog_vocabulary", "synthetic_catalog"]


@dataclass(frozen=True)
class SyntheticCatalog:
    """A synthetic catalog and labelled queries (text, task id) against it."""

    catalog: Catalog
    queries: tuple[tuple[str, str], ...]


def catalog_vocabulary(catalog: Catalog | None = None) -> list[str]:
    """Sorted content words (alphabetic, 3+ letters, not stop words) of a catalog's profiles."""
    source = catalog if catalog is not None else matcher.default_catalog()
    words: set[str] = set()
    for task in source.profiles():
        texts = [task.title or "", task.description or "", *(t for t, _ in task.keywords), *task.phrases]
        for text in texts:
            words.update(tok for tok in tokenize(normalize(text))
                         if tok.isalpha() and len(tok) >= 3 and tok not in STOP_WORDS)
    return sorted(words)


def synthetic_catalog(n_tasks: int, *, n_queries: int = 200, seed: int = 0,
                      vocabulary: list[str] | None = None) -> SyntheticCatalog:
    """`n_tasks` tasks (4 keywords, 4 phrases, a description each) and `n_queries` queries."""
    words = vocabulary if vocabulary is not None else catalog_vocabulary()
    rng = random.Random(seed)
    used_keywords: set[str] = set()
    used_phrases: set[str] = set()
    records = []
    topics: list[list[str]] = []
    for i in range(n_tasks):
        topic = rng.sample(words, 5)
        topics.append(topic)
        keywords: list[str] = []
        while len(keywords) < 4:
            term = f"{rng.choice(topic)} {rng.choice(words)}"
            if term not in used_keywords and term.split()[0] != term.split()[1]:
                used_keywords.add(term)
                keywords.append(term)
        phrases: list[str] = []
        while len(phrases) < 4:
            body = rng.sample(topic, 3) + rng.sample(words, rng.randint(3, 7))
            rng.shuffle(body)
            phrase = " ".join(body)
            if phrase not in used_phrases:
                used_phrases.add(phrase)
                phrases.append(phrase)
        records.append({
            "id": f"synthetic-{i:05d}",
            "title": " ".join(topic[:3]),
            "description": " ".join(topic + rng.sample(words, 10)),
            "keywords": keywords,
            "phrases": phrases,
        })
    queries = []
    for _ in range(n_queries):
        target = rng.randrange(n_tasks)
        body = rng.sample(topics[target], 3) + rng.sample(words, 2)
        rng.shuffle(body)
        queries.append((" ".join(body), f"synthetic-{target:05d}"))
    return SyntheticCatalog(Catalog.from_records(records, source=f"synthetic-{n_tasks}"), tuple(queries))
