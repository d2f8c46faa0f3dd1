"""The command line, run as users run it: `python -m matcher` and the `task-matcher` script."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from matcher import Matcher, default_catalog
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
    assert main(["extract fields from invoices and receipts", "--top-k", "3", "--semantic", "off"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "matched invoice-extraction (high, via keyword)"
    start = next(i for i, line in enumerate(lines) if line.startswith("rank"))
    header, rule, *rows = lines[start:]
    assert header.split() == ["rank", "task", "score", "confidence"]
    assert len(rows) == 3
    assert rows[0].split()[:2] == ["1", "invoice-extraction"]
    score_column = header.index("score")
    assert all(row[score_column - 2:score_column] == "  " for row in rows)
    assert set(rule.replace(" ", "")) == {"-"}


def table_rows(out: str) -> list[str]:
    """The candidate rows of the text output: rank, task, score, confidence."""
    return [line for line in out.splitlines() if re.fullmatch(r"\d+ +\S+ +\d\.\d{4} +\w+", line)]


def test_text_output_states_the_outcome_and_the_reasoning(capsys: pytest.CaptureFixture[str]) -> None:
    query = "pull line items and totals out of vendor invoices"
    assert main([query, "--top-k", "3", "--semantic", "off"]) == 0
    out = capsys.readouterr().out
    assert main([query, "--top-k", "3", "--semantic", "off", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    lines = out.splitlines()
    assert lines[0] == "matched invoice-extraction (high, via keyword)"
    assert " ".join(out.split()).count(" ".join(body["reasoning"].split())) == 1
    assert [row.split()[1] for row in table_rows(out)] == ["invoice-extraction"]
    assert "2 more candidates scored 0" in lines


def test_out_of_scope_request_says_so_without_a_table_of_zeros(capsys: pytest.CaptureFixture[str]) -> None:
    query = "make me a video of a cat"
    assert main([query, "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert main([query]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"out of scope ({body['confidence']}, via {body['matcher']})")
    assert body["type"] == "unsupported"
    assert " ".join(body["reasoning"].split()) in " ".join(out.split())
    nonzero = [c["task_id"] for c in body["candidates"] if c["score"] > 0]
    assert [row.split()[1] for row in table_rows(out)] == nonzero
    assert "0.0000" not in out
    if not nonzero:
        assert "no candidate scored above 0" in out


def test_capability_lane_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    query = "let's just chat"
    assert main([query, "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["type"] == "capability"
    assert main([query]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"capability: {body['capability']['id']} ({body['confidence']}, ")
    assert " ".join(body["reasoning"].split()) in " ".join(out.split())


def test_unknown_words_say_that_nothing_matched(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zxqv wplk", "--semantic", "off"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "no confident match (via keyword)"
    assert "None of the request's words appear in any task profile, so nothing matched." in out


def test_all_zero_candidates_are_not_tabulated(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["make me a video of a cat", "--semantic", "off", "--json"]) == 0
    assert {c["score"] for c in json.loads(capsys.readouterr().out)["candidates"]} == {0.0}
    assert main(["make me a video of a cat", "--semantic", "off"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("out of scope (")
    assert out.splitlines()[-1] == "no candidate scored above 0"
    assert "rank" not in out
    assert table_rows(out) == []


def test_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "invoice-extraction" in out
    assert "unsupported-" not in out
    assert main(["show", "receipt-extraction", "--examples", "1", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["id"] == "receipt-extraction"
    assert len(record["examples"]) == 1
    assert main(["list", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["tasks"]) == 58


def test_show_prints_a_readable_record_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "receipt-extraction", "--examples", "1", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert main(["show", "receipt-extraction", "--examples", "1"]) == 0
    out = capsys.readouterr().out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)
    fields = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in out.splitlines()
              if not line.startswith(" ") and ":" in line}
    assert fields["id"] == "receipt-extraction"
    assert fields["title"] == record["title"]
    assert fields["category"] == record["category"]
    assert fields["blob input"] == ("yes" if record["has_blob_input"] else "no")
    assert fields["scorer"] == record["default_scorer"]
    assert fields["description"] in record["description"]
    assert fields["phrases"] == str(len(record["phrases"]))
    assert fields["examples"].startswith(str(len(default_catalog().get("receipt-extraction").examples)))
    assert "receipt (1)" in fields["keywords"]
    assert all(f"  - {phrase}" in out for phrase in record["phrases"] if len(phrase) < 80)
    assert f"  - {json.dumps(record['examples'][0], ensure_ascii=False)}" in out.splitlines()


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
    (["list", "--catalog", "/nonexistent/catalog.yaml"], "/nonexistent/catalog.yaml: no such"),
    (["show", "invoice-extraction", "--catalog", "/nonexistent/catalog.yaml"], "/nonexistent/catalog.yaml: no such"),
    (["confusability", "--catalog", "/nonexistent/catalog.yaml"], "/nonexistent/catalog.yaml: no such"),
    (["invoices", "--config", "/nonexistent/config.json"], "/nonexistent/config.json: cannot read matcher config"),
])
def test_errors_exit_2_with_a_message(args: list[str], message: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*args, "--semantic", "off"] if args[0] not in ("show", "list", "confusability") else args) == 2
    err = capsys.readouterr().err
    assert err.startswith("task-matcher: error: ")
    assert message in err


def labelled_rows() -> list[dict[str, str | None]]:
    """Enough labelled queries over `small_records()` for `tune`, a few of them out of scope."""
    rows: list[dict[str, str | None]] = [{"text": r["phrases"][i], "task_id": r["id"]}
                                         for r in small_records() for i in range(2)]
    rows += [{"text": t, "task_id": r["id"]} for r in small_records() for t in (r["title"], r["description"])]
    rows += [{"text": t, "task_id": None} for t in ("what is the weather", "book me a flight to rome",
                                                    "tell me a joke", "play some jazz", "order a pizza")]
    return rows


def test_missing_tune_input_is_an_error_message_not_a_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    out = run("tune", str(missing), "--out", str(tmp_path / "cfg.json"), "--semantic", "off")
    assert out.returncode == 2
    assert out.stderr.startswith(f"task-matcher: error: {missing}: ")
    assert "no such file" in out.stderr.lower()
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("out", ["a-file/cfg.json", "a-directory"])
def test_unwritable_tune_output_fails_before_the_fit(out: str, tmp_path: Path) -> None:
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("\n".join(json.dumps(r) for r in labelled_rows()))
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-directory").mkdir()
    result = run("tune", str(labelled), "--out", str(tmp_path / out), "--semantic", "off")
    assert result.returncode == 2, result.stderr
    blocker = tmp_path / out.split("/")[0]
    assert result.stderr.startswith(f"task-matcher: error: {blocker}: "), result.stderr
    assert "Traceback" not in result.stderr


def test_catalog_warnings_are_one_plain_line(tmp_path: Path) -> None:
    records = small_records()[:2]
    records[1]["keywords"] = {**records[1]["keywords"], "invoice": 0.5}
    (tmp_path / "cat.yaml").write_text(yaml.safe_dump({"tasks": records}))
    out = run("list", "--catalog", str(tmp_path / "cat.yaml"))
    assert out.returncode == 0, out.stderr
    assert "receipt-extraction" in out.stdout
    warning_lines = out.stderr.splitlines()
    assert len(warning_lines) == 1, out.stderr
    assert warning_lines[0].startswith("task-matcher: warning: ")
    assert "'invoice'" in warning_lines[0]
    assert ".py:" not in out.stderr
    assert "CatalogWarning" not in out.stderr


def test_version_flag_and_attribute() -> None:
    from importlib import metadata

    import matcher

    installed = metadata.version("task-matcher")
    assert matcher.__version__ == installed
    assert "__version__" in matcher.__all__
    out = run("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"task-matcher {installed}\n"
    assert "--version" in run("--help").stdout


def test_import_matcher_stays_light() -> None:
    code = ("import sys, matcher; matcher.__version__; "
            "print(sorted(m for m in ('torch', 'sklearn', 'scipy', 'fastapi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def big_catalog(path: Path, tasks: int = 1200) -> Path:
    """A catalog whose `list` table is larger than a pipe buffer (64 KiB), so writing it must block."""
    records = [{"id": f"generated-task-{i:05d}", "title": f"Generated task number {i} with a long title",
                "description": f"Synthetic task {i}.", "keywords": {f"word{i}": 1.0}} for i in range(tasks)]
    path.write_text(yaml.safe_dump({"tasks": records}))
    return path


def read_one_line_then_close(*args: str, read: bool = True) -> tuple[bytes, int, str]:
    """Run the CLI into a pipe whose reader takes at most one line and closes, like `| head -1`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with subprocess.Popen([sys.executable, "-m", "matcher", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env, cwd=REPO) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline() if read else b""
        proc.stdout.close()
        err = proc.stderr.read().decode()
        return first, proc.wait(timeout=120), err


@pytest.mark.parametrize("case", ["closed-before-output", "json", "big-table"])
def test_a_reader_that_closes_early_ends_quietly(case: str, tmp_path: Path) -> None:
    if case == "closed-before-output":
        first, status, err = read_one_line_then_close("list", read=False)
    elif case == "json":
        first, status, err = read_one_line_then_close("list", "--json")
        assert first == b"{\n"
    else:
        first, status, err = read_one_line_then_close("list", "--catalog", str(big_catalog(tmp_path / "big.yaml")))
        assert first.split() == [b"task", b"category", b"blob", b"input", b"scorer", b"title"]
    assert status == 0, err
    assert "Traceback" not in err
    assert "BrokenPipe" not in err
    assert "Exception ignored" not in err


def test_serve_without_the_server_extra_says_what_to_install() -> None:
    code = ("import sys\n"
            "for name in ('anyio', 'fastapi', 'uvicorn'):\n"
            "    sys.modules[name] = None\n"
            "from matcher.cli import main\n"
            "raise SystemExit(main(['serve']))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=120)
    assert out.returncode == 2
    assert out.stderr == ("task-matcher serve: error: the HTTP server needs the optional extra: "
                          "pip install 'task-matcher[server]' -c constraints.txt\n")


def test_a_query_named_like_a_command_goes_after_match(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["match", "list", "--semantic", "off", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["query"] == "list"


def test_tune_writes_a_config_that_loads(tmp_path: Path) -> None:
    labelled = tmp_path / "labelled.jsonl"
    rows = labelled_rows()
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


@pytest.mark.semantic
def test_the_backend_and_threads_are_chosen_on_the_command_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], semantic_cache: Path,
        default_semantic_matcher: object) -> None:
    monkeypatch.setenv("TASK_MATCHER_CACHE", str(semantic_cache))  # the export and embeddings are there
    query = "I want to know whether people like our app from what they write"
    assert main([query, "--semantic", "onnx", "--threads", "1", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert (body["matcher"], body["candidates"][0]["task_id"]) == ("semantic", "sentiment-analysis")
    assert main([query, "--semantic", "onnx", "--threads", "-2"]) == 2
    assert "threads must be >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([query, "--semantic", "gpu"])
    assert "invalid choice: 'gpu' (choose from 'auto', 'on', 'off', 'onnx', 'torch')" in capsys.readouterr().err


def test_match_can_be_scoped_to_tasks_and_categories(capsys: pytest.CaptureFixture[str]) -> None:
    query = "pull line items and totals out of vendor invoices"
    assert main([query, "--semantic", "off", "--json", "--task", "receipt-extraction",
                 "--task", "invoice-extraction", "--category", "document-extraction"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body == Matcher(semantic=False).match(query, tasks=["receipt-extraction", "invoice-extraction"],
                                                 categories=["document-extraction"]).to_dict()
    assert {c["task_id"] for c in body["candidates"]} == {"receipt-extraction", "invoice-extraction"}
    assert main([query, "--semantic", "off", "--task", "invoice-extractoin"]) == 2
    assert "did you mean 'invoice-extraction'" in capsys.readouterr().err
