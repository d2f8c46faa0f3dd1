"""Encoder speed and quality: torch against ONNX Runtime, and the latency tail under CPU load.

`python -m benchmarks.encoders` (run by `python -m benchmarks`) prints one JSON object; the report
renders it (`benchmarks.report.encoder_section`). Each part runs in a fresh process:

* **latency**: one query at a time, interleaved per query so every encoder meets the same
  machine load, on short requests (at most 10 words, `test.jsonl`) and on 1-4 sentence requests
  (at least 20 words, `hard-test.jsonl`): torch, ONNX Runtime fp32 and two `quantize_dynamic`
  int8 variants, each at one intra-op thread; then the semantic cascade's `Matcher.match` end to
  end on the same queries with either backend. Medians, p99 and ratios from that one run.
* **quality**: cosine to torch of every corpus query as the engine embeds it (normalized,
  negated mentions cut out), for fp32 and int8; and for int8 the decisions of the cascade
  (top-1, `matched`, chosen task, type) on `test.jsonl` and `hard-test.jsonl` against torch's. The
  bar for shipping int8: mean cosine >= 0.999 and no decision moved.
* **load**: single-query encodes while one busy-loop process per core keeps the CPU full: the
  library's default (ONNX Runtime, one thread) against the backends' own default thread counts
  and torch at one thread; median, p99 and the worst call.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["INT8_BARS", "load_queries", "run"]

REPO = Path(__file__).resolve().parents[1]
QUERIES = REPO / "corpora" / "queries"
_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}
INT8_BARS = {"mean cosine": 0.999, "decisions moved": 0}
_INT8_VARIANTS = {"int8": {"per_channel": False}, "int8 per-channel": {"per_channel": True}}
_BUSY = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"
FloatMatrix = npt.NDArray[np.float32]


def load_queries(kind: str, n: int, seed: int = 0) -> list[str]:
    """A seeded sample of `n` requests: ``short`` (<= 10 words) or ``sentences`` (>= 20 words, 1-4 sentences)."""
    name, keep = {"short": ("test.jsonl", lambda words: words <= 10),
                  "sentences": ("hard-test.jsonl", lambda words: words >= 20)}[kind]
    rows = [json.loads(line)["text"] for line in (QUERIES / name).read_text(encoding="utf-8").splitlines() if line]
    chosen = [text for text in rows if keep(len(text.split()))]
    return random.Random(seed).sample(chosen, min(n, len(chosen)))


def _summary(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values)
    return {"median": float(np.median(array)), "p99": float(np.percentile(array, 99)), "max": float(array.max()),
            "count": len(values)}


class _Int8:
    """An int8 graph quantized from the fp32 export, as an `Embedder` with a model id of its own."""

    def __init__(self, model: Any, model_id: str) -> None:
        self._model = model
        self.model_id = model_id

    def encode(self, texts: Sequence[str]) -> FloatMatrix:
        encoded: FloatMatrix = self._model.encode(texts)
        return encoded


def _int8_models(scratch: Path, fp32: Path, base_id: str) -> dict[str, _Int8]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from matcher.encoders import OnnxModel
    from matcher.semantic import model_folder

    models = {}
    for name, options in _INT8_VARIANTS.items():
        target = scratch / f"{name.replace(' ', '-')}.onnx"
        quantize_dynamic(str(fp32), str(target), weight_type=QuantType.QInt8, **options)
        models[name] = _Int8(OnnxModel(target, model_folder(None), threads=1), f"{base_id}+{name.replace(' ', '-')}")
    return models


def _probe_latency(n: int, seed: int) -> dict[str, Any]:
    import torch

    import matcher
    from matcher import OnnxEmbedder, SentenceTransformerEmbedder

    torch.set_num_threads(1)
    onnx = OnnxEmbedder(threads=1)
    torch_embedder = SentenceTransformerEmbedder(threads=1)
    onnx.load()
    torch_embedder.load()
    assert onnx.backend == "onnx" and onnx.export_path is not None
    out: dict[str, Any] = {"queries": {}, "encode": {}, "match": {}}
    with tempfile.TemporaryDirectory(prefix="task-matcher-int8-") as scratch:
        encoders: dict[str, Callable[[list[str]], Any]] = {"torch": torch_embedder.encode, "onnx fp32": onnx.encode}
        encoders.update({name: model.encode for name, model in
                         _int8_models(Path(scratch), onnx.export_path, torch_embedder.model_id).items()})
        for kind in ("short", "sentences"):
            texts = load_queries(kind, n, seed)
            out["queries"][kind] = len(texts)
            times: dict[str, list[float]] = {name: [] for name in encoders}
            for text in texts[:10]:
                for encode in encoders.values():
                    encode([text])
            for position, text in enumerate(texts):
                names = list(encoders)
                names = names[position % len(names):] + names[:position % len(names)]  # rotate who goes first
                for name in names:
                    started = time.perf_counter()
                    encoders[name]([text])
                    times[name].append(1000 * (time.perf_counter() - started))
            out["encode"][kind] = {name: _summary(values) for name, values in times.items()}
    engines = {"onnx": matcher.Matcher(semantic=onnx), "torch": matcher.Matcher(semantic=torch_embedder),
               "keyword only": matcher.Matcher(semantic=False)}
    for engine in engines.values():
        engine.warm_up()
    for kind in ("short", "sentences"):
        texts = load_queries(kind, n, seed)
        times = {name: [] for name in engines}
        semantic_times: dict[str, list[float]] = {name: [] for name in engines}
        for position, text in enumerate(texts):
            names = list(engines)
            for name in names[position % len(names):] + names[:position % len(names)]:  # rotate who goes first
                started = time.perf_counter()
                result = engines[name].match(text)
                elapsed = 1000 * (time.perf_counter() - started)
                times[name].append(elapsed)
                if result.matcher == "semantic":
                    semantic_times[name].append(elapsed)
        out["match"][kind] = {name: {"all": _summary(times[name]), "semantic": _summary(semantic_times[name])
                                     if semantic_times[name] else None} for name in engines}
        back_to_back = []  # the keyword-only matcher alone, as a keyword-only caller runs it: no encode between
        for text in texts:
            started = time.perf_counter()
            engines["keyword only"].match(text)
            back_to_back.append(1000 * (time.perf_counter() - started))
        out["match"][kind]["keyword only, back to back"] = {"all": _summary(back_to_back), "semantic": None}
    out["torch threads"] = torch.get_num_threads()
    return out


def _decisions(engine: Any, texts: Sequence[str]) -> list[tuple[Any, ...]]:
    out = []
    for result in engine.match_many(texts):
        out.append((result.candidates[0].task_id, result.matched,
                    result.chosen.task_id if result.chosen else None, result.type))
    return out


def _probe_quality() -> dict[str, Any]:
    import matcher
    from matcher import OnnxEmbedder, SentenceTransformerEmbedder
    from matcher.text import normalize, split_negated

    onnx = OnnxEmbedder(threads=1)
    torch_embedder = SentenceTransformerEmbedder()
    assert onnx.export_path is not None
    rows = [json.loads(line)["text"] for path in sorted(QUERIES.glob("*.jsonl"))
            for line in path.read_text(encoding="utf-8").splitlines() if line]
    texts = [split_negated(normalize(text))[0] for text in rows]
    reference = torch_embedder.encode(texts)
    out: dict[str, Any] = {"corpus queries": len(texts), "cosine": {}, "decisions": {}}
    with tempfile.TemporaryDirectory(prefix="task-matcher-int8-") as scratch:
        candidates: dict[str, Any] = {"onnx fp32": onnx}
        candidates.update(_int8_models(Path(scratch), onnx.export_path, torch_embedder.model_id))
        for name, embedder in candidates.items():
            cosine = np.sum(embedder.encode(texts) * reference, axis=1)
            out["cosine"][name] = {"mean": float(cosine.mean()), "min": float(cosine.min())}
        splits = {name: [json.loads(line)["text"] for line in (QUERIES / name).read_text(encoding="utf-8").splitlines()
                         if line] for name in ("test.jsonl", "hard-test.jsonl")}
        torch_engine = matcher.Matcher(semantic=torch_embedder)
        baseline = {split: _decisions(torch_engine, queries) for split, queries in splits.items()}
        for name, embedder in candidates.items():
            engine = matcher.Matcher(semantic=embedder)
            out["decisions"][name] = {}
            for split, queries in splits.items():
                got = _decisions(engine, queries)
                out["decisions"][name][split] = {
                    "queries": len(queries),
                    "top-1 moved": sum(a[0] != b[0] for a, b in zip(got, baseline[split], strict=True)),
                    "decisions moved": sum(a[1:] != b[1:] for a, b in zip(got, baseline[split], strict=True)),
                }
    for name in candidates:
        moved = sum(v["decisions moved"] + v["top-1 moved"] for v in out["decisions"][name].values())
        out["decisions"][name]["passes the bar"] = bool(out["cosine"][name]["mean"] >= INT8_BARS["mean cosine"]
                                                         and moved == INT8_BARS["decisions moved"])
    return out


def _probe_encode_under_load(backend: str, threads: int, n: int, seed: int) -> dict[str, Any]:
    from matcher.encoders import select_embedder

    embedder = select_embedder(backend, threads=threads)  # type: ignore[arg-type]
    texts = load_queries("sentences", n, seed) + load_queries("short", n, seed)
    texts = [texts[i] for i in random.Random(seed).sample(range(len(texts)), min(n, len(texts)))]
    for text in texts[:5]:
        embedder.encode([text])
    times = []
    for text in texts:
        started = time.perf_counter()
        embedder.encode([text])
        times.append(1000 * (time.perf_counter() - started))
    effective = threads
    if backend == "torch":
        import torch

        effective = torch.get_num_threads()
    return {**_summary(times), "threads": threads, "effective threads": effective}


def _probe(argv: Sequence[str], timeout: float = 1800.0) -> dict[str, Any]:
    env = {k: v for k, v in {**os.environ, **_ENV}.items() if k not in ("OMP_NUM_THREADS", "TASK_MATCHER_THREADS")}
    done = subprocess.run([sys.executable, "-m", "benchmarks.encoders", "--probe", *argv], capture_output=True,
                          text=True, env=env, timeout=timeout, check=False, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"encoder probe {list(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


LOAD_CASES = (("onnx", 1, "library default: ONNX Runtime, 1 thread"),
              ("onnx", 0, "ONNX Runtime, its default threads"),
              ("torch", 1, "torch, 1 thread"),
              ("torch", 0, "torch, its default threads"))


def run(*, quick: bool = False, seed: int = 0, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every part, each in a fresh process; the load part with one busy-loop process per core."""
    n = 40 if quick else 150
    out: dict[str, Any] = {"quick": quick, "cores": os.cpu_count(), "load average at start": os.getloadavg()[0]}
    out["latency"] = _probe(["latency", str(n), str(seed)])
    if progress is not None:
        progress("encoder latency")
    out["quality"] = _probe(["quality"])
    if progress is not None:
        progress("encoder quality")
    busy_count = os.cpu_count() or 1
    load_n = 60 if quick else 161
    busy = [subprocess.Popen([sys.executable, "-c", _BUSY, "1200"]) for _ in range(busy_count)]
    try:
        time.sleep(2.0)
        loaded = []
        for backend, threads, label in LOAD_CASES:
            result = _probe(["load", backend, str(threads), str(load_n), str(seed)])
            loaded.append({"case": label, "backend": backend, **result, "load average": os.getloadavg()[0]})
            if progress is not None:
                progress(f"under load: {label}")
    finally:
        for process in busy:
            process.kill()
        for process in busy:
            process.wait(timeout=30)
    out["load"] = {"busy processes": busy_count, "cases": loaded}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.encoders", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="40 queries per set and 60 under load")
    parser.add_argument("--probe", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name, value in _ENV.items():
        os.environ.setdefault(name, value)
    if args.probe:
        kind, *rest = args.probe
        if kind == "latency":
            result = _probe_latency(int(rest[0]), int(rest[1]))
        elif kind == "quality":
            result = _probe_quality()
        else:
            result = _probe_encode_under_load(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
    else:
        result = run(quick=args.quick, progress=lambda label: print(label, file=sys.stderr))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
