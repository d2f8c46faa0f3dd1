"""Match plain-English job descriptions to the tasks of a benchmark catalog.

>>> import matcher
>>> result = matcher.match("extract key fields from contracts")
>>> result.chosen.task_id if result.matched else None
'contract-key-fields'
"""

from typing import TYPE_CHECKING, Any

from .catalog import Catalog, Task, default_catalog, load_catalog
from .config import FieldWeights, MatcherConfig
from .encoders import OnnxEmbedder
from .engine import Matcher, amatch, default_config, match
from .errors import (
    BatchError,
    CatalogError,
    CatalogWarning,
    ConfigError,
    ConfigWarning,
    FinetuneError,
    LeaderboardError,
    MatcherError,
    QueryError,
    ScopeError,
    SemanticUnavailableError,
    UnknownTaskError,
)
from .results import CandidateExplanation, TaskMatch, TaskMatchCandidate
from .semantic import Embedder, SentenceTransformerEmbedder

if TYPE_CHECKING:
    from .finetune import finetune
    from .tuning import tune


def _installed_version() -> str:
    """The version of the installed `task-matcher` distribution; "0+unknown" when run from a bare source tree."""
    from importlib import metadata

    try:
        return metadata.version("task-matcher")
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _installed_version()

__all__ = [
    "BatchError",
    "CandidateExplanation",
    "Catalog",
    "CatalogError",
    "CatalogWarning",
    "ConfigError",
    "ConfigWarning",
    "Embedder",
    "FieldWeights",
    "FinetuneError",
    "LeaderboardError",
    "Matcher",
    "MatcherConfig",
    "MatcherError",
    "OnnxEmbedder",
    "QueryError",
    "ScopeError",
    "SemanticUnavailableError",
    "SentenceTransformerEmbedder",
    "Task",
    "TaskMatch",
    "TaskMatchCandidate",
    "UnknownTaskError",
    "__version__",
    "amatch",
    "default_catalog",
    "default_config",
    "finetune",
    "load_catalog",
    "match",
    "tune",
]


def __getattr__(name: str) -> Any:
    """`matcher.tune` and `matcher.finetune` are imported on first use: they pull in scipy and torch,
    which `import matcher` avoids."""
    if name == "tune":
        from .tuning import tune

        return tune
    if name == "finetune":
        from .finetune import finetune

        return finetune
    raise AttributeError(f"module 'matcher' has no attribute {name!r}")
