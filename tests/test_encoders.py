"""The ONNX Runtime backend: export, check against torch, cache, fallback, no torch at query time."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import matcher
from matcher import Matcher, SentenceTransformerEmbedder, encoders
from matcher.encoders import OnnxEmbedder, select_embedder
from matcher.semantic import THREADS_ENV, Embedder, SemanticIndex
from matcher.text import normalize, split_negated

from .conftest import REPO, small_records

pytestmark = pytest.mark.semantic
QUERY_FILES = sorted((REPO / "corpora" / "queries").glob("*.jsonl"))


@pytest.fixture(scope="module")
def torch_embedder() -> SentenceTransformerEmbedder:
    model = SentenceTransformerEmbedder()
    model.load()
    return model


def corpus_sample(every: int = 7) -> list[str]:
    """Every `every`-th query of each corpus file, raw and as the engine embeds it (normalized,
    negated mentions cut out)."""
    texts: list[str] = []
    for path in QUERY_FILES:
        rows = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for text in rows[::every]:
            texts.extend((text, split_negated(normalize(text))[0]))
    return texts


def test_vectors_agree_with_torch_on_the_query_corpora(exported_cache: Path,
                                                       torch_embedder: SentenceTransformerEmbedder) -> None:
    texts = corpus_sample()
    assert len(QUERY_FILES) == 6 and len(texts) > 400
    onnx = OnnxEmbedder(cache_dir=exported_cache)
    single = np.vstack([onnx.encode([t]) for t in texts])
    reference = np.vstack([torch_embedder.encode([t]) for t in texts])
    assert single.dtype == np.float32 and single.shape == (len(texts), 384)
    np.testing.assert_allclose(np.linalg.norm(single, axis=1), 1.0, atol=1e-5)
    assert float(np.min(np.sum(single * reference, axis=1))) >= 0.99999
    batched = onnx.encode(texts)  # padded chunks, several at a time
    assert float(np.min(np.sum(batched * torch_embedder.encode(texts), axis=1))) >= 0.99999
    assert float(np.min(np.sum(batched * single, axis=1))) >= 0.99999


def test_the_export_is_cached_under_a_manifest_and_reused(exported_cache: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    manifest_path = next(exported_cache.glob("onnx-*.json"))
    manifest = json.loads(manifest_path.read_text())
    assert manifest["status"] == "verified"
    assert manifest["model"] == SentenceTransformerEmbedder().model_id
    assert (manifest["opset"], manifest["precision"], manifest["format"]) == (17, "fp32", 1)
    assert manifest["inputs"] == ["input_ids", "attention_mask"]
    assert manifest["max_seq_length"] == 256
    assert set(manifest["versions"]) == {"torch", "onnx", "transformers", "sentence-transformers"}
    assert manifest["probe_min_cosine"] >= encoders.VERIFY_MIN_COSINE
    caplog.set_level(logging.INFO, logger="matcher")
    embedder = OnnxEmbedder(cache_dir=exported_cache)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vector = embedder.encode(["invoices"])
    assert embedder.backend == "onnx"
    assert embedder.export_path == manifest_path.with_suffix(".onnx")
    assert any(m.startswith("ONNX export read from the cache ") for m in caplog.messages)
    assert not any(m.startswith("exporting ") for m in caplog.messages)
    np.testing.assert_array_equal(vector, OnnxEmbedder(cache_dir=exported_cache).encode(["invoices"]))
    assert not list(exported_cache.glob(".*.tmp"))


CLEAN_IMPORTS = """
import json, sys
import matcher
from matcher.encoders import OnnxEmbedder
embedder = OnnxEmbedder(cache_dir=sys.argv[1])
vector = embedder.encode(["pull totals out of vendor invoices"])
m = matcher.Matcher(semantic="onnx", cache_dir=sys.argv[1])
result = m.match("I want to know whether people like our app from what they write")
heavy = sorted(n for n in ("torch", "transformers", "sentence_transformers") if n in sys.modules)
print(json.dumps({"heavy": heavy, "backend": embedder.backend, "shape": list(vector.shape),
                  "matcher": result.matcher, "onnxruntime": "onnxruntime" in sys.modules}))
