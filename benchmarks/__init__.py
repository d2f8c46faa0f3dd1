"""Benchmark harness of `task-matcher`: accuracy, honesty about "no match", and speed.

`python -m benchmarks` (see `benchmarks/run_all.py`) regenerates `benchmarks/RESULTS.md`:
our engine and its peers side by side on the default catalog and on CLINC150, plus latency,
throughput, import time, memory and a scaling run. The pieces are importable on their own
(`datasets`, `metrics`, `peers`, `quality`, `perf`) so tests and the tuning notebook reuse them.
"""
