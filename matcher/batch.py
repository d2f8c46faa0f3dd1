"""Batch matching of a file of requests: `task-matcher batch IN OUT`, resumable, on worker processes or Ray.

Every row is matched with `Matcher.match`, one query at a time exactly as `match_many` does, so a
row's result does not depend on the worker, the batch it travelled in or a resume. (Encoding
several queries in one call would be faster, but ONNX Runtime's batched vectors differ from
one-by-one vectors in the last bits, so each query is encoded on its own.) The parent reads the
input and writes the output in input order; `workers` processes each hold their own `Matcher`
and share the on-disk embedding cache (the first to start fills it, the others read it), or a
Ray cluster's actors do (`matcher.ray`).

A run keeps a journal in ``OUT.batch/``: how many rows are done and the byte offsets of the
output, errors and unmatched files at the last commit (every `checkpoint_rows` rows or
`_COMMIT_SECONDS`). Files are synced before the journal is replaced, so after a crash the same
command truncates every file to its committed offset and goes on from the next row: no row is
lost or written twice. Rows that cannot be matched go to the errors file with the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import signal
import textwrap
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from .batchio import (
    InputFile,
    InputRow,
    JsonlWriter,
    ParquetParts,
    inspect_input,
    output_format,
    read_rows,
    text_problem,
)
from .cachefiles import write_atomically
from .engine import Matcher
from .errors import BatchError, QueryError
from .generation import Generation

__all__ = ["BatchOptions", "BatchSummary", "Outcome", "engine_identity", "match_text", "render_summary",
           "run_batch"]

Semantic = bool | Literal["auto", "onnx", "torch"]
JOURNAL_FORMAT = "task-matcher-batch"
JOURNAL_VERSION = 1
_COMMIT_SECONDS = 10.0
_ERROR_TEXT_CHARS = 200
_WRAP = 100
_WINDOW_PER_WORKER = 4  # chunks in flight per worker process: enough to keep it busy, bounded memory


@dataclass(frozen=True)
class BatchOptions:
    """What `run_batch` reads, writes and matches with.

    `errors` defaults to ``OUT`` with the suffix ``.errors.jsonl``; `unmatched`, when given, is
    where the requests that got ``type: none`` are written, grouped by nearest task. `workers` is
    the number of processes (default 1: in this process), or of Ray actors with `ray` (default:
    one per CPU of the cluster). `ray` is a cluster address, ``"auto"`` (the cluster already
    running on this machine) or ``"local"`` (a private instance for this run).
    """

    input: Path
    output: Path
    text_column: str = "text"
    id_column: str | None = None
    catalog: Path | None = None
    config: Path | None = None
    top_k: int = 5
    semantic: Semantic = "auto"
    threads: int | None = None
    cache_dir: Path | None = None
    workers: int | None = None
    batch_size: int = 256
    checkpoint_rows: int = 10_000
    errors: Path | None = None
    unmatched: Path | None = None
    ray: str | None = None
    overwrite: bool = False

    @property
    def errors_path(self) -> Path:
        return self.errors if self.errors is not None else self.output.with_suffix(".errors.jsonl")

    @property
    def state_dir(self) -> Path:
        """The folder of an unfinished run's journal (and Parquet parts), removed when the run ends."""
        return self.output.with_name(f"{self.output.name}.batch")


@dataclass(frozen=True)
class Outcome:
    """One row's fate: its result record (``id`` and the `TaskMatch.to_dict()` fields) or why it has none."""

    row: int
    line: int | None
    id: str | int | None
    record: dict[str, Any] | None
    error: str | None = None
    text: str | None = None


