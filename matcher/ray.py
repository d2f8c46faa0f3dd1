"""Batch matching on a Ray cluster: `match_dataset` runs a `Matcher` per actor over a Ray Dataset.

Ray is an optional extra (``pip install 'task-matcher[ray]' -c constraints.txt``), imported only
when these functions run. Each actor builds its own matcher from the catalog and config the
driver validated (sent by value, so the nodes need no copy of the files) and warms it up once;
its node's embedding cache (``TASK_MATCHER_CACHE`` or ``~/.cache/task-matcher``) is filled by the
first actor there and read by the others. Rows are matched one query at a time, as
`Matcher.match_many` does, so a row's result is the same whichever actor or batch it lands in.
Every node needs the same version of task-matcher and its extras installed.

`task-matcher batch IN OUT --ray ADDRESS` uses it through `RayExecutor`: the driver reads the
input, sends rows to the cluster in windows of `WINDOW_ROWS` and writes results, errors and its
journal exactly as a local run does, so a run can be resumed locally or on Ray alike.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .batchio import RESULT_FIELDS, InputRow, result_schema
from .catalog import Catalog, default_catalog, load_catalog
from .config import MatcherConfig
from .errors import BatchError
from .generation import Generation

__all__ = ["WINDOW_ROWS", "RayExecutor", "match_dataset"]

WINDOW_ROWS = 250_000
"""Rows sent to the cluster as one dataset by `RayExecutor` (each window starts its actors afresh)."""
RESULT_COLUMNS = (*RESULT_FIELDS, "error", "engine")
_RAY_HINT = "pip install 'task-matcher[ray]' -c constraints.txt"
_TEXT, _ROW = "text", "row"
_LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise BatchError(f"Ray is not installed: {_RAY_HINT}") from None
    return ray


class _MatchActor:
    """A Ray actor holding one warmed-up `Matcher`; called with Arrow batches, it adds the result columns."""

    def __init__(self, payload: dict[str, Any], fingerprint: str, semantic: Any, top_k: int, text_column: str,
                 cache_dir: str | None, threads: int | None) -> None:
        from .batch import build_matcher, engine_identity

        generation = Generation.from_payload(payload, fingerprint=fingerprint, source="the driver's catalog")
        self._matcher = build_matcher(generation, semantic=semantic,
                                      cache_dir=None if cache_dir is None else Path(cache_dir), threads=threads)
        self._matcher.warm_up()
        self._engine = engine_identity(self._matcher)
        self._top_k, self._text_column = top_k, text_column
        self._schema = result_schema().remove(0)  # the result fields, without `id`

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from .batch import match_text

        clashes = sorted(set(batch.column_names) & set(RESULT_COLUMNS))
        if clashes:
            raise BatchError(f"the dataset already has the result column(s) {', '.join(clashes)}: rename them first")
        records, errors = [], []
        for text in batch.column(self._text_column).to_pylist():
            record, error = match_text(self._matcher, text, self._top_k)
            records.append(record or {})
            errors.append(error)
        results = pa.Table.from_pylist(records, schema=self._schema)
        for name in results.column_names:
            batch = batch.append_column(name, results.column(name))
        batch = batch.append_column("error", pa.array(errors, type=pa.string()))
        return batch.append_column("engine", pa.array([self._engine] * batch.num_rows, type=pa.string()))


def match_dataset(ds: Any, *, catalog: Catalog | str | Path | None = None,
                  config: MatcherConfig | str | Path | None = None, semantic: bool | str = "auto", top_k: int = 5,
                  text_column: str = "text", concurrency: int | None = None, batch_size: int = 256,
                  num_cpus: float = 1.0, cache_dir: str | Path | None = None,
                  threads: int | None = None) -> Any:
    """Match the `text_column` of every row of the Ray Dataset `ds`; returns the lazy mapped dataset.

    The result keeps every input column and adds the fields of `TaskMatch.to_dict()` (``query``,
    ``matched``, ``chosen``, ``candidates``, ...), ``error`` (why a row has no result: a text that
    is null, not a string, empty or too long; null otherwise) and ``engine`` (the model and config
    that scored it). `concurrency` actors (default: one per `num_cpus` CPUs of the cluster) each
    hold a matcher and take `batch_size` rows per call. Rows keep their order only when
    ``ray.data.DataContext.get_current().execution_options.preserve_order`` is set; keep an id
    column to join results back otherwise. `catalog`, `config`, `semantic`, `cache_dir` and
    `threads` are as for `Matcher` (`cache_dir` is a path on the workers' nodes).
    """
    if not isinstance(catalog, Catalog):
        catalog = default_catalog() if catalog is None else load_catalog(catalog)
    generation = Generation(catalog, MatcherConfig.load(config) if isinstance(config, (str, Path)) else config)
    return _map(ds, generation, semantic=semantic, top_k=top_k, text_column=text_column, concurrency=concurrency,
                batch_size=batch_size, num_cpus=num_cpus, cache_dir=cache_dir, threads=threads)


def _map(ds: Any, generation: Generation, *, semantic: bool | str, top_k: int, text_column: str,
         concurrency: int | None, batch_size: int, num_cpus: float, cache_dir: str | Path | None,
         threads: int | None) -> Any:
    ray = _ray()
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    if concurrency is None:
        if not ray.is_initialized():
            ray.init()
        concurrency = max(1, int(ray.cluster_resources().get("CPU", 1) // num_cpus))
    kwargs = {"payload": generation.to_payload(), "fingerprint": generation.fingerprint, "semantic": semantic,
              "top_k": top_k, "text_column": text_column, "cache_dir": None if cache_dir is None else str(cache_dir),
              "threads": threads}
    return ds.map_batches(_MatchActor, fn_constructor_kwargs=kwargs, batch_size=batch_size, batch_format="pyarrow",
                          concurrency=concurrency, num_cpus=num_cpus)


class RayExecutor:
    """The Ray back end of `run_batch`: windows of rows out to the cluster, results back in input order.

    Connects to `options.ray` (an address, ``"auto"``, or ``"local"`` for a private instance on
    127.0.0.1 with `workers` CPUs), unless Ray is already initialised in this process; shuts down
    only what it started.
    """

    def __init__(self, generation: Generation, options: Any) -> None:
        if options.ray == "local" and "ray" not in sys.modules:
            # A private instance listens on 127.0.0.1 only: Ray's own switch for that, read when Ray is imported.
            os.environ.setdefault(_LOOPBACK_ONLY, "0")
        ray = _ray()
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            if options.ray == "local":
                ray.init(num_cpus=options.workers or os.cpu_count() or 1, include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=options.ray, log_to_driver=False, configure_logging=False)
            self._started = True
        context = ray.data.DataContext.get_current()
        self._saved = (context.execution_options.preserve_order, context.enable_progress_bars)
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        self._quiet = logging.getLogger("ray.data")
        self._level = self._quiet.level
        self._quiet.setLevel(logging.WARNING)
        self._generation, self._options = generation, options

    def map(self, chunks: Iterable[list[InputRow]]) -> Iterator[tuple[str | None, list[Any]]]:
        import pyarrow as pa

        from .batch import Outcome, _failed

        options = self._options
        for window in _windows(chunks):
            rows = [row for chunk in window for row in chunk]
            todo = [row for row in rows if row.error is None]
            tables = [pa.table({_ROW: pa.array([row.row for row in part], pa.int64()),
                                _TEXT: pa.array([row.text for row in part], pa.string())})
                      for part in _parts(todo, options.batch_size)]
            by_row = iter(rows)
            if tables:
                dataset = self._ray.data.from_arrow(tables)
                mapped = _map(dataset, self._generation, semantic=options.semantic, top_k=options.top_k,
                              text_column=_TEXT, concurrency=options.workers, batch_size=options.batch_size,
                              num_cpus=1.0, cache_dir=options.cache_dir, threads=options.threads)
                for batch in mapped.iter_batches(batch_format="pyarrow", batch_size=None):
                    if not batch.num_rows:
                        continue
                    outcomes: list[Outcome] = []
                    engines = set(batch.column("engine").to_pylist())
                    for result in batch.select([_ROW, *RESULT_FIELDS, "error"]).to_pylist():
                        row = next(by_row)
                        while row.error is not None:
                            outcomes.append(_failed(row, row.error))
                            row = next(by_row)
                        if row.row != result[_ROW]:
                            raise BatchError(f"Ray returned row {result[_ROW]} where row {row.row} was due: "
                                             "rows came back out of order")
                        if result["error"] is not None:
                            outcomes.append(_failed(row, result["error"]))
                        else:
                            record = {name: result[name] for name in RESULT_FIELDS}
                            outcomes.append(Outcome(row.row, row.line, row.id, {"id": row.id, **record}))
                    if len(engines) > 1:
                        raise BatchError(f"the Ray workers match with different engines: {sorted(engines)}")
                    yield next(iter(engines)), outcomes
            rest = list(by_row)
            if any(row.error is None for row in rest):
                raise BatchError(f"Ray returned no result for row {next(r.row for r in rest if r.error is None)}")
            if rest:
                yield None, [_failed(row, row.error or "") for row in rest]

    def close(self) -> None:
        context = self._ray.data.DataContext.get_current()
        context.execution_options.preserve_order, context.enable_progress_bars = self._saved
        self._quiet.setLevel(self._level)
        if self._started:
            self._ray.shutdown()


def _windows(chunks: Iterable[list[InputRow]]) -> Iterator[list[list[InputRow]]]:
    window: list[list[InputRow]] = []
    rows = 0
    for chunk in chunks:
        window.append(chunk)
        rows += len(chunk)
        if rows >= WINDOW_ROWS:
            yield window
            window, rows = [], 0
    if window:
        yield window


def _parts(rows: list[InputRow], size: int) -> Iterator[list[InputRow]]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]

