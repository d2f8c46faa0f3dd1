"""The command line, run as users run it: `python -m matcher` and the `task-matcher` script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from matcher.cli import main

from .conftest import REPO, small_records


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "matcher", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)


def test_json_output_is_the_api_body_and_matches_the_contract_example() -> None:
    out = run("extract key fields from contracts", "--json", "--semantic", "off")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["matched"] is True
    assert body["chosen"]["task_id"] == "contract-key-fields"
    assert body["matcher"] == "keyword"
    assert "explanations" not in body


def test_table_output_is_ranked_and_aligned(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pull line items and totals out of vendor invoices", "--top-k", "3",
                 "--semantic", "off"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("matched invoice-extraction")
    header, rule, *rows = lines[2:]
    assert header.split() == ["rank", "task", "score", "confidence"]
    assert len(rows) == 3
    assert rows[0].split()[:2] == ["1", "invoice-extraction"]
    score_column = header.index("score")
    assert all(row[score_column - 2:score_column] == "  " for row in rows)
    assert set(rule.replace(" ", "")) == {"-"}


def test_explain_flag_shows_terms_and_corrections(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["invoce parsing", "--explain", "--semantic", "off", "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "fuzzy corrections: invoce -> invoice" in out
    assert "nearest phrase:" in out
    assert main(["invoce parsing", "--explain", "--json", "--semantic", "off"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["explanations"][0]["corrections"][0]["corrected"] == "invoice"


def test_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "invoice-extraction" in out
    assert "unsupported-" not in out
    assert main(["show", "receipt-extraction", "--examples", "1"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["id"] == "receipt-extraction"
    assert len(record["examples"]) == 1
    assert main(["list", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["tasks"]) == 58


def test_custom_catalog_and_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cat.yaml").write_text(yaml.safe_dump({"tasks": small_records()}))
    config = tmp_path / "config.json"
    from matcher import MatcherConfig

    MatcherConfig(high_threshold=0.01, medium_threshold=0.0, high_margin=0.0).save(config)
    assert main(["receipts from restaurants", "--catalog", str(tmp_path / "cat.yaml"), "--config",
                 str(config), "--json", "--semantic", "off"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["chosen"]["task_id"] == "receipt-extraction"
    assert len(body["candidates"]) == 3


@pytest.mark.parametrize(("args", "message"), [
    (["   "], "empty"),
    (["invoices", "--top-k", "0"], "--top-k must be >= 1"),
    (["show", "invoice-extractoin"], "did you mean 'invoice-extraction'"),
    (["invoices", "--catalog", "/nonexistent/catalog.yaml"], "no such catalog file"),
])
def test_errors_exit_2_with_a_message(args: list[str], message: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*args, "--semantic", "off"] if args[0] != "show" else args) == 2
    assert message in capsys.readouterr().err


def test_a_query_named_like_a_command_goes_after_match(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["match", "list", "--semantic", "off", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["query"] == "list"


def test_tune_writes_a_config_that_loads(tmp_path: Path) -> None:
    labelled = tmp_path / "labelled.jsonl"
    rows = [{"text": r["phrases"][i], "task_id": r["id"]} for r in small_records() for i in range(2)]
    rows += [{"text": t, "task_id": r["id"]} for r in small_records() for t in (r["title"], r["description"])]
    rows += [{"text": "what is the weather", "task_id": None}]
    labelled.write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "cat.yaml").write_text(yaml.safe_dump({"tasks": small_records()}))
    out = run("tune", str(labelled), "--out", str(tmp_path / "cfg.json"), "--semantic", "off",
              "--catalog", str(tmp_path / "cat.yaml"))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["queries"] == len(rows)
    from matcher import MatcherConfig

    assert MatcherConfig.load(tmp_path / "cfg.json").tuning is not None
    as_labelled = run("tune", str(labelled), "--out", str(tmp_path / "cfg2.json"), "--semantic", "off",
                      "--catalog", str(tmp_path / "cat.yaml"), "--out-of-scope-share", "none")
    assert as_labelled.returncode == 0, as_labelled.stderr
    bad = run("tune", str(labelled), "--out", str(tmp_path / "cfg3.json"), "--out-of-scope-share", "1.5")
    assert bad.returncode == 2
    assert "expected a number in (0, 1) or 'none', got '1.5'" in bad.stderr


@pytest.mark.skipif(shutil.which("task-matcher", path=str(Path(sys.executable).parent)) is None,
                    reason="the console script is not installed in this environment")
def test_console_script_is_installed() -> None:
    script = str(Path(sys.executable).parent / "task-matcher")
    out = subprocess.run([script, "list"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert "contract-key-fields" in out.stdout
