"""`task-matcher batch`: results equal to `match_many` row by row, bad rows reported, crashes resumed exactly."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from matcher import BatchError, Matcher
from matcher.batch import BatchOptions, BatchSummary, _lock, _Progress, render_summary, run_batch

from .conftest import REPO

CORPUS = REPO / "corpora" / "queries"


def corpus_texts() -> list[str]:
    """Every labelled request of the corpus, in file order: both paths of the cascade and out-of-scope lines."""
    return [json.loads(line)["text"] for name in ("test.jsonl", "hard-test.jsonl")
            for line in (CORPUS / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def write_requests(path: Path, texts: list[object], *, ids: bool = True) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for i, text in enumerate(texts):
            handle.write(json.dumps({"key": f"q{i}", "text": text} if ids else {"text": text}) + "\n")
    return path


def output_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
        return rows
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.semantic
@pytest.mark.parametrize("out_name", ["out.jsonl", "out.parquet"])
def test_results_equal_match_many_row_by_row(tmp_path: Path, out_name: str, default_semantic_matcher: Matcher,
                                             semantic_cache: Path) -> None:
    texts = corpus_texts()[::9]
    source = write_requests(tmp_path / "in.jsonl", list(texts))
    summary = run_batch(BatchOptions(input=source, output=tmp_path / out_name, id_column="key", top_k=3,
                                     semantic=True, cache_dir=semantic_cache, batch_size=7, checkpoint_rows=25))
    expected = default_semantic_matcher.match_many(texts, top_k=3)
    assert {r.matcher for r in expected} == {"keyword", "semantic"}  # both paths of the cascade are in the file
    assert output_rows(tmp_path / out_name) == [{"id": f"q{i}", **r.to_dict()} for i, r in enumerate(expected)]
    assert summary.results == len(texts) and summary.errors == 0
    assert (tmp_path / "out.errors.jsonl").read_text() == ""
    assert not (tmp_path / f"{out_name}.batch").exists()  # a finished run leaves no journal behind


@pytest.mark.semantic
def test_worker_processes_give_the_same_results(tmp_path: Path, default_semantic_matcher: Matcher,
                                                semantic_cache: Path) -> None:
    texts = corpus_texts()[1::17]
    source = write_requests(tmp_path / "in.jsonl", list(texts), ids=False)
    summary = run_batch(BatchOptions(input=source, output=tmp_path / "out.jsonl", semantic=True,
                                     cache_dir=semantic_cache, workers=2, batch_size=5))
    expected = default_semantic_matcher.match_many(texts)
    assert output_rows(tmp_path / "out.jsonl") == [{"id": i, **r.to_dict()} for i, r in enumerate(expected)]
    assert summary.engine is not None and default_semantic_matcher.model_id in summary.engine


def test_bad_rows_go_to_the_errors_file_and_the_run_goes_on(tmp_path: Path, default_keyword_matcher: Matcher) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "extract invoice totals", "key": "a"}\n'
                      '{"text": "", "key": "b"}\n'
                      'oops\n'
                      f'{json.dumps({"text": "x" * 5000, "key": "c"})}\n'
                      '{"text": ["a list"], "key": "d"}\n'
                      '{"text": "transcribe a call", "key": 5}\n'
                      '{"text": "transcribe a call", "key": 2.5}\n', encoding="utf-8")
    summary = run_batch(BatchOptions(input=source, output=tmp_path / "out.jsonl", id_column="key", semantic=False))
    errors = output_rows(tmp_path / "out.errors.jsonl")
    assert [(e["row"], e["line"], e["id"]) for e in errors] == [(1, 2, "b"), (2, 3, None), (3, 4, "c"), (4, 5, "d"),
                                                                 (6, 7, None)]
    reasons = [e["reason"] for e in errors]
    assert reasons[0].startswith("query is empty or whitespace-only")
    assert reasons[1].startswith("not valid JSON")
    assert reasons[2].startswith("query is 5,000 characters; the limit is 4,096")
    assert reasons[3] == "the text must be a string, got a list"
    assert reasons[4] == "the id ('key') must be a string or an integer, got a number"
    assert errors[2]["text"] == "x" * 200  # the start of the text, so the row can be found
    results = output_rows(tmp_path / "out.jsonl")
    assert [r["id"] for r in results] == ["a", 5]
    assert results == [{"id": "a", **default_keyword_matcher.match("extract invoice totals").to_dict()},
                       {"id": 5, **default_keyword_matcher.match("transcribe a call").to_dict()}]
    assert (summary.rows, summary.results, summary.errors) == (7, 2, 5)


def test_summary_and_unmatched_requests_grouped_by_nearest_task(tmp_path: Path,
                                                                default_keyword_matcher: Matcher) -> None:
    texts = corpus_texts()[:400]
    source = write_requests(tmp_path / "in.csv", [])
    with source.open("w", encoding="utf-8", newline="") as handle:
        import csv

        writer = csv.writer(handle)
        writer.writerow(["text"])
        writer.writerows([t] for t in texts)
    summary = run_batch(BatchOptions(input=source, output=tmp_path / "out.parquet", semantic=False,
                                     unmatched=tmp_path / "unmatched.jsonl"))
    results = default_keyword_matcher.match_many(texts)
    assert summary.by_type == dict(sorted(Counter(r.type for r in results).items(), key=lambda i: (-i[1], i[0])))
    assert summary.by_matcher == {"keyword": len(texts)}
    assert summary.by_task == dict(sorted(Counter(r.chosen.task_id for r in results if r.chosen).items(),
                                          key=lambda i: (-i[1], i[0])))
    none = [(i, r) for i, r in enumerate(results) if r.type == "none"]
    assert summary.unmatched == len(none) > 10
    groups = output_rows(tmp_path / "unmatched.jsonl")
    assert [g["count"] for g in groups] == sorted((g["count"] for g in groups), reverse=True)
    assert sum(g["count"] for g in groups) == len(none)
    for group in groups:
        mine = [(i, r) for i, r in none if r.candidates[0].task_id == group["nearest_task"]]
        ordered = sorted(mine, key=lambda item: (-item[1].candidates[0].score, item[0]))
        assert group["requests"] == [{"id": i, "text": r.query, "score": r.candidates[0].score} for i, r in ordered]
        assert group["title"] == default_keyword_matcher.catalog.get(group["nearest_task"]).title
    text = render_summary(summary)
    assert f"{len(texts):,} rows: {len(texts):,} results" in text
    assert "by type: " in text and "by matcher: keyword 400" in text and "matched rows by task: " in text
    assert f"{len(none):,} unmatched requests (type none) grouped by nearest task" in text


class InterruptingTerminal(io.StringIO):
    """A terminal on which the second progress line is typed over by Ctrl-C."""

    def __init__(self) -> None:
        super().__init__()
        self.lines = 0

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.lines += 1
        if self.lines >= 2:
            raise KeyboardInterrupt
        return super().write(text)


def interrupted_run(options: BatchOptions) -> int:
    """Run until the progress line is interrupted; returns the rows the journal committed."""
    with pytest.raises(KeyboardInterrupt):
        run_batch(options, progress=InterruptingTerminal())
    journal = json.loads((options.state_dir / "journal.json").read_text())
    return int(journal["rows_done"])


def test_a_resume_must_use_the_same_settings_and_an_existing_output_is_kept(tmp_path: Path) -> None:
    source = write_requests(tmp_path / "in.jsonl", corpus_texts() * 2)
    options = BatchOptions(input=source, output=tmp_path / "out.jsonl", semantic=False, checkpoint_rows=100,
                           batch_size=20)
    done = interrupted_run(options)
    assert 0 < done < 2 * len(corpus_texts())
    for changed, name in ((BatchOptions(**{**vars(options), "top_k": 3}), "top_k"),
                          (BatchOptions(**{**vars(options), "id_column": "key"}), "id_column")):
        with pytest.raises(BatchError, match=rf"unfinished run with other settings \(they differ in: {name}\)"):
            run_batch(changed)
    source.write_text(source.read_text() + '{"text": "one more"}\n')
    with pytest.raises(BatchError, match=r"differ in: input"):
        run_batch(options)
    other = tmp_path / "other.jsonl"
    other.write_text("{}\n")
    with pytest.raises(BatchError, match=r"other.jsonl exists: pass --overwrite"):
        run_batch(BatchOptions(input=source, output=tmp_path / "b.jsonl", errors=other, semantic=False))
    summary = run_batch(BatchOptions(**{**vars(options), "overwrite": True}))
    assert summary.resumed_at == 0 and summary.rows == 2 * len(corpus_texts()) + 1
    with pytest.raises(BatchError, match=r"out.jsonl exists: pass --overwrite"):
        run_batch(options)


def test_two_runs_never_write_one_output(tmp_path: Path) -> None:
    source = write_requests(tmp_path / "in.jsonl", ["extract invoice totals"])
    options = BatchOptions(input=source, output=tmp_path / "out.jsonl", semantic=False)
    held = _lock(options.state_dir)
    try:
        with pytest.raises(BatchError, match="another batch run is writing this output"):
            run_batch(options)
    finally:
        held.close()
    assert run_batch(options).results == 1


def test_options_are_checked_before_any_work(tmp_path: Path) -> None:
    source = write_requests(tmp_path / "in.jsonl", ["a"])
    for change, message in (({"top_k": 0}, "top-k must be an integer >= 1"),
                            ({"workers": 0}, "workers must be an integer >= 1"),
                            ({"batch_size": True}, "batch-size must be an integer"),
                            ({"output": source}, "must be four different files"),
                            ({"output": tmp_path / "out.csv"}, "cannot tell the output format")):
        options = {"input": source, "output": tmp_path / "out.jsonl", "semantic": False, **change}
        with pytest.raises(BatchError, match=message):
            run_batch(BatchOptions(**options))  # type: ignore[arg-type]
    assert not (tmp_path / "out.jsonl").exists()


def test_progress_shows_rate_and_time_left() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    bar = _Progress(1000, 0, stream)
    bar.update(100)  # the first result starts the clock: nothing to say yet
    time.sleep(0.3)
    bar.update(400)
    bar.update(1000, final=True)
    first, last = stream.getvalue().split("\r")[1:3]
    assert first.startswith("batch: 400/1,000 rows (40.0%), ") and "rows/s, ETA 0:00:0" in first
    assert last.startswith("batch: 1,000/1,000 rows (100.0%), ") and "rows/s over 0:00:00, done\x1b[K\n" in last


def test_the_batch_modules_import_neither_pyarrow_nor_ray() -> None:
    code = ("import sys, matcher, matcher.batch, matcher.batchio, matcher.ray, matcher.cli\n"
            "print(sorted(m for m in ('pyarrow', 'ray', 'pandas', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}


def batch_cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "matcher", "batch", *args], capture_output=True, text=True,
                          env={**ENV, **(env or {})}, cwd=REPO, timeout=timeout)


def test_the_command_line_prints_the_summary_and_names_what_to_fix(tmp_path: Path) -> None:
    source = write_requests(tmp_path / "in.jsonl", ["extract invoice totals", "", "transcribe a call"])
    out = batch_cli(str(source), str(tmp_path / "out.jsonl"), "--semantic", "off", "--id-column", "key", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert (summary["rows"], summary["results"], summary["errors"]) == (3, 2, 1)
    assert summary["errors_file"] == str(tmp_path / "out.errors.jsonl")
    assert "batch: 3/3 rows (100.0%)" in out.stderr
    again = batch_cli(str(source), str(tmp_path / "out.jsonl"), "--semantic", "off")
    assert again.returncode == 2
    assert again.stderr == f"task-matcher: error: {tmp_path / 'out.jsonl'} exists: pass --overwrite to replace it\n"
    wrong = batch_cli(str(source), str(tmp_path / "o2.jsonl"), "--text-column", "query", "--semantic", "off")
    assert wrong.returncode == 2
    assert "none of the first 3 rows has a 'query' field: name the field that holds the text with --text-column" \
        in wrong.stderr
    assert not (tmp_path / "o2.jsonl").exists()
    assert "--unmatched" in batch_cli("--help").stdout


def crash_input(path: Path, rows: int) -> Path:
    """`rows` corpus requests with ids, and a bad row every 400 rows."""
    texts = corpus_texts()
    with path.open("w", encoding="utf-8") as handle:
        for i in range(rows):
            text: object = "" if i % 400 == 399 else texts[i % len(texts)]
            handle.write(json.dumps({"id": f"r{i}", "text": text}) + "\n")
    return path


def committed_rows(journal: Path) -> int:
    try:
        return int(json.loads(journal.read_text())["rows_done"])
    except (OSError, ValueError):
        return 0


def _default_interrupt() -> None:
    """Ctrl-C as at a terminal: a test run started in the background (``nohup pytest &``) ignores
    SIGINT, and its children would inherit that, so the interrupt under test would never land."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def kill_when_committed(args: list[str], journal: Path, rows: int, *, sig: int = signal.SIGKILL) -> int:
    """Start `task-matcher batch ARGS` and kill its whole process group once `rows` rows are committed."""
    proc = subprocess.Popen([sys.executable, "-m", "matcher", "batch", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=ENV, cwd=REPO, start_new_session=True,
                            preexec_fn=_default_interrupt)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if committed_rows(journal) >= rows:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=60)
                return proc.returncode
            if proc.poll() is not None:
                assert proc.stderr is not None
                pytest.fail(f"the run ended before it could be killed: {proc.stderr.read().decode()}")
            time.sleep(0.005)
        pytest.fail("the run committed too few rows in time")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.slow
