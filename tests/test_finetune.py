"""Fine-tuning the embedding model on a catalog: reproducible, loadable by `Matcher`, the CLI and the server."""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx
import numpy as np
import pytest

import matcher
from matcher.cli import main
from matcher.finetune import RECORD_FILE, FinetuneReport, FinetuneSettings, finetune, training_batches
from matcher.semantic import semantic_available

from .conftest import small_records

pytestmark = pytest.mark.skipif(not semantic_available(), reason="needs the semantic extra")
FAST = FinetuneSettings(epochs=1, batch_size=4, seed=0, threads=1)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> FinetuneReport:
    """The small catalog's fine-tuned MiniLM (one epoch: a few steps, seconds on the CPU)."""
    return finetune(matcher.Catalog.from_records(small_records()), tmp_path_factory.mktemp("ft") / "model",
                    settings=FAST)


def test_batches_hold_each_task_once_and_use_every_text_as_an_anchor() -> None:
    texts = [("a", ["a1", "a2", "a3"]), ("b", ["b1", "b2"]), ("c", ["c1"])]
    owner = {t: task for task, group in texts for t in group}
    batches = training_batches(texts, 3, random.Random(0))
    anchors = [anchor for batch in batches for anchor, _ in batch]
    assert len(anchors) == len(set(anchors)) == 5  # each text once; a's last, alone in its round, has no negative
    for batch in batches:
        assert len(batch) >= 2
        assert len({owner[a] for a, _ in batch}) == len(batch)  # no task twice: every other row is a negative
        for anchor, positive in batch:
            assert owner[anchor] == owner[positive]
            assert anchor != positive or len(dict(texts)[owner[anchor]]) == 1
    assert batches == training_batches(texts, 3, random.Random(0))


def test_a_run_saves_a_loadable_model_and_its_record(tuned: FinetuneReport) -> None:
    assert tuned.tasks == 3 and tuned.texts == 9 and tuned.steps >= 2 and tuned.threads == 1
    record = json.loads((tuned.out / RECORD_FILE).read_text(encoding="utf-8"))
    assert record["weights_sha256"] == tuned.weights_sha256
    assert record["catalog_fingerprint"] == matcher.Catalog.from_records(small_records()).fingerprint
    assert record["settings"]["seed"] == 0
    settings = json.loads((tuned.out / "sentence_bert_config.json").read_text(encoding="utf-8"))
    assert settings["max_seq_length"] == 256  # the truncation the ONNX export must copy


def test_the_same_seed_gives_the_same_weights_and_another_seed_others(tuned: FinetuneReport, tmp_path: Path) -> None:
    catalog = matcher.Catalog.from_records(list(reversed(small_records())))  # catalog order does not matter
    again = finetune(catalog, tmp_path / "again", settings=FAST)
    assert again.weights_sha256 == tuned.weights_sha256
    assert (again.first_epoch_loss, again.last_epoch_loss) == (tuned.first_epoch_loss, tuned.last_epoch_loss)
    other = finetune(catalog, tmp_path / "other", settings=FinetuneSettings(epochs=1, batch_size=4, seed=1, threads=1))
    assert other.weights_sha256 != tuned.weights_sha256


def test_a_matcher_loads_the_folder_through_onnx(tuned: FinetuneReport, tmp_path: Path) -> None:
    catalog = matcher.Catalog.from_records(small_records())
    m = matcher.Matcher(catalog, semantic=tuned.out, cache_dir=tmp_path)
    assert m.embedder is not None
    assert m.embedder.model_id.startswith(str(tuned.out.resolve()))
    assert getattr(m.embedder, "backend", None) == "onnx"  # the export of the tuned folder passed its check
    base = matcher.Matcher(catalog, semantic=True, cache_dir=tmp_path)
    query = ["pull totals out of supplier invoices"]
    assert not np.allclose(m.embedder.encode(query), base.embedder.encode(query), atol=1e-4)  # type: ignore[union-attr]
    with pytest.warns(matcher.ConfigWarning, match="self-calibration needs"):  # 6 phrases: too few to hold out
        result = m.match("pull totals out of supplier invoices")
    assert result.candidates[0].task_id == "invoice-extraction"
    by_name = matcher.Matcher(catalog, semantic=str(tuned.out), cache_dir=tmp_path).embedder
    assert by_name is not None and by_name.model_id == m.embedder.model_id