@dataclass
class BatchSummary:
    """Counts of a finished run: rows, results and errors; results by `type`, by `matcher` and matched
    rows by task; the requests written to the unmatched file; where everything went; and timings:
    the whole run, and when the first results (how many rows) came back, start-up done."""

    rows: int = 0
    results: int = 0
    errors: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    by_matcher: dict[str, int] = field(default_factory=dict)
    by_task: dict[str, int] = field(default_factory=dict)
    unmatched: int = 0
    resumed_at: int = 0
    seconds: float = 0.0
    first_result_seconds: float | None = None
    first_result_rows: int = 0
    engine: str | None = None
    output: str = ""
    errors_file: str = ""
    unmatched_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def engine_identity(matcher: Matcher) -> str:
    """The model and settings a matcher scores with: rows of one output must all share it."""
    model = matcher.model_id or "keyword-only"
    config = json.dumps(matcher.config.to_dict(), sort_keys=True).encode("utf-8")
    return f"{model}, config {hashlib.sha256(config).hexdigest()[:12]}"


def match_text(matcher: Matcher, text: object, top_k: int) -> tuple[dict[str, Any] | None, str | None]:
    """`matcher.match(text, top_k).to_dict()`, or None and the reason the text cannot be matched."""
    problem = text_problem(text)
    if problem is not None:
        return None, problem
    assert isinstance(text, str)
    try:
        return matcher.match(text, top_k).to_dict(), None
    except QueryError as exc:
        return None, str(exc)


def match_rows(matcher: Matcher, rows: Sequence[InputRow], top_k: int) -> list[Outcome]:
    """Each row's `Outcome`, in order: rows that already carry a problem are passed through."""
    outcomes = []
    for row in rows:
        if row.error is not None:
            outcomes.append(_failed(row, row.error))
            continue
        result, problem = match_text(matcher, row.text, top_k)
        if result is None:
            outcomes.append(_failed(row, problem or "not matched"))
        else:
            outcomes.append(Outcome(row.row, row.line, row.id, {"id": row.id, **result}))
    return outcomes


def _failed(row: InputRow, reason: str) -> Outcome:
    text = row.text[:_ERROR_TEXT_CHARS] if isinstance(row.text, str) else None
    return Outcome(row.row, row.line, row.id, None, reason, text)


def build_matcher(generation: Generation, *, semantic: Semantic, cache_dir: Path | None,
                  threads: int | None) -> Matcher:
    """The matcher of a worker: the parent's catalog and config, the run's semantic option."""
    return Matcher(generation.catalog, semantic=semantic, config=generation.config, cache_dir=cache_dir,
                   threads=threads)


Chunk = tuple[str | None, list[Outcome]]
"""A worker's answer for one chunk of rows: its engine identity (None: no row was matched) and the
outcomes in row order."""


class _InProcess:
    """One matcher in this process."""

    def __init__(self, generation: Generation, options: BatchOptions) -> None:
        self._matcher = build_matcher(generation, semantic=options.semantic, cache_dir=options.cache_dir,
                                      threads=options.threads)
        self._matcher.warm_up()
        self._engine = engine_identity(self._matcher)
        self._top_k = options.top_k

    def map(self, chunks: Iterable[list[InputRow]]) -> Iterator[Chunk]:
        for chunk in chunks:
            yield self._engine, match_rows(self._matcher, chunk, self._top_k)

    def close(self) -> None:
        pass


_WORKER: tuple[Matcher, str, int] | BaseException | None = None


def _start_worker(payload: dict[str, Any], fingerprint: str, semantic: Semantic, cache_dir: Path | None,
                  threads: int | None, top_k: int, warm_up_lock: Any) -> None:
    """Initializer of a worker process: its own matcher, warmed up one worker at a time, so the first
    fills the embedding cache and the others read it. Ctrl-C is the parent's to handle."""
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        generation = Generation.from_payload(payload, fingerprint=fingerprint, source="the batch run's catalog")
        matcher = build_matcher(generation, semantic=semantic, cache_dir=cache_dir, threads=threads)
        with warm_up_lock:
            matcher.warm_up()
        _WORKER = (matcher, engine_identity(matcher), top_k)
    except BaseException as exc:  # raised again with the first chunk, where the parent sees it
        _WORKER = exc


