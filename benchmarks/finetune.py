"""Fine-tuning on CLINC150 K-shot catalogs: how long it takes, and the engine with and without it.

`python -m benchmarks.finetune [--k 5 10] [--out DIR]` fine-tunes the shipped MiniLM on each
K-shot catalog's own texts (`matcher.finetune`, default settings, seed 0; the training phrases
only, no query of any split), then fits our full engine twice with the fine-tuned model: tuned on
`val.jsonl` and self-calibrated on the catalog alone, and reports both on `test.jsonl`, beside
the same two systems with the shipped model. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from matcher.encoders import select_embedder
from matcher.finetune import FinetuneSettings, finetune

from .datasets import load_clinc
from .quality import OURS_FULL, OURS_FULL_SELF, _fit_engine, evaluate
from .report import headline_metrics


def _engine_rows(dataset: Any, model: Path | None, cache: Path) -> dict[str, Any]:
    embedder = select_embedder("auto", model=model, cache_dir=cache)
    rows: dict[str, Any] = {"backend": getattr(embedder, "backend", "torch")}
    for name, mode in ((OURS_FULL, "tuned"), (OURS_FULL_SELF, "self")):
        system = _fit_engine(name, dataset, embedder, mode)
        (result,) = [r for r in evaluate(dataset, [system]) if r.name == name]
        rows[name] = {key: round(100 * value, 1) for key, value in headline_metrics(result).items()}
    return rows


def run(shots: list[int], out: Path) -> dict[str, Any]:
    settings = FinetuneSettings()
    report: dict[str, Any] = {"settings": dict(vars(settings)),
                              "cpu_count": os.cpu_count(), "runs": []}
    for k in shots:
        dataset = load_clinc(k)
        started = time.perf_counter()
        tuned = finetune(dataset.catalog, out / f"clinc-k{k}", settings=settings, overwrite=True)
        minutes = (time.perf_counter() - started) / 60
        cache = out / "cache"
        report["runs"].append({
            "k": k, "tasks": tuned.tasks, "texts": tuned.texts, "steps": tuned.steps, "threads": tuned.threads,
            "finetune_minutes": round(minutes, 2), "loss": [tuned.first_epoch_loss, tuned.last_epoch_loss],
            "shipped": _engine_rows(dataset, None, cache), "finetuned": _engine_rows(dataset, tuned.out, cache)})
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10], help="shots per intent (default 5 10)")
    parser.add_argument("--out", type=Path, help="where the models go (default: a temporary folder)")
    args = parser.parse_args()
    if args.out is not None:
        print(json.dumps(run(args.k, args.out), indent=1))
        return
    with tempfile.TemporaryDirectory(prefix="finetune-bench-") as scratch:
        print(json.dumps(run(args.k, Path(scratch)), indent=1))


if __name__ == "__main__":
    main()