@pytest.mark.parametrize(("out_name", "workers"), [("out.jsonl", ["1", "1", "1"]), ("out.parquet", ["2", "2", "1"])])
def test_a_run_killed_mid_way_resumes_to_the_same_output(tmp_path: Path, out_name: str, workers: list[str]) -> None:
    rows = 6000
    source = crash_input(tmp_path / "in.jsonl", rows)
    reference = tmp_path / "reference"
    reference.mkdir()
    run_batch(BatchOptions(input=source, output=reference / out_name, semantic=False, id_column="id",
                           unmatched=reference / "unmatched.jsonl"))
    output = tmp_path / out_name
    args = [str(source), str(output), "--semantic", "off", "--id-column", "id", "--batch-size", "40",
            "--unmatched", str(tmp_path / "unmatched.jsonl"), "--checkpoint-rows", "300", "--no-progress"]
    journal = output.with_name(f"{output.name}.batch") / "journal.json"
    for at, count in ((1500, workers[0]), (3600, workers[1])):
        status = kill_when_committed([*args, "--workers", count], journal, at)
        assert status == -signal.SIGKILL
        done = committed_rows(journal)
        assert at <= done < rows  # killed mid-run, with an unfinished journal behind
        if output.suffix == ".jsonl":  # a torn line after the last commit, as a crash mid-write leaves
            with output.open("ab") as handle:
                handle.write(b'{"id":"r99999","query":"half a li')
        with (tmp_path / "out.errors.jsonl").open("ab") as handle:
            handle.write(b'{"row": 123')
    resumed = batch_cli(*args, "--workers", workers[2])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming an unfinished run at row" in resumed.stderr
    assert output.read_bytes() == (reference / out_name).read_bytes()
    assert (tmp_path / "out.errors.jsonl").read_bytes() == (reference / "out.errors.jsonl").read_bytes()
    assert (tmp_path / "unmatched.jsonl").read_bytes() == (reference / "unmatched.jsonl").read_bytes()
    assert not journal.parent.exists()
    ids = [row["id"] for row in output_rows(output)]
    assert ids == [f"r{i}" for i in range(rows) if i % 400 != 399]  # every row once, in order


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path: Path) -> None:
    source = crash_input(tmp_path / "in.jsonl", 4000)
    output = tmp_path / "out.jsonl"
    args = [str(source), str(output), "--semantic", "off", "--id-column", "id", "--workers", "2",
            "--batch-size", "40", "--checkpoint-rows", "200", "--no-progress"]
    journal = output.with_name("out.jsonl.batch") / "journal.json"
    status = kill_when_committed(args, journal, 1000, sig=signal.SIGINT)
    assert status == 130
    finished = batch_cli(*args, "--json")
    assert finished.returncode == 0, finished.stderr
    summary = BatchSummary(**json.loads(finished.stdout))
    assert summary.resumed_at >= 1000 and (summary.results, summary.errors) == (3990, 10)
    assert [row["id"] for row in output_rows(output)] == [f"r{i}" for i in range(4000) if i % 400 != 399]


def test_parquet_output_keeps_integer_ids(tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"n": [7, 8], "text": ["extract invoice totals", "transcribe a call"]}), source)
    run_batch(BatchOptions(input=source, output=tmp_path / "out.parquet", id_column="n", semantic=False))
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.field("id").type == pa.int64()
    assert table.column("id").to_pylist() == [7, 8]