def _match_chunk(rows: list[InputRow]) -> Chunk:
    if isinstance(_WORKER, BaseException):
        raise _WORKER
    assert _WORKER is not None
    matcher, engine, top_k = _WORKER
    return engine, match_rows(matcher, rows, top_k)


class _Processes:
    """`workers` processes, each with its own matcher; chunks come back in the order they were sent."""

    def __init__(self, generation: Generation, options: BatchOptions, workers: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")  # no inherited threads, locks or model sessions
        self._pool = ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_worker,
            initargs=(generation.to_payload(), generation.fingerprint, options.semantic, options.cache_dir,
                      options.threads, options.top_k, context.Lock()))
        self._window = workers * _WINDOW_PER_WORKER

    def map(self, chunks: Iterable[list[InputRow]]) -> Iterator[Chunk]:
        pending: deque[Any] = deque()
        for chunk in chunks:
            pending.append(self._pool.submit(_match_chunk, chunk))
            if len(pending) >= self._window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _chunks(rows: Iterator[InputRow], size: int) -> Iterator[list[InputRow]]:
    chunk: list[InputRow] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Progress:
    """Rows done of the total, the rate since the first result of this run, and the time left, on stderr.

    On a terminal the line is redrawn in place a few times a second; elsewhere (a log file) one line
    is printed every `_LOG_SECONDS`. The last line gives the rate over the whole run, start-up included.
    """

    _TTY_SECONDS = 0.25
    _LOG_SECONDS = 10.0

    def __init__(self, total: int, done: int, stream: IO[str] | None) -> None:
        self._total, self._stream = total, stream
        self._tty = stream is not None and stream.isatty()
        self._start = (done, time.monotonic())
        self._since: tuple[int, float] | None = None  # rows done and time at the first result
        self._last = 0.0

    def update(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if self._since is None and not final:
            self._since, self._last = (done, now), now
            return
        if self._stream is None or (not final and now - self._last < (self._TTY_SECONDS if self._tty
                                                                        else self._LOG_SECONDS)):
            return
        self._last = now
        rows, since = self._start if final or self._since is None else self._since
        rate = (done - rows) / (now - since) if now > since else 0.0
        share = 100.0 * done / self._total if self._total else 100.0
        line = f"batch: {done:,}/{self._total:,} rows ({share:.1f}%), {rate:,.0f} rows/s"
        if final:
            line += f" over {_clock(now - self._start[1])}, done"
        else:
            line += f", ETA {'--:--:--' if rate <= 0 else _clock((self._total - done) / rate)}"
        with contextlib.suppress(OSError, ValueError):
            self._stream.write(f"\r{line}\x1b[K" if self._tty else f"{line}\n")
            if final and self._tty:
                self._stream.write("\n")
            self._stream.flush()


def _clock(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


@dataclass
class _Journal:
    """The committed state of an unfinished run (see the module docstring)."""

    settings: dict[str, Any]
    rows_done: int = 0
    output_bytes: int = 0
    output_parts: int = 0
    errors_bytes: int = 0
    unmatched_bytes: int = 0
    engine: str | None = None
    counts: dict[str, dict[str, int]] = field(default_factory=lambda: {
        "totals": {}, "by_type": {}, "by_matcher": {}, "by_task": {}})

    def save(self, path: Path) -> None:
        data = {"format": JOURNAL_FORMAT, "version": JOURNAL_VERSION, **asdict(self)}
        write_atomically(path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"), durable=True)

    @classmethod
    def load(cls, path: Path) -> _Journal:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.pop("format") != JOURNAL_FORMAT or data.pop("version") != JOURNAL_VERSION:
                raise ValueError("not a journal of this version")
            return cls(**data)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BatchError(f"{path}: the journal of an unfinished run is unreadable ({exc}): start over with "
                             "--overwrite") from None


def _settings(options: BatchOptions, source: InputFile, generation: Generation) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (the worker count and Ray are free)."""
    return {"input": {"path": str(source.path.resolve()), "format": source.format, "rows": source.rows,
                      "sha256": source.digest},
            "generation": generation.fingerprint, "semantic": options.semantic, "top_k": options.top_k,
            "text_column": options.text_column, "id_column": options.id_column,
            "output": str(options.output.resolve()), "errors": str(options.errors_path.resolve()),
            "unmatched": None if options.unmatched is None else str(options.unmatched.resolve())}


def _check_options(options: BatchOptions) -> None:
    for name in ("top_k", "batch_size", "checkpoint_rows"):
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BatchError(f"{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
    if options.workers is not None and (isinstance(options.workers, bool) or not isinstance(options.workers, int)
                                        or options.workers < 1):
        raise BatchError(f"workers must be an integer >= 1, got {options.workers!r}")
    paths = [options.output, options.errors_path, options.state_dir]
    if options.unmatched is not None:
        paths.append(options.unmatched)
    resolved = [path.resolve() for path in paths]
    if options.input.resolve() in resolved or len(set(resolved)) < len(resolved):
        raise BatchError("the input, output, errors and unmatched files must be four different files")


def _lock(state_dir: Path) -> IO[str]:
    """Hold the run's lock file: two runs writing one output would interleave their rows."""
    state_dir.mkdir(parents=True, exist_ok=True)
    handle = (state_dir / "lock").open("w")
    try:
        import fcntl
    except ImportError:  # no advisory locks here: nothing to hold
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise BatchError(f"{state_dir}: another batch run is writing this output") from None
    return handle


def _start_over(options: BatchOptions) -> None:
    for path in (options.output, options.errors_path, options.unmatched):
        if path is not None and path.exists():
            path.unlink()
    shutil.rmtree(options.state_dir, ignore_errors=True)


def _refuse_to_overwrite(options: BatchOptions) -> None:
    """A new run (no journal) must not replace the results of a finished one unless told to."""
    if (options.state_dir / "journal.json").is_file():
        return
    for existing in (options.output, options.errors_path, options.unmatched):
        if existing is not None and existing.exists():
            raise BatchError(f"{existing} exists: pass --overwrite to replace it")


def _journal(options: BatchOptions, settings: dict[str, Any]) -> _Journal:
    """The journal to go on from: the unfinished run's, or a new one."""
    path = options.state_dir / "journal.json"
    if path.is_file():
        journal = _Journal.load(path)
        if journal.settings != settings:
            differ = sorted(key for key in settings.keys() | journal.settings.keys()
                            if settings.get(key) != journal.settings.get(key))
            raise BatchError(f"{options.output} has an unfinished run with other settings (they differ in: "
                             f"{', '.join(differ)}): run the same command again to finish it, or start over with "
                             "--overwrite")
        return journal
    journal = _Journal(settings)
    journal.save(path)
    return journal


class _Sinks:
    """The output, errors and unmatched files of a run, opened at the journal's committed offsets."""

    def __init__(self, options: BatchOptions, journal: _Journal, source: InputFile) -> None:
        self.parquet = output_format(options.output) == "parquet"
        self.output: JsonlWriter | ParquetParts = (
            ParquetParts(options.state_dir / "parts", source.id_type, journal.output_parts) if self.parquet
            else JsonlWriter(options.output, journal.output_bytes))
        self.errors = JsonlWriter(options.errors_path, journal.errors_bytes)
        self.unmatched = (JsonlWriter(options.state_dir / "unmatched.jsonl", journal.unmatched_bytes)
                          if options.unmatched is not None else None)

    def write(self, outcomes: Sequence[Outcome], counts: dict[str, Counter[str]]) -> None:
        records = [o.record for o in outcomes if o.record is not None]
        self.output.write(records)
        self.errors.write([{"row": o.row, "line": o.line, "id": o.id, "reason": o.error, "text": o.text}
                           for o in outcomes if o.record is None])
        for record in records:
            counts["by_type"][record["type"]] += 1
            counts["by_matcher"][record["matcher"]] += 1
            if record["chosen"] is not None:
                counts["by_task"][record["chosen"]["task_id"]] += 1
        counts["totals"]["results"] += len(records)
        counts["totals"]["errors"] += len(outcomes) - len(records)
        if self.unmatched is not None:
            unmatched = [{"id": r["id"], "text": r["query"], "nearest": r["candidates"][0]["task_id"],
                          "score": r["candidates"][0]["score"]} for r in records if r["type"] == "none"]
            self.unmatched.write(unmatched)
            counts["totals"]["unmatched"] += len(unmatched)

    def commit(self, journal: _Journal) -> None:
        if isinstance(self.output, ParquetParts):
            journal.output_parts = self.output.commit()
        else:
            journal.output_bytes = self.output.commit()
        journal.errors_bytes = self.errors.commit()
        if self.unmatched is not None:
            journal.unmatched_bytes = self.unmatched.commit()

    def close(self) -> None:
        for sink in (self.output, self.errors, self.unmatched):
            if sink is not None:
                sink.close()


def _executor(generation: Generation, options: BatchOptions) -> _InProcess | _Processes | Any:
    if options.ray is not None:
        from .ray import RayExecutor

        return RayExecutor(generation, options)
    workers = options.workers or 1
    return _InProcess(generation, options) if workers == 1 else _Processes(generation, options, workers)


def run_batch(options: BatchOptions, *, progress: IO[str] | None = None,
              on_resume: Callable[[int, int], None] | None = None) -> BatchSummary:
    """Match every row of `options.input` and write the results, errors and unmatched requests.

    Resumes an unfinished run of the same settings; `on_resume(done, total)` is told where it
    starts. `progress` is the stream of the progress line (None: no progress). Raises
    `BatchError` (or `CatalogError`, `ConfigError`) before any row is matched when the files,
    columns or settings are unusable.
    """
    started = time.monotonic()
    _check_options(options)
    output_format(options.output)
    generation = Generation.load(options.catalog, options.config)
    source = inspect_input(options.input, text_column=options.text_column, id_column=options.id_column)
    if options.overwrite:
        _start_over(options)
    _refuse_to_overwrite(options)
    lock = _lock(options.state_dir)
    try:
        journal = _journal(options, _settings(options, source, generation))
        resumed_at = journal.rows_done
        if resumed_at and on_resume is not None:
            on_resume(resumed_at, source.rows)
        summary = _run(options, generation, source, journal, progress, started)
        summary.resumed_at = resumed_at
    finally:
        lock.close()
    shutil.rmtree(options.state_dir, ignore_errors=True)
    summary.seconds = time.monotonic() - started
    return summary


def _run(options: BatchOptions, generation: Generation, source: InputFile, journal: _Journal,
         stream: IO[str] | None, started: float) -> BatchSummary:
    counts = {name: Counter(values) for name, values in journal.counts.items()}
    sinks = _Sinks(options, journal, source)
    first_result: float | None = None
    first_rows = 0
    try:
        bar = _Progress(source.rows, journal.rows_done, stream)
        if journal.rows_done < source.rows:
            executor = _executor(generation, options)
            try:
                rows = read_rows(source, text_column=options.text_column, id_column=options.id_column,
                                 start=journal.rows_done)
                committed_at, last_commit = journal.rows_done, time.monotonic()
                for engine, outcomes in executor.map(_chunks(rows, options.batch_size)):
                    if first_result is None:
                        first_result, first_rows = time.monotonic() - started, len(outcomes)
                    if journal.engine is None:
                        journal.engine = engine
                    elif engine is not None and engine != journal.engine:
                        raise BatchError(f"{options.output}: rows so far were matched by {journal.engine}, this "
                                         f"worker matches with {engine}: results would mix. Run every worker with the "
                                         "same packages and cache, or start over with --overwrite")
                    sinks.write(outcomes, counts)
                    journal.rows_done += len(outcomes)
                    if (journal.rows_done - committed_at >= options.checkpoint_rows
                            or time.monotonic() - last_commit >= _COMMIT_SECONDS):
                        _commit(sinks, journal, counts, options)
                        committed_at, last_commit = journal.rows_done, time.monotonic()
                    bar.update(journal.rows_done)
            finally:
                executor.close()
            if journal.rows_done != source.rows:
                raise BatchError(f"{options.input}: {journal.rows_done:,} rows read, {source.rows:,} counted: the "
                                 "file changed during the run; start over with --overwrite")
            _commit(sinks, journal, counts, options)
        bar.update(journal.rows_done, final=True)
        if isinstance(sinks.output, ParquetParts):
            sinks.output.merge(options.output)
        if options.unmatched is not None:
            _write_unmatched(options.state_dir / "unmatched.jsonl", options.unmatched, generation)
    finally:
        sinks.close()
    totals = counts["totals"]
    return BatchSummary(
        rows=source.rows, results=totals["results"], errors=totals["errors"],
        by_type=_ordered(counts["by_type"]), by_matcher=_ordered(counts["by_matcher"]),
        by_task=_ordered(counts["by_task"]), unmatched=totals["unmatched"], engine=journal.engine,
        first_result_seconds=first_result, first_result_rows=first_rows, output=str(options.output),
        errors_file=str(options.errors_path),
        unmatched_file=None if options.unmatched is None else str(options.unmatched))


def _commit(sinks: _Sinks, journal: _Journal, counts: dict[str, Counter[str]], options: BatchOptions) -> None:
    sinks.commit(journal)
    journal.counts = {name: dict(counter) for name, counter in counts.items()}
    journal.save(options.state_dir / "journal.json")


def _ordered(counter: Counter[str]) -> dict[str, int]:
    """Counts, most frequent first, ties by name."""
    return dict(sorted(counter.items(), key=lambda item: (-item[1], item[0])))


def _write_unmatched(staged: Path, target: Path, generation: Generation) -> None:
    """The ``type: none`` requests grouped by nearest task: one JSON line per task, the task with the
    most requests first; within a task, the closest requests (highest score) first, then input order."""
    groups: dict[str, list[tuple[float, int, dict[str, Any]]]] = {}
    if staged.is_file():
        with staged.open("rb") as handle:
            for order, raw in enumerate(handle):
                item = json.loads(raw)
                groups.setdefault(item["nearest"], []).append(
                    (-item["score"], order, {"id": item["id"], "text": item["text"], "score": item["score"]}))
    lines = []
    for task_id, items in sorted(groups.items(), key=lambda group: (-len(group[1]), group[0])):
        task = generation.catalog.get(task_id)
        lines.append(json.dumps({"nearest_task": task_id, "title": task.title, "count": len(items),
                                 "requests": [request for _, _, request in sorted(items, key=lambda i: i[:2])]},
                                ensure_ascii=False, separators=(",", ":")))
    write_atomically(target, "".join(f"{line}\n" for line in lines).encode("utf-8"), durable=True)


def render_summary(summary: BatchSummary) -> str:
    """The summary as a few lines of text: what went where, then the counts."""
    lines = [f"{summary.rows:,} rows: {summary.results:,} results in {summary.output}, "
             f"{summary.errors:,} errors in {summary.errors_file}"]
    if summary.resumed_at:
        lines[0] += f" (resumed at row {summary.resumed_at:,})"
    for label, counts in (("by type", summary.by_type), ("by matcher", summary.by_matcher),
                          ("matched rows by task", summary.by_task)):
        shown = ", ".join(f"{name} {count:,}" for name, count in counts.items()) or "none"
        lines.append(textwrap.fill(f"{label}: {shown}", width=_WRAP, subsequent_indent="  ",
                                   break_on_hyphens=False))
    if summary.unmatched_file is not None:
        lines.append(f"{summary.unmatched:,} unmatched requests (type none) grouped by nearest task in "
                     f"{summary.unmatched_file}")
    return "\n".join(lines)
