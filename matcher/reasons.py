"""Plain-sentence reasons for a match outcome, built deterministically from what matched."""

from __future__ import annotations

from collections.abc import Sequence

from .catalog import Task
from .results import FuzzyCorrection

__all__ = ["outcome_reasoning"]

_MAX_WORDS = 4


def _quoted(words: Sequence[str]) -> str:
    shown = [f"'{w}'" for w in words[:_MAX_WORDS]]
    if len(shown) == 1:
        return shown[0]
    return ", ".join(shown[:-1]) + " and " + shown[-1]


def _name(task: Task) -> str:
    return f"{task.title} ({task.id})" if task.title else task.id


def outcome_reasoning(*, kind: str, profile: Task | None, words: Sequence[str], score: float,
                      matcher: str, similarity: float | None, runner_up: Task | None,
                      corrections: Sequence[FuzzyCorrection],
                      not_a_request: Sequence[str] | None = None, negated: Sequence[str] = ()) -> str:
    """One to three sentences: what the outcome is, which words supported it, and any caveat.

    `not_a_request` holds the words that made the request gate judge the text a mention of a
    task rather than a request for one (None when the gate did not decide the outcome);
    `negated` the mentions the user ruled out ("not sentiment"), which were not scored.
    """
    sentences: list[str] = []
    if not_a_request is not None:
        cue = (f" (the {'word' if len(not_a_request) == 1 else 'words'} {_quoted(not_a_request)} "
               "weigh against it)") if not_a_request else ""
        closest = f"; the closest task is {_name(profile)} with score {score:.2f}" if profile is not None else ""
        sentences.append(f"This reads as a remark, question or action that is not a request for a catalog "
                         f"task{cue}, so nothing matched{closest}.")
        if negated:
            sentences.append(f"Ruled out by the request and not scored: {_quoted(negated)}.")
        return " ".join(sentences)
    if len(words) == 1:
        evidence = f"the request's word {_quoted(words)} appears in its profile"
    else:
        evidence = f"the request's words {_quoted(words)} appear in its profile" if words else ""
    if kind == "unsupported" and profile is not None:
        label = (profile.title or profile.id).lower()
        sentences.append(f"This reads as {label}, which no task in the catalog covers.")
        if words:
            sentences.append(f"The {'word' if len(words) == 1 else 'words'} {_quoted(words)} point"
                             f"{'s' if len(words) == 1 else ''} there.")
    elif kind in ("task", "capability") and profile is not None:
        lead = ("No specific benchmark task fits, but the general lane " if kind == "capability"
                else "")
        if matcher == "semantic" and similarity is not None:
            why = (f"it is closest in meaning (similarity {similarity:.2f}) to its example requests"
                   + (f", and {evidence}" if evidence else ""))
        else:
            why = evidence or "its profile is the closest to the request"
        subject = f"{lead}{_name(profile)}" if lead else _name(profile)
        sentences.append(f"{subject[0].upper()}{subject[1:]} fits with score {score:.2f}: {why}.")
    elif profile is None or (not words and matcher == "keyword"):
        sentences.append("None of the request's words appear in any task profile, so nothing matched.")
    else:
        detail = f", sharing {_quoted(words)}" if words else ""
        sentences.append(
            f"No task matched with confidence; the closest is {_name(profile)} "
            f"with score {score:.2f}{detail}."
        )
    if runner_up is not None and kind in ("task", "capability", "none") and len(sentences) < 3:
        sentences.append(f"{_name(runner_up)} scored almost as high, so the request is ambiguous.")
    if negated and len(sentences) < 3:
        sentences.append(f"Ruled out by the request and not scored: {_quoted(negated)}.")
    if corrections and len(sentences) < 3:
        fixes = ", ".join(f"'{c.original}' as '{c.corrected}'" for c in corrections[:3])
        sentences.append(f"Read {fixes}.")
    return " ".join(sentences)
