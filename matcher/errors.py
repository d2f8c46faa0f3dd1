"""Exception types raised by the matcher, all under one base class."""

from __future__ import annotations

__all__ = [
    "BatchError",
    "CatalogError",
    "CatalogWarning",
    "ConfigError",
    "ConfigWarning",
    "LeaderboardError",
    "MatcherError",
    "QueryError",
    "ScopeError",
    "SemanticUnavailableError",
    "UnknownTaskError",
]


class MatcherError(Exception):
    """Base class of every error this library raises on purpose."""


class QueryError(MatcherError, ValueError):
    """The query cannot be matched: empty, whitespace-only or too long."""


class CatalogError(MatcherError, ValueError):
    """A catalog file or record is invalid; the message names the file, line, task and field.

    One error reports every problem found: `errors` holds each of them as its own
    `CatalogError` (at least one; a single problem is the error itself), while `source`,
    `line`, `task_id` and `field` describe the first, as they always have.
    """

    def __init__(self, message: str, *, source: str | None = None, task_id: str | None = None,
                 field: str | None = None, line: int | None = None,
                 errors: tuple[CatalogError, ...] = ()) -> None:
        super().__init__(message)
        self.source = source
        self.task_id = task_id
        self.field = field
        self.line = line
        self.errors: tuple[CatalogError, ...] = errors or (self,)


# An unknown id is echoed up to this length (ids are at most 100 characters): a message, and an
# HTTP 404 body, must not grow with whatever was asked for.
_SHOWN_ID_CHARS = 100


class UnknownTaskError(MatcherError, KeyError):
    """A task id is not in the catalog; the message suggests the closest ids."""

    def __init__(self, task_id: str, suggestions: tuple[str, ...] = ()) -> None:
        self.task_id = task_id
        self.suggestions = suggestions
        hint = f"; did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        shown = (repr(task_id) if len(task_id) <= _SHOWN_ID_CHARS
                 else f"{task_id[:_SHOWN_ID_CHARS]!r}... ({len(task_id):,} characters)")
        super().__init__(f"unknown task id {shown}{hint}")

    def __str__(self) -> str:  # KeyError would quote the whole message again
        return str(self.args[0])


class ScopeError(MatcherError, ValueError):
    """A request's scope (`tasks=`, `categories=`) names an id or category the catalog lacks, or
    selects no task; `suggestions` holds the closest ids or categories."""

    def __init__(self, message: str, suggestions: tuple[str, ...] = ()) -> None:
        self.suggestions = suggestions
        hint = f"; did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        super().__init__(message + hint)


class ConfigError(MatcherError, ValueError):
    """A matcher configuration is invalid or a config file cannot be read."""


class LeaderboardError(MatcherError, ValueError):
    """Eval results or a leaderboards file cannot be used; `problems` lists each, with its line."""

    def __init__(self, message: str, *, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems: tuple[str, ...] = problems or (message,)


class BatchError(MatcherError, ValueError):
    """A batch run cannot start or go on: an unreadable input or output, a missing column, a missing
    extra, or an unfinished run of other settings in the way. Bad rows are not errors: they are
    written to the run's errors file."""


class SemanticUnavailableError(MatcherError, ImportError):
    """The semantic backstop was requested but its optional dependencies are missing."""


class ConfigWarning(UserWarning):
    """A config is used where it may not hold, such as one tuned for another catalog."""


class CatalogWarning(UserWarning):
    """A catalog loads but has a problem worth fixing, such as a keyword shared by two tasks."""


class FinetuneError(MatcherError, ValueError):
    """Fine-tuning cannot run or save: bad settings, a catalog with fewer than two tasks, or an output
    folder in the way."""
