"""Batch matching at scale: `task-matcher batch` with 1 and 2 worker processes and on a local Ray instance.

`python -m benchmarks.batch` writes `--rows` corpus-derived requests (default 100,000) to a JSON-lines
file and runs `task-matcher batch` over it in a fresh process per case: keyword-only with 1 and 2
workers and through a local Ray instance of 2 CPUs (`--ray local`), then the same for the semantic
cascade on `--semantic-rows` requests (default 5,000; 0 skips it: about 70 requests/s per core).
Each case reports its wall time (start-up included), its rate once the first results are in, the
peak memory of its whole process tree (the sum of every process's resident memory, sampled every
0.1 s: workers, and Ray's own processes, included; pages shared between processes count in each)
and the SHA-256 of its output. The reference digest is `Matcher.match_many` over the same rows in
this process, written as `batch` writes rows: every case must match it.

Requests are corpus lines (`corpora/queries/`) varied by a seeded generator (a lead-in, a tail, a
dropped word, two swapped letters), so most are distinct, and 0.1% are bad rows (empty, over-long,
not a string) that must land in the errors file. Prints a Markdown section.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .load import package_versions

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "corpora" / "queries"
_LEADS = ("", "", "", "hi, ", "we need to ", "can you ", "looking for a model to ", "urgent: ", "our team wants to ")
_TAILS = ("", "", "", " asap", " for our team", " please", " at scale", " in production", ", thanks")
_BAD_EVERY = 1000
_PACKAGES = ("task-matcher", "numpy", "scikit-learn", "onnxruntime", "pyarrow", "ray")


def corpus_derived_queries(rows: int, *, seed: int = 0) -> list[object]:
    """`rows` request texts from the corpus with seeded variations; every `_BAD_EVERY`-th is a bad row."""
    texts = [json.loads(line)["text"] for path in sorted(CORPUS.glob("*.jsonl"))
             for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(seed)
    out: list[object] = []
    for i in range(rows):
        if is_bad_row(i):
            out.append(("", "   ", "x" * 5000, 12345)[(i // _BAD_EVERY) % 4])
            continue
        words = rng.choice(texts).split()
        if len(words) > 4 and rng.random() < 0.3:
            del words[rng.randrange(len(words))]
        if rng.random() < 0.2:
            at = rng.randrange(len(words))
            word = words[at]
            if len(word) > 3:
                j = rng.randrange(len(word) - 1)
                words[at] = word[:j] + word[j + 1] + word[j] + word[j + 2:]
        out.append(rng.choice(_LEADS) + " ".join(words) + rng.choice(_TAILS))
    return out


def is_bad_row(row: int) -> bool:
    """Whether `corpus_derived_queries` made row `row` a bad row."""
    return row % _BAD_EVERY == _BAD_EVERY - 1


def write_input(path: Path, texts: Sequence[object]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for i, text in enumerate(texts):
            handle.write(json.dumps({"id": f"r{i}", "text": text}, ensure_ascii=False) + "\n")


def reference_digest(texts: Sequence[object], semantic: bool, cache: Path) -> tuple[str, float]:
    """SHA-256 of the rows `match_many` gives for the good texts, serialised as `batch` writes them."""
    import matcher

    engine = matcher.Matcher(semantic=semantic, cache_dir=cache)
    engine.warm_up()
    good = [(i, str(t)) for i, t in enumerate(texts) if not is_bad_row(i)]
    started = time.perf_counter()
    results = engine.match_many([t for _, t in good])
    seconds = time.perf_counter() - started
    digest = hashlib.sha256()
    for (i, _), result in zip(good, results, strict=True):
        record = {"id": f"r{i}", **result.to_dict()}
        digest.update(json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n")
    return digest.hexdigest(), len(good) / seconds


@dataclass(frozen=True)
class Case:
    """One `task-matcher batch` run."""

    path: str
    how: str
    rows: int
    wall_seconds: float
    summary: dict[str, Any]
    peak_mb: float
    digest: str

    @property
    def rate(self) -> float:
        return self.rows / self.wall_seconds

    @property
    def started_rate(self) -> float:
        first = self.summary.get("first_result_seconds") or 0.0
        busy = self.summary["seconds"] - first
        rows = self.rows - self.summary.get("first_result_rows", 0)
        return rows / busy if busy > 0 and rows > 0 else float("nan")


def _tree_rss(root: Any) -> int:
    import psutil

    total = 0
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


def run_case(args: Sequence[str], output: Path, env: dict[str, str]) -> tuple[float, dict[str, Any], float, str]:
    """Run `task-matcher batch ARGS --json`; wall seconds, its summary, peak tree memory (MB), output digest."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "matcher", "batch", *args, "--json", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss(root))
        time.sleep(0.1)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"task-matcher batch {' '.join(args)} failed ({proc.returncode}): {stderr[-3000:]}")
    summary: dict[str, Any] = json.loads(stdout)
    return wall, summary, peak / 2**20, hashlib.sha256(output.read_bytes()).hexdigest()