"""


def test_query_time_needs_no_torch_once_the_export_is_cached(exported_cache: Path) -> None:
    run = subprocess.run([sys.executable, "-c", CLEAN_IMPORTS, str(exported_cache)], capture_output=True,
                         text=True, check=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out == {"heavy": [], "backend": "onnx", "shape": [1, 384], "matcher": "semantic", "onnxruntime": True}


def test_backends_have_their_own_model_ids_and_embedding_caches(exported_cache: Path,
                                                                torch_embedder: SentenceTransformerEmbedder) -> None:
    onnx = OnnxEmbedder(cache_dir=exported_cache)
    assert onnx.model_id.startswith(torch_embedder.model_id + "+onnx-fp32-")
    assert onnx.model_id != torch_embedder.model_id
    catalog = matcher.Catalog.from_records(small_records())
    for embedder in (onnx, torch_embedder):
        SemanticIndex(catalog.profiles(), embedder, fingerprint=catalog.fingerprint, cache_dir=exported_cache)
    assert len(list(exported_cache.glob("embeddings-*.npz"))) == 2


def test_a_corrupt_export_is_rebuilt_with_a_warning(exported_cache: Path) -> None:
    graph = next(exported_cache.glob("onnx-*.onnx"))
    graph.write_bytes(graph.read_bytes()[:4096])
    embedder = OnnxEmbedder(cache_dir=exported_cache)
    with pytest.warns(RuntimeWarning, match="unusable .*checksum mismatch.*rebuilding"):
        embedder.load()
    assert embedder.backend == "onnx"
    assert graph.stat().st_size > 1_000_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        OnnxEmbedder(cache_dir=exported_cache).load()


def test_a_tampered_manifest_is_rebuilt_with_a_warning(exported_cache: Path) -> None:
    manifest_path = next(exported_cache.glob("onnx-*.json"))
    manifest = json.loads(manifest_path.read_text())
    manifest["opset"] = 11
    manifest_path.write_text(json.dumps(manifest))
    with pytest.warns(RuntimeWarning, match="manifest does not match"):
        OnnxEmbedder(cache_dir=exported_cache).load()
    assert json.loads(manifest_path.read_text())["opset"] == 17


def test_an_export_that_fails_its_check_falls_back_to_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(encoders, "VERIFY_MIN_COSINE", 1.5)  # a bar no export can reach
    embedder = OnnxEmbedder(cache_dir=tmp_path)
    with pytest.warns(RuntimeWarning, match="does not match torch.*using the torch backend"):
        vector = embedder.encode(["invoices"])
    assert embedder.backend == "torch"
    assert embedder.model_id == SentenceTransformerEmbedder().model_id
    assert embedder.export_path is None
    assert vector.shape == (1, 384)
    manifest = json.loads(next(tmp_path.glob("onnx-*.json")).read_text())
    assert manifest["status"] == "rejected" and manifest["min_cosine"] == 1.5
    assert not list(tmp_path.glob("onnx-*.onnx"))
    caplog.set_level(logging.INFO, logger="matcher")
    again = OnnxEmbedder(cache_dir=tmp_path)
    with pytest.warns(RuntimeWarning, match="using the torch backend"):
        again.load()
    assert again.backend == "torch"
    assert not any(m.startswith("exporting ") for m in caplog.messages)  # the rejection is remembered


def test_matcher_backends_are_chosen_by_name(exported_cache: Path) -> None:
    onnx = Matcher(semantic="onnx", cache_dir=exported_cache)
    torch = Matcher(semantic="torch", cache_dir=exported_cache)
    auto = Matcher(semantic="auto", cache_dir=exported_cache)
    assert isinstance(onnx._embedder, OnnxEmbedder) and isinstance(auto._embedder, OnnxEmbedder)
    assert isinstance(torch._embedder, SentenceTransformerEmbedder)
    assert isinstance(select_embedder("torch"), SentenceTransformerEmbedder)
    with pytest.raises(ValueError, match="backend must be one of auto, onnx, torch"):
        select_embedder("tensorflow")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"'onnx', 'torch', a model folder .* or an Embedder"):
        Matcher(semantic="gpu")  # type: ignore[arg-type]


def test_the_backends_give_the_same_results(default_semantic_matcher: Matcher,
                                            torch_semantic_matcher: Matcher) -> None:
    assert isinstance(default_semantic_matcher._embedder, OnnxEmbedder)
    rows = [json.loads(line)["text"] for line in (REPO / "corpora/queries/hard-test.jsonl").read_text().splitlines()]
    for query in rows[::5]:
        onnx, torch = default_semantic_matcher.match(query).to_dict(), torch_semantic_matcher.match(query).to_dict()
        # Vectors differ in their last bits (cosine >= 0.99999), so a rounded score may differ by one
        # unit in its 4th decimal (3 of the corpora's 1,757 queries); nothing else may.
        for result in (onnx, torch):
            result["scores"] = [c.pop("score") for c in result["candidates"]]
        assert np.allclose(onnx.pop("scores"), torch.pop("scores"), rtol=0, atol=1.0001e-4), query
        assert onnx == torch, query


AUTO_WITHOUT_ONNXRUNTIME = """
import json, sys
sys.modules["onnxruntime"] = None
import matcher
from matcher.encoders import OnnxEmbedder, onnx_available
auto = matcher.Matcher(semantic="auto")
errors = []
for attempt in (lambda: matcher.Matcher(semantic="onnx"), lambda: OnnxEmbedder().encode(["invoices"])):
    try:
        attempt()
    except matcher.SemanticUnavailableError as exc:
        errors.append(str(exc))
