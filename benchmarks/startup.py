"""Start-up costs of the semantic backstop, each phase timed in fresh processes (median of runs).

`python -m benchmarks.startup` prints a Markdown table: importing `matcher`; loading the shipped
MiniLM with the chosen backend (`--backend`, default the library's: ONNX Runtime, whose export is
made once per cache folder and read afterwards; torch imports sentence-transformers); building
the semantic index from an empty embedding cache and from a warm one (cache hit); the first
semantic query after that. Run it on a quiet machine: these are wall-clock seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import matcher
t1 = time.perf_counter()
from matcher.encoders import select_embedder
embedder = select_embedder(sys.argv[2], cache_dir=sys.argv[1])
embedder.load()
t2 = time.perf_counter()
m = matcher.Matcher(matcher.default_catalog(), semantic=embedder, cache_dir=sys.argv[1])
m._keyword_index()
t3 = time.perf_counter()
m._semantic_index()
t4 = time.perf_counter()
result = m.match("I want to know whether people like our app from what they write")
t5 = time.perf_counter()
assert result.matcher == "semantic"
print(json.dumps({"import matcher": t1 - t0, "model load (and ONNX export on an empty cache)": t2 - t1,
                  "keyword index": t3 - t2, "semantic index": t4 - t3, "first semantic query": t5 - t4}))
"""


def run(cache: str, backend: str) -> dict[str, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE, cache, backend], capture_output=True, text=True, env=env,
                         check=True, timeout=600)
    return {k: float(v) for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per case (default 3)")
    parser.add_argument("--backend", choices=("auto", "onnx", "torch"), default="auto",
                        help="embedding backend (default auto, the library's: ONNX Runtime when installed)")
    args = parser.parse_args()
    cold: list[dict[str, float]] = []
    warm: list[dict[str, float]] = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as cache:
            cold.append(run(cache, args.backend))
            warm.append(run(cache, args.backend))
    print("| phase | empty embedding cache (s) | warm cache, a cache hit (s) |")
    print("|---|---|---|")
    for phase in cold[0]:
        print(f"| {phase} | {statistics.median(r[phase] for r in cold):.3f} | "
              f"{statistics.median(r[phase] for r in warm):.3f} |")
    print(f"\nbackend {args.backend}; median of {args.runs} fresh processes each; "
          f"python {sys.version.split()[0]}, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