def run(rows: int, semantic_rows: int, *, ray: bool = True, seed: int = 0) -> tuple[list[Case], dict[str, Any]]:
    """Every case for both paths; returns them and the reference facts (digests, match_many rates)."""
    cases: list[Case] = []
    facts: dict[str, Any] = {"load average at start": os.getloadavg()[0], "reference": {}}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        cache = work / "cache"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
               "TOKENIZERS_PARALLELISM": "false", "TASK_MATCHER_CACHE": str(cache)}
        for path, count in (("keyword", rows), ("semantic", semantic_rows)):
            if count <= 0:
                continue
            texts = corpus_derived_queries(count, seed=seed)
            source = work / f"{path}.jsonl"
            write_input(source, texts)
            semantic = "on" if path == "semantic" else "off"
            if path == "semantic":  # the model export and task embeddings, made once before the timed runs
                warm = work / "warm.jsonl"
                write_input(warm, texts[:5])
                run_case([str(warm), str(work / "warm-out.jsonl"), "--semantic", "on"], work / "warm-out.jsonl", env)
            digest, match_many_rate = reference_digest(texts, path == "semantic", cache)
            facts["reference"][path] = {"digest": digest, "match_many rate": match_many_rate}
            hows = [("1 worker", ["--workers", "1"]), ("2 workers", ["--workers", "2"])]
            if ray:
                hows.append(("Ray, local, 2 CPUs", ["--ray", "local", "--workers", "2"]))
            for how, extra in hows:
                output = work / f"{path}-{len(cases)}.jsonl"
                wall, summary, peak, out_digest = run_case(
                    [str(source), str(output), "--semantic", semantic, "--id-column", "id", *extra], output, env)
                cases.append(Case(path, how, count, wall, summary, peak, out_digest))
                output.unlink()
    facts["load average at end"] = os.getloadavg()[0]
    return cases, facts


def render(cases: Sequence[Case], facts: dict[str, Any]) -> str:
    """The Markdown section: one row per case, digests against `match_many`'s."""
    reference = facts["reference"]
    rows = []
    for case in cases:
        ref = reference[case.path]
        equal = "yes" if case.digest == ref["digest"] else "**no**"
        rows.append(f"| {case.path} | {case.how} | {case.rows:,} | {case.summary['errors']:,} | "
                    f"{case.wall_seconds:.1f} | {case.rate:,.0f} | {case.started_rate:,.0f} | {case.peak_mb:,.0f} | "
                    f"`{case.digest[:12]}` | {equal} |")
    refs = "; ".join(f"{path}: `{ref['digest'][:12]}`, `match_many` alone {ref['match_many rate']:,.0f} queries/s"
                     for path, ref in reference.items())
    versions = package_versions(_PACKAGES)
    return "\n".join([
        "## task-matcher batch",
        "",
        "`task-matcher batch IN OUT` over corpus-derived requests (`benchmarks/batch.py`: corpus lines with "
        "seeded variations, 0.1% bad rows), one fresh process per case, default catalog. *wall*: the whole "
        "command, start-up (imports, workers, Ray) included; *once started*: the rows after the first batch of "
        "results over the time after it (start-up and the first batch left out). *peak memory*: the sum of the "
        "resident memory of the command's process tree (its workers, and for Ray its own processes), sampled "
        "every 0.1 s; pages shared between processes count in each. Every output's SHA-256 is compared with "
        "`Matcher.match_many` over the same rows.",
        "",
        "| path | run | rows | bad rows | wall s | queries/s (wall) | queries/s once started | peak memory MB | "
        "output sha256 | equal to `match_many` |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"- Reference digests: {refs}.",
        f"- cores: {os.cpu_count()}; Python {platform.python_version()}; load average "
        f"{facts['load average at start']:.1f} at the start, {facts['load average at end']:.1f} at the end "
        "(the machine is shared: rates move with it).",
        f"- {', '.join(versions)}",
    ]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="keyword-only requests (default 100000)")
    parser.add_argument("--semantic-rows", type=int, default=5_000,
                        help="requests through the semantic cascade (default 5000; 0 skips it)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray cases")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cases, facts = run(args.rows, args.semantic_rows, ray=not args.no_ray, seed=args.seed)
    sys.stdout.write(render(cases, facts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