print(json.dumps([onnx_available(), type(auto._embedder).__name__, errors]))
"""


def test_auto_takes_torch_without_onnxruntime() -> None:
    run = subprocess.run([sys.executable, "-c", AUTO_WITHOUT_ONNXRUNTIME], capture_output=True, text=True,
                         check=True, timeout=120)
    available, auto, errors = json.loads(run.stdout)
    assert (available, auto, len(errors)) == (False, "SentenceTransformerEmbedder", 2)
    assert all("onnxruntime" in e and "pip install 'task-matcher[semantic]'" in e for e in errors)


def test_the_session_runs_the_threads_it_was_given(exported_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def intra_op(embedder: OnnxEmbedder) -> int:
        embedder.load()
        model = embedder._inner
        assert isinstance(model, encoders.OnnxModel)
        return int(model._session.get_session_options().intra_op_num_threads)

    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert intra_op(OnnxEmbedder(cache_dir=exported_cache)) == 1
    assert intra_op(OnnxEmbedder(cache_dir=exported_cache, threads=2)) == 2
    monkeypatch.setenv(THREADS_ENV, "2")
    assert intra_op(OnnxEmbedder(cache_dir=exported_cache)) == 2
    assert Matcher(semantic="onnx", cache_dir=exported_cache, threads=1)._embedder.threads == 1  # type: ignore[union-attr]


def test_vectors_do_not_depend_on_thread_counts(exported_cache: Path) -> None:
    texts = corpus_sample(every=11)
    one = OnnxEmbedder(cache_dir=exported_cache, threads=1, batch_threads=1)
    two = OnnxEmbedder(cache_dir=exported_cache, threads=2, batch_threads=2)
    np.testing.assert_array_equal(one.encode(texts), two.encode(texts))
    np.testing.assert_array_equal(one.encode(texts[:1]), two.encode(texts[:1]))


def test_an_onnx_embedder_is_an_embedder(exported_cache: Path) -> None:
    assert isinstance(OnnxEmbedder(cache_dir=exported_cache), Embedder)


def test_concurrent_matches_equal_sequential_ones(exported_cache: Path, default_semantic_matcher: Matcher) -> None:
    from concurrent.futures import ThreadPoolExecutor

    fresh = Matcher(semantic="onnx", cache_dir=exported_cache)
    queries = ["my app reviews: do people like it", "tell me who is talking when", "gibberish qqq",
               "pictures of leaves: healthy or sick", "turn english into spanish"] * 8
    expected = [default_semantic_matcher.match(q).to_dict() for q in queries]
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(lambda q: fresh.match(q).to_dict(), queries)) == expected


def test_a_batched_encode_is_not_bit_identical_to_one_by_one_encodes(exported_cache: Path) -> None:
    # Why the server encodes each request on its own instead of micro-batching concurrent ones:
    # padding a query into a batch moves the last bits of its vector, so a result would depend on
    # which other requests arrived at the same moment. Should a runtime ever make the two
    # identical, this test fails, and micro-batching becomes possible.
    texts = corpus_sample(every=7)[:64:2]
    assert len(texts) == 32
    onnx = OnnxEmbedder(cache_dir=exported_cache, batch_threads=1)
    single = np.vstack([onnx.encode([text]) for text in texts])
    batched = onnx.encode(texts)  # one padded batch of 32
    identical = [bool(np.array_equal(a, b)) for a, b in zip(single, batched, strict=True)]
    assert not all(identical), "a batched encode gave every query its one-by-one vector"
    assert float(np.min(np.sum(single.astype(np.float64) * batched, axis=1))) >= 0.99999  # the last bits only
