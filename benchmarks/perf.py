"""Speed and footprint, each measured in a fresh Python process so nothing is already loaded.

* import time of `matcher`, and start to the first keyword answer with the parsed catalog and
  the keyword index cached (median of several runs; the empty-cache run that fills both beside);
* peak resident memory (`VmHWM`, see `_max_rss_mb`) serving the default catalog keyword-only
  and with the MiniLM backstop;
* the scaling run: synthetic catalogs (`benchmarks.synthetic`) of 100 to 100,000 tasks, keyword
  index build time (empty cache, the cache written) and load time (from that cache), keyword
  latency median / p99 and peak memory.

The parent calls `python -m benchmarks.perf <probe> ...`; each probe prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["cpu_reference_ms", "import_times", "peak_memory", "probe", "scaling_run"]

_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}
_SAMPLE_QUERIES = (
    "pull line items and totals out of vendor invoices",
    "transcribe customer support calls",
    "which model is best at writing SQL from a question",
    "classify support tickets by urgency",
    "generate a video of a cat surfing",
)


def cpu_reference_ms(repeats: int = 5) -> float:
    """Median milliseconds of a fixed pure-Python workload (tokens, a dict, integer sums), the same
    in every run: a yardstick that tells a slower or busier machine apart from slower code."""
    words = [f"word{index % 997}" for index in range(20_000)]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        counts: dict[str, int] = {}
        for word in words:
            counts[word] = counts.get(word, 0) + len(word)
        sum(value * value for value in counts.values())
        " ".join(words).lower().split()
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def _max_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB.

    Linux keeps `ru_maxrss` across fork and exec, so a probe started by a large parent (the
    benchmark run holds the model and CLINC data) would report the parent's peak. `VmHWM` in
    /proc/self/status is the high-water mark of this process's own address space; elsewhere
    `ru_maxrss` is the fallback.
    """
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def probe(argv: Sequence[str], timeout: float = 900.0) -> dict[str, Any]:
    """Run one probe in a fresh interpreter and return its JSON output."""
    env = {**os.environ, **_ENV}
    done = subprocess.run([sys.executable, "-m", "benchmarks.perf", *argv], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise RuntimeError(f"probe {list(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def import_times(repeats: int = 7, progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """Median seconds of `import matcher` and to the first keyword answer, with a warm cache.

    The first process of a fresh cache folder parses the catalog's YAML and builds the keyword
    index (scikit-learn), caching both; the `repeats` after it read the cache, as every process
    does once it is filled.
    The empty-cache figures are that first process's.
    """
    with tempfile.TemporaryDirectory(prefix="task-matcher-perf-") as cache:
        cold = probe(["import", cache])
        runs = []
        for _ in range(repeats):
            runs.append(probe(["import", cache]))
            if progress is not None:
                progress("import")
    warm = {key: statistics.median(float(r[key]) for r in runs) for key in runs[0]}
    warm.update({f"{key}, empty cache": float(value) for key, value in cold.items()})
    return warm


def peak_memory(mode: str) -> dict[str, float]:
    """Peak RSS (MB) after `import matcher` and after serving queries (`keyword` or `full`)."""
    return probe(["memory", mode])


def scaling_run(sizes: Sequence[int], *, queries: int = 200, seed: int = 0,
                progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One fresh process per catalog size; see `_probe_scale` for what is measured."""
    rows = []
    for size in sizes:
        rows.append(probe(["scale", str(size), str(queries), str(seed)]))
        if progress is not None:
            progress(f"{size} tasks")
    return rows


def _seconds_since_process_start() -> float:
    """Seconds since this process was created (Linux: /proc; elsewhere nan), interpreter start-up included."""
    try:
        started = int(Path("/proc/self/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")
    return uptime - started / os.sysconf("SC_CLK_TCK")


def _probe_import(cache: str) -> dict[str, Any]:
    os.environ["TASK_MATCHER_CACHE"] = cache  # the parsed default catalog is cached there too
    start = time.perf_counter()
    import matcher

    imported = time.perf_counter() - start
    engine = matcher.Matcher(semantic=False, cache_dir=cache)
    engine.match(_SAMPLE_QUERIES[0])
    return {"import matcher": imported, "import to first keyword answer": time.perf_counter() - start,
            "process start to first keyword answer": _seconds_since_process_start(),
            "scikit-learn imported": float("sklearn" in sys.modules)}


def _probe_memory(mode: str) -> dict[str, Any]:
    import matcher

    after_import = _max_rss_mb()
    engine = matcher.Matcher(semantic=mode == "full")
    engine.warm_up()
    for _ in range(10):
        engine.match_many(_SAMPLE_QUERIES)
    return {"after import": after_import, "peak": _max_rss_mb()}


def _probe_scale(size: int, n_queries: int, seed: int) -> dict[str, Any]:
    import numpy as np
    import scipy.sparse  # noqa: F401  (the build's, imported outside the timed build)
    from sklearn.feature_extraction.text import TfidfTransformer  # noqa: F401

    import matcher
    from benchmarks.synthetic import synthetic_catalog

    synthetic = synthetic_catalog(size, n_queries=n_queries, seed=seed)
    before = _max_rss_mb()
    cache = tempfile.TemporaryDirectory(prefix="task-matcher-scale-")

    def warm_matcher() -> tuple[matcher.Matcher, float]:
        # The index build and the query path are timed here, not calibration: the synthetic catalog
        # takes the shipped keyword config as it is (self-calibration is timed in the quality run).
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", matcher.ConfigWarning)
            engine = matcher.Matcher(synthetic.catalog, semantic=False, config=matcher.default_config(semantic=False),
                                     cache_dir=cache.name)
        engine.warm_up()
        return engine, time.perf_counter() - start

    with cache:
        engine, build = warm_matcher()  # an empty cache: built, and written to the cache
        del engine
        engine, cached = warm_matcher()  # read back from the cache, as the next process would
    latencies = []
    hits = 0
    for text, gold in synthetic.queries:
        start = time.perf_counter()
        result = engine.match(text, top_k=5)
        latencies.append((time.perf_counter() - start) * 1000)
        hits += result.candidates[0].task_id == gold
    values = np.asarray(latencies)
    return {
        "tasks": size, "phrases": sum(len(t.phrases) for t in synthetic.catalog),
        "build seconds": build, "cached index seconds": cached, "median ms": float(np.median(values)),
        "p99 ms": float(np.percentile(values, 99)), "queries": len(latencies),
        "top-1": hits / len(latencies), "rss before index MB": before, "peak MB": _max_rss_mb(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one performance probe, printed as JSON")
    parser.add_argument("probe", choices=("import", "memory", "scale"))
    parser.add_argument("args", nargs="*")
    args = parser.parse_args(argv)
    if args.probe == "import":
        out = _probe_import(args.args[0])
    elif args.probe == "memory":
        out = _probe_memory(args.args[0])
    else:
        size, n_queries, seed = (int(a) for a in args.args)
        out = _probe_scale(size, n_queries, seed)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
