"""Leaderboards from eval results: ranking and pick rules, bad rows, the boards file, and the seed's
full discovery pass against `task-matcher serve` with the real pareta client."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pareta
import pytest

import matcher
from matcher.cli import main
from matcher.generation import Generation
from matcher.leaderboard import Leaderboards, board_body, import_results, leaderboards_path, rank_models

from .test_server import ServeProcess, serve_process

__all__ = ["serve_process"]  # the fixture, shared with test_server

CATALOG_DIR = Path(matcher.__file__).parent / "data" / "catalog"


def row(model: str, task_id: str = "contract-key-fields", *, kind: str = "open", quality: float = 0.8,
        cost: int = 100, context_k: int = 32, **extra: Any) -> dict[str, Any]:
    return {"model": model, "kind": kind, "task_id": task_id, "quality": quality,
            "cost_per_request_micro_usd": cost, "context_k": context_k, **extra}


RESULTS = [
    row("qwen-1", quality=0.81, cost=120),
    row("llama-2", quality=0.86, cost=150, context_k=128),
    row("mistral-1", quality=0.86, cost=200),  # ties llama-2 on quality: the cheaper one ranks first
    row("gemma-1", quality=0.86, cost=150),    # ties llama-2 on quality and cost: by name
    row("frontier-b", kind="frontier", quality=0.91, cost=3900, context_k=200),
    row("frontier-a", kind="frontier", quality=0.93, cost=4100, context_k=200),
    row("qwen-1", "invoice-extraction", quality=0.7, cost=90),
]


def write_rows(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_import_ranks_by_quality_then_cost_then_name_and_recommends_the_top_open_model(tmp_path: Path) -> None:
    boards = import_results(write_rows(tmp_path / "results.jsonl", RESULTS), matcher.default_catalog())
    board = board_body(matcher.default_catalog().get("contract-key-fields"), boards)
    assert [m["name"] for m in board["models"]] == [
        "frontier-a", "frontier-b", "gemma-1", "llama-2", "mistral-1", "qwen-1"]
    assert board["recommended"] == "gemma-1"
    assert board["frontier"]["name"] == "frontier-a" and board["frontier"]["quality"] == 0.93
    assert board["illustrative"] is False and board["metric"] == "quality"
    assert board_body(matcher.default_catalog().get("invoice-extraction"), boards)["recommended"] == "qwen-1"
    assert board_body(matcher.default_catalog().get("sentiment-analysis"), boards)["models"] == []


def test_a_curated_pick_wins_and_must_be_on_the_board(tmp_path: Path) -> None:
    results = write_rows(tmp_path / "results.jsonl", RESULTS)
    boards = import_results(results, matcher.default_catalog(), recommend={"contract-key-fields": "qwen-1"})
    assert board_body(matcher.default_catalog().get("contract-key-fields"), boards)["recommended"] == "qwen-1"
    with pytest.raises(matcher.LeaderboardError, match="recommended pick 'nobody' for task 'contract-key-fields' "
                                                       "is not on its board"):
        import_results(results, matcher.default_catalog(), recommend={"contract-key-fields": "nobody"})
    with pytest.raises(matcher.LeaderboardError, match="the results hold no model for it"):
        import_results(results, matcher.default_catalog(), recommend={"sentiment-analysis": "qwen-1"})


def test_a_board_without_a_scored_open_model_recommends_none() -> None:
    assert rank_models([{"name": "b", "kind": "open"}, {"name": "a", "kind": "open", "quality": 0.1}])[0]["name"] == "a"
    task = matcher.Catalog.from_records([{"id": "t", "title": "Task", "leaderboard": {
        "models": [{"name": "f", "kind": "frontier", "quality": 0.9}, {"name": "o", "kind": "open"}]}}]).get("t")
    assert board_body(task)["recommended"] is None


def test_every_bad_row_is_reported_with_its_line_and_nothing_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = write_rows(tmp_path / "results.jsonl", [
        row("good-1"),
        "{not json",
        row("m", quality=1.5),
        row("m", kind="closed"),
        row("m", cost=-1),
        row("m", context_k=True),
        row("m", task_id="contract-key-field"),
        {"model": "m", "task_id": "contract-key-fields"},
        row("m", extra_key=1),
        row("good-1", quality=0.5),
        row("has space"),
    ])
    with pytest.raises(matcher.LeaderboardError) as error:
        import_results(results, matcher.default_catalog())
    problems = error.value.problems
    expected = [
        ":2: not valid JSON",
        ":3: quality must be a number in [0, 1], got 1.5",
        ":4: kind must be 'open' or 'frontier', got 'closed'",
        ":5: cost_per_request_micro_usd must be a non-negative integer, got -1",
        ":6: context_k must be a non-negative integer, got True",
        ":7: unknown task id 'contract-key-field'; did you mean 'contract-key-fields'",
        ":8: missing key(s) kind, quality, cost_per_request_micro_usd, context_k",
        ":9: unknown key(s) extra_key",
        ":10: model 'good-1' is listed twice for task 'contract-key-fields' (first at line 1)",
        ":11: model must be a non-empty name without spaces",
    ]
    assert len(problems) == len(expected)
    for problem, fragment in zip(problems, expected, strict=True):
        assert fragment in problem, (problem, fragment)
    out = tmp_path / "boards.json"
    assert main(["leaderboard", "import", str(results), "--out", str(out)]) == 2
    assert "10 problems" in capsys.readouterr().err
    assert not out.exists()


def test_the_command_writes_the_catalog_side_file_that_generations_read(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    catalog = tmp_path / "catalog"
    shutil.copytree(CATALOG_DIR, catalog)
    results = write_rows(tmp_path / "results.jsonl", RESULTS)
    assert main(["leaderboard", "import", str(results), "--catalog", str(catalog)]) == 0
    printed = capsys.readouterr().out
    assert "contract-key-fields  6       gemma-1      frontier-a" in printed
    sidecar = leaderboards_path(catalog)
    assert sidecar == tmp_path / "catalog.leaderboards.json" and sidecar.is_file()
    generation = Generation.load(catalog)
    assert generation.leaderboards is not None
    assert generation.leaderboards.to_dict() == Leaderboards.load(sidecar, generation.catalog).to_dict()
    # boards never change the catalog's fingerprint: the shipped config still fits it
    assert generation.catalog.fingerprint == matcher.default_catalog().fingerprint
    assert generation.fingerprint != Generation(generation.catalog).fingerprint
    snapshot = generation.write(tmp_path / "generations")
    assert Generation.read(snapshot, fingerprint=generation.fingerprint).leaderboards == generation.leaderboards
    assert main(["leaderboard", "import", str(results)]) == 2
    assert "--out is required with the bundled catalog" in capsys.readouterr().err


def test_a_boards_file_for_another_catalog_is_refused(tmp_path: Path) -> None:
    boards = import_results(write_rows(tmp_path / "results.jsonl", RESULTS), matcher.default_catalog())
    path = boards.save(tmp_path / "boards.json")
    other = matcher.Catalog.from_records([{"id": "contract-key-field", "title": "Contracts"}])
    with pytest.raises(matcher.LeaderboardError, match="board for unknown task id 'contract-key-fields'; did you mean "
                                                       "'contract-key-field'"):
        Leaderboards.load(path, other)
    path.write_text("{}", encoding="utf-8")
    with pytest.raises(matcher.LeaderboardError, match="not a task-matcher-leaderboards version 1 file"):
        Leaderboards.load(path, other)


def test_the_seeds_full_discovery_pass_against_task_matcher_serve(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve_process: Callable[..., ServeProcess]) -> None:
    catalog = tmp_path / "catalog"
    shutil.copytree(CATALOG_DIR, catalog)
    assert main(["leaderboard", "import", str(write_rows(tmp_path / "results.jsonl", RESULTS)),
                 "--catalog", str(catalog)]) == 0
    server = serve_process("--semantic", "off", "--catalog", str(catalog))
    try:
        server.wait_until_ready(timeout=120)
        monkeypatch.setenv("PARETA_API_KEY", "unused")
        monkeypatch.setenv("PARETA_BASE_URL", server.url)
        # the seed's "full discovery pass", step for step
        pa = pareta.Pareta.from_env()
        match = pa.tasks.match("extract key fields from contracts")
        assert match.matched, [c.task_id for c in match.candidates]
        task_id = match.chosen.task_id
        task = pa.tasks.retrieve(task_id)
        board = pa.tasks.leaderboard(task_id)
        pick = board.recommended
        frontier_q = board.frontier.quality if board.frontier else None
        recommended = pa.tasks.recommended(task_id)
        pa.close()
    finally:
        server.stop()
    expected = matcher.default_catalog().get("contract-key-fields")
    assert task_id == "contract-key-fields"
    assert (task.id, task.default_scorer, task.has_blob_input) == (
        expected.id, expected.default_scorer, expected.has_blob_input)
    assert (pick, frontier_q, recommended) == ("gemma-1", 0.93, "gemma-1")
    assert [(m.name, m.kind, m.quality, m.cost_per_request_micro_usd, m.context_k) for m in board.models][:3] == [
        ("frontier-a", "frontier", 0.93, 4100, 200), ("frontier-b", "frontier", 0.91, 3900, 200),
        ("gemma-1", "open", 0.86, 150, 32)]