def test_the_default_catalog_with_a_tuned_model_does_not_take_the_shipped_config(tuned: FinetuneReport) -> None:
    m = matcher.Matcher(semantic=tuned.out, cache_dir=tuned.out.parent / "cache")
    assert m._config is None  # self-calibrated on first use: the shipped weights were tuned with the shipped model


def test_bad_folders_and_settings_are_refused_with_a_way_out(tuned: FinetuneReport, tmp_path: Path) -> None:
    catalog = matcher.Catalog.from_records(small_records())
    with pytest.raises(matcher.FinetuneError, match="overwrite"):
        finetune(catalog, tuned.out, settings=FAST)
    with pytest.raises(matcher.FinetuneError, match="at least 2 tasks"):
        finetune(matcher.Catalog.from_records(small_records()[:1]), tmp_path / "one", settings=FAST)
    with pytest.raises(matcher.FinetuneError, match="batch_size"):
        FinetuneSettings(batch_size=1)
    with pytest.raises(matcher.FinetuneError, match="epochs"):
        FinetuneSettings(epochs=0)
    with pytest.raises(matcher.ConfigError, match="does not exist"):
        matcher.Matcher(catalog, semantic=tmp_path / "missing")
    with pytest.raises(matcher.ConfigError, match=r"no modules\.json"):
        matcher.Matcher(catalog, semantic=tmp_path)
    assert not list(tmp_path.glob(".one-*"))  # nothing half-written left behind


def test_the_cli_fine_tunes_and_matches_with_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    catalog_file = tmp_path / "catalog.jsonl"
    catalog_file.write_text("".join(json.dumps(r) + "\n" for r in small_records()), encoding="utf-8")
    out = tmp_path / "model"
    assert main(["finetune", str(catalog_file), "--out", str(out), "--epochs", "1", "--batch-size", "4",
                 "--threads", "1"]) == 0
    shown = capsys.readouterr()
    assert "fine-tuned 3 tasks" in shown.out
    assert "fine-tuning: 100%" in shown.err  # the progress bar reached its last step
    assert main(["finetune", str(catalog_file), "--out", str(out), "--epochs", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["--catalog", str(catalog_file), "--model", str(out), "--json",
                 "read line items from bills"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["candidates"][0]["task_id"] == "invoice-extraction"


def test_the_server_serves_the_model_over_http(tuned: FinetuneReport, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from matcher.server import ServerSettings, serve_in_background

    monkeypatch.setenv("TASK_MATCHER_CACHE", str(tmp_path / "cache"))
    catalog_file = tmp_path / "catalog.jsonl"
    catalog_file.write_text("".join(json.dumps(r) + "\n" for r in small_records()), encoding="utf-8")
    settings = ServerSettings.from_env(ServerSettings(catalog=catalog_file, model=tuned.out).to_env())
    assert settings.model == tuned.out.resolve()
    library = matcher.Matcher(matcher.load_catalog(catalog_file), semantic=tuned.out)
    with serve_in_background(settings.build_app()) as url:
        response = httpx.post(f"{url}/v1/tasks/match", json={"query": "scan restaurant receipts"}, timeout=120)
    assert response.status_code == 200
    expected = library.match("scan restaurant receipts")
    assert [c["task_id"] for c in response.json()["candidates"]] == [c.task_id for c in expected.candidates]
    assert [c["score"] for c in response.json()["candidates"]] == [c.score for c in expected.candidates]
