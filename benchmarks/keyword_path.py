"""The keyword path on its own: start-up to the first answer, and per-query latency.

`python -m benchmarks.keyword_path` prints a Markdown section. Both parts run in fresh processes,
so nothing else the benchmark run loaded (torch, CLINC data, other matchers) shares the process:

* **start-up**: `benchmarks.perf.import_times`, every cache (parsed catalog, keyword index) in
  one temporary folder: the first process fills it, the next ones read it.
* **latency**: a keyword-only `Matcher` on the default catalog, one query at a time, over the
  short requests and the 1-4 sentence requests of `benchmarks.encoders.load_queries`: one
  warm-up pass, then `--passes` timed passes. The median and p99 are over every timed call;
  *fastest per query* is the median over queries of each query's fastest pass, the figure least
  moved by other work on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .encoders import load_queries
from .perf import cpu_reference_ms, import_times

__all__ = ["BARS", "main", "run"]

# Issue 11's bars for the keyword path: median ms per query, and seconds to the first answer.
BARS = {"short": 0.3, "sentences": 0.8, "first answer": 0.4}


def _latency(n: int, seed: int, passes: int) -> dict[str, Any]:
    """`_probe_latency` in a fresh interpreter."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.keyword_path", "--keyword-latency", str(n), str(seed),
                           str(passes)], capture_output=True, text=True, env=env, timeout=900, check=False,
                          cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise RuntimeError(f"keyword latency probe failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _probe_latency(n: int, seed: int, passes: int) -> dict[str, Any]:
    import matcher

    engine = matcher.Matcher(semantic=False)
    engine.warm_up()
    out: dict[str, Any] = {"cpu reference ms": cpu_reference_ms()}
    for kind in ("short", "sentences"):
        texts = load_queries(kind, n, seed)
        for text in texts:
            engine.match(text)
        times = np.zeros((passes, len(texts)))
        for run in range(passes):
            for position, text in enumerate(texts):
                started = time.perf_counter()
                engine.match(text)
                times[run, position] = 1000 * (time.perf_counter() - started)
        out[kind] = {"queries": len(texts), "passes": passes, "median": float(np.median(times)),
                     "p99": float(np.percentile(times, 99)), "fastest per query": float(np.median(times.min(axis=0)))}
    return out


def run(*, n: int = 150, seed: int = 0, passes: int = 5, repeats: int = 7) -> dict[str, Any]:
    """Both parts, each in fresh processes; the load average at the start and end of each."""
    out: dict[str, Any] = {"cores": os.cpu_count(), "python": sys.version.split()[0]}
    before = os.getloadavg()[0]
    out["start-up"] = import_times(repeats)
    out["start-up load average"] = (before, os.getloadavg()[0])
    before = os.getloadavg()[0]
    out["latency"] = _latency(n, seed, passes)
    out["latency load average"] = (before, os.getloadavg()[0])
    out["repeats"] = repeats
    return out


def _verdict(value: float, bar: float) -> str:
    return "met" if value <= bar else "missed"


def render(result: dict[str, Any]) -> str:
    """The Markdown section of one `run`."""
    start = result["start-up"]
    first = start["process start to first keyword answer"]
    lines = ["## task-matcher keyword path\n",
             "Default catalog, keyword-only `Matcher`, each part in fresh processes (`benchmarks/keyword_path.py`).\n",
             "| request set | queries × passes | median ms | p99 ms | fastest per query, median ms | bar (median) |",
             "|---|---|---|---|---|---|"]
    for kind, label in (("short", "short (≤ 10 words)"), ("sentences", "1-4 sentences (≥ 20 words)")):
        row = result["latency"][kind]
        lines.append(f"| {label} | {row['queries']} × {row['passes']} | {row['median']:.3f} | {row['p99']:.3f} | "
                     f"{row['fastest per query']:.3f} | ≤ {BARS[kind]} ms: {_verdict(row['median'], BARS[kind])} |")
    lines += ["", "| start-up, median of fresh processes | seconds |", "|---|---|",
              f"| `import matcher` | {start['import matcher']:.3f} |",
              f"| `import matcher` to the first keyword answer | {start['import to first keyword answer']:.3f} |",
              f"| process start to the first keyword answer (bar ≤ {BARS['first answer']} s: "
              f"{_verdict(first, BARS['first answer'])}) | {first:.3f} |",
              f"| the same, the first process of an empty cache (parses the catalog, builds and caches the index) | "
              f"{start['process start to first keyword answer, empty cache']:.3f} |",
              "",
              f"Start-up: median of {result['repeats']} processes reading the caches, after one that filled them; "
              f"scikit-learn imported by those: {'yes' if start['scikit-learn imported'] else 'no'}. "
              f"1-minute load average at the start / end: start-up {result['start-up load average'][0]:.1f} / "
              f"{result['start-up load average'][1]:.1f}, latency {result['latency load average'][0]:.1f} / "
              f"{result['latency load average'][1]:.1f} ({result['cores']} cores, Python {result['python']}). "
              f"Machine yardstick, timed in the latency process: {result['latency']['cpu reference ms']:.2f} ms for "
              "the fixed pure-Python workload of `benchmarks.perf.cpu_reference_ms`; compare it across runs "
              "before comparing their latencies."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.keyword_path", description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=5, help="timed passes over each request set (default 5)")
    parser.add_argument("--repeats", type=int, default=7, help="fresh processes timed for start-up (default 7)")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON instead of Markdown")
    parser.add_argument("--keyword-latency", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.keyword_latency:
        n, seed, passes = (int(value) for value in args.keyword_latency)
        print(json.dumps(_probe_latency(n, seed, passes)))
        return 0
    result = run(passes=args.passes, repeats=args.repeats)
    print(json.dumps(result) if args.json else render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
