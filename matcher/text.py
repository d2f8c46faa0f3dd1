"""Unicode-aware text normalization, tokenization and light stemming shared by every scorer.

The same functions run on catalog profiles and on queries, so a term means the same thing on
both sides. Everything here is pure and deterministic.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

__all__ = ["STOP_WORDS", "content_terms", "normalize", "split_negated", "stem", "tokenize"]

# Format characters (zero-width spaces and joiners, bidi marks, BOM) vanish, so "in\u200bvoice"
# still reads "invoice"; controls and other invisible characters become spaces, so "a\x00b"
# cannot glue two words.
_DROPPED_CATEGORIES = frozenset({"Cf"})
_BLANKED_CATEGORIES = frozenset({"Cc", "Cs", "Co", "Cn", "Zl", "Zp"})
_WHITESPACE = re.compile(r"\s+")
_TOKEN = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")

# Function words and request filler ("I need to", "please help me"): they carry no task signal.
# Kept small and explicit; scikit-learn's list drops words such as "bill", "name" and "call"
# that matter here.
STOP_WORDS: frozenset[str] = frozenset(
    """
    a about above after again against all also am an and any are as at be because been
    before being below between both but by can could did do does doing done down during each
    either else etc ever every few for from further get gets getting give given go going got
    had has have having he her here hers him his how i if in into is it its itself just let
    lets like may me might mine more most much must my myself need needs no nor not now of
    off on once one only or other our ours ourselves out over own per please really same
    shall she should so some someone something such than that the their theirs them then
    there these they this those through to too under until up upon us use used using very
    via want wanted wants was we were what when where whether which while who whom whose why
    will with within without would you your yours yourself yourselves help helps able thing
    things stuff way ways kind sort lot lots basically actually just maybe pretty quite i'd
    i'm i've we'd we're we've let's don't can't won't it's that's what's
    """.split()
)


def normalize(text: str) -> str:
    """NFKC-fold, casefold, blank out invisible and control characters, collapse whitespace."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    if not folded.isascii() or not folded.isprintable():
        folded = "".join(_visible(ch) for ch in folded)
    elif "  " not in folded:  # printable ASCII holds no whitespace but single spaces: nothing to collapse
        return folded.strip()
    return _WHITESPACE.sub(" ", folded).strip()


def _visible(ch: str) -> str:
    category = unicodedata.category(ch)
    if category in _DROPPED_CATEGORIES:
        return ""
    return " " if category in _BLANKED_CATEGORIES else ch


def tokenize(normalized: str) -> list[str]:
    """Word tokens of already-normalized text: runs of letters and digits; hyphens split words."""
    tokens: list[str] = _TOKEN.findall(normalized)
    return [tok.replace("’", "'") for tok in tokens] if "’" in normalized else tokens


@lru_cache(maxsize=65536)
def stem(token: str) -> str:
    """Conservative English suffix stripping so that plural, -ing, -ed and -ion forms meet."""
    word = token
    if len(word) <= 3 or not word.isalpha():
        return word
    for suffix, replacement in (
        ("ifications", "ify"),
        ("ification", "ify"),
        ("izations", "iz"),
        ("ization", "iz"),
        ("isations", "iz"),
        ("isation", "iz"),
    ):
        if word.endswith(suffix):
            return word[: -len(suffix)] + replacement
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("sses") or word.endswith(("ches", "shes", "xes", "zes")):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    if word.endswith("tions"):
        word = word[:-4]
    elif word.endswith("tion") and len(word) > 5:
        word = word[:-3]
    elif word.endswith("ing") and len(word) > 5:
        word = word[:-3]
        if len(word) > 2 and word[-1] == word[-2] and word[-1] not in "lsz":
            word = word[:-1]
    elif word.endswith("ed") and len(word) > 4:
        word = word[:-2]
        if len(word) > 2 and word[-1] == word[-2] and word[-1] not in "lsz":
            word = word[:-1]
    elif word.endswith("izes") or word.endswith("ises"):
        word = word[:-3] + "z"
    if word.endswith("ise") or word.endswith("ize"):
        word = word[:-3] + "iz"
    elif word.endswith("e") and len(word) > 4:
        word = word[:-1]
    return word


def content_terms(normalized: str) -> list[str]:
    """Stemmed tokens of normalized text with stop words removed, in text order."""
    return [stem(tok) for tok in tokenize(normalized) if tok not in STOP_WORDS]


# A negated or contrasted mention ("not sentiment", "no need to translate the tickets", "instead
# of a summary") names a task the user does NOT want. It runs from the cue to the end of its
# clause: punctuation, or a word that turns to what the user does want ("just", "only", "but").
# A clause that ends in a verdict ("one label per image isn't enough", "a single function call
# won't cut it") rules out what it names before the verdict, so it is set aside whole.
_APOSTROPHE = "['’]"
_NEGATION_CUE = (
    rf"(?:not|don{_APOSTROPHE}?t|do not|does not|doesn{_APOSTROPHE}t|isn{_APOSTROPHE}t|aren{_APOSTROPHE}t|"
    rf"wasn{_APOSTROPHE}t|weren{_APOSTROPHE}t|no need (?:to|for)|no longer need|won{_APOSTROPHE}t need|"
    r"will not need|never mind|instead of|rather than|other than|forget about)"
)
_VERDICT = (
    rf"(?:isn{_APOSTROPHE}t|is not|aren{_APOSTROPHE}t|are not|won{_APOSTROPHE}t|will not|doesn{_APOSTROPHE}t|"
    rf"does not|not)\s+(?:enough|sufficient|cut it|do|suffice|what (?:i|we) (?:need|want))\b"
)
_NEGATED_SPAN = re.compile(
    rf"(?:^|(?<=[.,;:!?]))[^.,;:!?]*?\b{_VERDICT}"
    rf"|\b{_NEGATION_CUE}\b(?:(?![.,;:!?()]|\b(?:just|only|but|instead|rather|we|i)\b).)*"
    r"|\bno\b(?:(?![.,;:!?()]).){1,40}?\b(?:needed|required|necessary)\b"
)


_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([,.;:!?])")
_REPEATED_PUNCTUATION = re.compile(r"([,.;:!?])(?:\s*[,.;:!?])+")


@lru_cache(maxsize=256)  # the engine and the request gate both read each query's split
def split_negated(normalized: str) -> tuple[str, tuple[str, ...]]:
    """The request with negated or contrasted mentions removed, and those mentions.

    "not sentiment, which product is each review about" asks for the product, not for sentiment;
    scoring the words of "not sentiment" would rank the task the user ruled out first. When
    nothing but negated words remains, the text is kept whole: there is no other request to read.
    """
    spans = tuple(match.group(0).strip() for match in _NEGATED_SPAN.finditer(normalized))
    if not spans:
        return normalized, ()
    kept = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", _WHITESPACE.sub(" ", _NEGATED_SPAN.sub(" ", normalized)))
    kept = _REPEATED_PUNCTUATION.sub(r"\1", kept)
    kept = kept.strip(" ,.;:!?")
    if not content_terms(kept):
        return normalized, ()
    return kept, spans
