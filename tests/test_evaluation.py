"""`task-matcher evaluate` and `matcher.evaluation`: the figures agree with the engine's own answers,
planted errors show up where they should, and every file of the report is written."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

import matcher
from matcher import metrics
from matcher.cli import main
from matcher.evaluation import PlotsUnavailableError, evaluate, write_report

CONTRACTS = "extract key fields from contracts"
INVOICES = "pull line items and totals out of vendor invoices"
GIBBERISH = "asdkjh qwpoeiru zxcmvn"
ROWS: list[tuple[str, str | None]] = [
    (CONTRACTS, "contract-key-fields"),
    (INVOICES, "invoice-extraction"),
    (CONTRACTS, "invoice-extraction"),  # planted: the matcher answers contract-key-fields
    (GIBBERISH, None),
    ("classify support tickets by urgency", "support-ticket-triage"),
]


def test_figures_are_the_engines_own_answers_measured(default_keyword_matcher: matcher.Matcher) -> None:
    result = evaluate(default_keyword_matcher, ROWS, top_k=3)
    direct = [metrics.prediction(gold, default_keyword_matcher.match(text, 3)) for text, gold in ROWS]
    assert list(result.predictions) == direct
    assert result.per_task == metrics.per_task_scores(direct)
    planted = [m for m in result.misclassified() if m.text == CONTRACTS]
    assert [(m.labelled, m.answered, m.kind) for m in planted] == [
        ("invoice-extraction", "contract-key-fields", "wrong answer")]
    assert ("invoice-extraction", "contract-key-fields", 1) in result.confusions()
    by_task = {s.task_id: s for s in result.per_task}
    assert by_task["contract-key-fields"].answered == 2 and by_task["contract-key-fields"].precision == 0.5
    assert result.summary["out_of_scope"] == 1 and result.summary["oos_recall"] == 1.0  # gibberish: no match
    sweep = result.sweep()
    assert sweep[0][2] == 1.0 and sweep[-1][0] == 1.0  # threshold 0 accepts everything
    assert sum(c for *_, c in result.reliability()) == len(ROWS)


def test_an_unknown_label_is_refused_naming_the_closest(default_keyword_matcher: matcher.Matcher) -> None:
    with pytest.raises(matcher.UnknownTaskError, match="'contract-key-fields'"):
        evaluate(default_keyword_matcher, [(CONTRACTS, "contract-key-field")])
    with pytest.raises(ValueError, match="no labelled queries"):
        evaluate(default_keyword_matcher, [])


def write_labelled(path: Path, rows: list[tuple[str, str | None]]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "task_id": g}) + "\n" for t, g in rows), encoding="utf-8")
    return path


def test_the_command_writes_the_report_and_its_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labelled = write_labelled(tmp_path / "mine.jsonl", ROWS)
    out = tmp_path / "report"
    assert main(["evaluate", str(labelled), "--semantic", "off", "--out", str(out)]) == 0
    assert f"{len(ROWS)} queries: top-1" in capsys.readouterr().out
    for name in ("reliability.png", "threshold_sweep.png"):
        blob = (out / name).read_bytes()
        assert blob.startswith(b"\x89PNG\r\n\x1a\n") and len(blob) > 10_000, name
    report = (out / "report.md").read_text(encoding="utf-8")
    for heading in ("## Summary", "## Confidence tiers", "## Per task", "## Confusion pairs",
                    "## Misclassified examples", "![Reliability diagram](reliability.png)"):
        assert heading in report
    assert "| invoice-extraction | contract-key-fields | 1 |" in report
    assert "shipped, tuned for this catalog" in report
    with open(out / "per_task.csv", encoding="utf-8") as handle:
        per_task = {row["task_id"]: row for row in csv.DictReader(handle)}
    assert per_task["contract-key-fields"]["precision"] == "0.5000"
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["queries"] == len(ROWS) and len(summary["threshold_sweep"]) == 201
    errors = [json.loads(line) for line in (out / "misclassified.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {"text": CONTRACTS, "labelled": "invoice-extraction", "answered": "contract-key-fields",
            "kind": "wrong answer"}.items() <= errors[0].items()


def test_any_catalog_and_its_own_labels(tmp_path: Path, small_catalog: matcher.Catalog) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps([{**t.to_dict(examples_n=None)} for t in small_catalog.list()]), encoding="utf-8")
    labelled = write_labelled(tmp_path / "labels.jsonl", [("read line items from bills", "invoice-extraction"),
                                                          ("are customers happy", "sentiment-analysis")])
    config = tmp_path / "config.json"
    matcher.MatcherConfig().save(config)
    out = tmp_path / "out"
    assert main(["evaluate", str(labelled), "--catalog", str(catalog), "--config", str(config), "--semantic", "off",
                 "--no-plots", "--out", str(out)]) == 0
    assert not list(out.glob("*.png"))
    assert "Reliability diagram" not in (out / "report.md").read_text(encoding="utf-8")
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["config"] == str(config)


def test_bad_input_and_a_missing_matplotlib_get_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    labelled = write_labelled(tmp_path / "mine.jsonl", [(CONTRACTS, "contract-key-field")])
    assert main(["evaluate", str(labelled), "--semantic", "off", "--out", str(tmp_path / "o")]) == 2
    assert "unknown task id 'contract-key-field'; did you mean 'contract-key-fields'" in capsys.readouterr().err
    good = write_labelled(tmp_path / "good.jsonl", ROWS)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # what an install without the extra sees
    with pytest.raises(PlotsUnavailableError, match=r"pip install 'task-matcher\[evaluate\]'"):
        write_report(evaluate(matcher.Matcher(semantic=False), ROWS), tmp_path / "never")
    assert not (tmp_path / "never").exists()
    assert main(["evaluate", str(good), "--semantic", "off", "--out", str(tmp_path / "o")]) == 2
    assert "the figures need matplotlib: pip install 'task-matcher[evaluate]'" in capsys.readouterr().err
