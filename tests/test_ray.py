"""Ray Data integration, on a local Ray instance of 2 CPUs: the same results as `match_many`, row by row."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # Ray's switch for a node on 127.0.0.1, read on import
os.environ.update(LOOPBACK_ONLY)

import ray  # noqa: E402
import ray.data  # noqa: E402

from matcher import Matcher  # noqa: E402
from matcher.batch import BatchOptions, run_batch  # noqa: E402
from matcher.ray import RESULT_COLUMNS, match_dataset  # noqa: E402

from .test_batch import batch_cli, corpus_texts, output_rows, write_requests  # noqa: E402

pytestmark = [pytest.mark.semantic, pytest.mark.slow]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[str]:
    """A Ray instance of this test process, 2 CPUs; yields its address for other drivers."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


@pytest.fixture
def ordered() -> Iterator[None]:
    context = ray.data.DataContext.get_current()
    saved = context.execution_options.preserve_order
    context.execution_options.preserve_order = True
    try:
        yield
    finally:
        context.execution_options.preserve_order = saved


@pytest.mark.usefixtures("ordered")
def test_match_dataset_equals_match_many_row_by_row(local_ray: str, default_semantic_matcher: Matcher,
                                                    semantic_cache: Path) -> None:
    texts = corpus_texts()[2::13]
    items = [{"key": i, "text": t} for i, t in enumerate(texts)] + [{"key": -1, "text": ""}, {"key": -2, "text": None}]
    mapped = match_dataset(ray.data.from_items(items), semantic=True, top_k=4, concurrency=2, batch_size=8,
                           cache_dir=semantic_cache)
    rows = mapped.take_all()
    expected = default_semantic_matcher.match_many(texts, top_k=4)
    assert {r.matcher for r in expected} == {"keyword", "semantic"}
    assert [row["key"] for row in rows] == [item["key"] for item in items]
    for row, result in zip(rows, expected, strict=False):
        assert {name: row[name] for name in result.to_dict()} == result.to_dict()
        assert row["error"] is None and row["engine"].startswith(default_semantic_matcher.model_id or "")
    assert rows[-2]["error"].startswith("query is empty") and rows[-2]["matched"] is None
    assert rows[-1]["error"] == "the text is null"
    assert set(RESULT_COLUMNS) <= set(rows[0])


@pytest.mark.parametrize("out_name", ["out.jsonl", "out.parquet"])
def test_batch_on_ray_writes_what_a_local_run_writes(local_ray: str, tmp_path: Path, out_name: str,
                                                     semantic_cache: Path) -> None:
    texts: list[object] = [*corpus_texts()[5::11], "", 42]
    source = write_requests(tmp_path / "in.jsonl", texts)
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    for folder, how in ((local, None), (on_ray, "local")):
        folder.mkdir()
        run_batch(BatchOptions(input=source, output=folder / out_name, id_column="key", semantic=True,
                               cache_dir=semantic_cache, ray=how, workers=2, batch_size=16,
                               unmatched=folder / "unmatched.jsonl"))
    for name in (out_name, "out.errors.jsonl", "unmatched.jsonl"):
        assert (on_ray / name).read_bytes() == (local / name).read_bytes(), name
    assert len(output_rows(on_ray / "out.errors.jsonl")) == 2
    assert ray.is_initialized()  # a Ray the caller started is left running


def test_the_command_line_joins_an_existing_ray_cluster(local_ray: str, tmp_path: Path, semantic_cache: Path,
                                                        default_semantic_matcher: Matcher) -> None:
    texts = corpus_texts()[7::29]
    source = write_requests(tmp_path / "in.jsonl", list(texts))
    assert local_ray.startswith("127.0.0.1:")
    # A driver joins a cluster with token authentication (Ray's default) as any Ray driver does.
    out = batch_cli(str(source), str(tmp_path / "out.jsonl"), "--ray", local_ray, "--workers", "2",
                    "--semantic", "on", "--id-column", "key", "--json", "--no-progress",
                    env={**LOOPBACK_ONLY, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")})
    assert out.returncode == 0, out.stderr
    expected = default_semantic_matcher.match_many(texts)
    assert output_rows(tmp_path / "out.jsonl") == [{"id": f"q{i}", **r.to_dict()} for i, r in enumerate(expected)]
    assert json.loads(out.stdout)["results"] == len(texts)
