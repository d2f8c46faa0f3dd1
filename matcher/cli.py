"""Command line: `task-matcher "QUERY"`, `list`, `show TASK_ID`, `tune`, `finetune`, `serve`, `confusability`,
`batch IN OUT`."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TextIO

from . import __version__
from .catalog import Catalog, Task, default_catalog, load_catalog
from .config import MatcherConfig
from .engine import SEMANTIC_CHOICES, SEMANTIC_HELP, Matcher, SemanticOption, default_config, resolve_embedder
from .errors import MatcherError
from .results import CandidateExplanation, TaskMatch

__all__ = ["main"]

_COMMANDS = ("match", "list", "show", "tune", "finetune", "serve", "confusability", "evaluate", "leaderboard", "batch")
_TOP_LEVEL_OPTIONS = ("-h", "--help", "--version")
_SERVER_MODULES = frozenset({"fastapi", "uvicorn", "anyio", "starlette"})
_SERVER_EXTRA_MISSING = ("task-matcher serve: error: the HTTP server needs the optional extra: "
                         "pip install 'task-matcher[server]' -c constraints.txt")
_WRAP = 100


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="task-matcher",
        description="Match a plain-English job description to catalog tasks.",
        epilog='Examples: task-matcher "pull totals out of vendor invoices" | task-matcher list | '
               "task-matcher show invoice-extraction. A query that is itself a command name "
               "goes after 'match': task-matcher match list",
    )
    parser.add_argument("--version", action="version", version=f"task-matcher {__version__}",
                        help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("match", help="rank the catalog's tasks for a query (the default command)")
    m.add_argument("query", help="the job to match, in plain English")
    m.add_argument("--top-k", type=int, default=5, help="number of candidates (default 5)")
    m.add_argument("--json", action="store_true", help="print the API response body as JSON")
    m.add_argument("--explain", action="store_true", help="show why each candidate scored as it did")
    m.add_argument("--task", action="append", dest="tasks", metavar="TASK_ID",
                   help="scope the match to this task (repeatable): only the tasks given are candidates")
    m.add_argument("--category", action="append", dest="categories", metavar="CATEGORY",
                   help="scope the match to tasks of this category (repeatable; with --task, both must hold)")
    m.add_argument("--semantic", choices=tuple(SEMANTIC_CHOICES), default="auto",
                   help=SEMANTIC_HELP)
    _threads_option(m)
    _catalog_options(m)
    m.add_argument("--config", type=Path, help="a MatcherConfig JSON file (default: the shipped one)")
    m.add_argument("--model", type=Path, metavar="DIR",
                   help="a sentence-transformers model folder, such as `task-matcher finetune` writes "
                        "(default: the shipped MiniLM)")
    ls = sub.add_parser("list", help="list the catalog's tasks")
    _catalog_options(ls)
    ls.add_argument("--json", action="store_true", help="print the tasks as JSON")
    tune = sub.add_parser("tune", help="fit a MatcherConfig to labelled queries")
    tune.add_argument("labelled", type=Path, nargs="+",
                      help='one or more files of JSON lines {"text": ..., "task_id": id or null}, read in order')
    tune.add_argument("--out", type=Path, required=True, help="where to write the config JSON")
    tune.add_argument("--semantic", choices=tuple(SEMANTIC_CHOICES), default="auto",
                      help="tune the semantic cascade (on, or a backend: onnx, torch) or the keyword path "
                           "alone (off)")
    _threads_option(tune)
    tune.add_argument("--target-precision", type=float, default=0.97,
                      help="share of high answers that must be right on the labelled data")
    tune.add_argument("--precision-z", type=float, default=None, metavar="Z",
                      help="safety margin on that precision, in standard errors of its Wilson lower bound "
                           "(default 1); larger answers less on small label sets")
    tune.add_argument("--out-of-scope-share", type=_share, default=0.25, metavar="SHARE",
                      help="weight of the out-of-scope queries, as a share of all queries, in the calibration "
                           "fit and the precision of high answers (default 0.25); 'none' keeps the labelled "
                           "proportions")
    tune.add_argument("--labelled-only", action="store_true",
                      help="fit to the labelled queries alone, without the catalog's held-out phrases as a prior")
    _catalog_options(tune)
    ft = sub.add_parser("finetune", help="fine-tune the embedding model on a catalog's own phrases (CPU)",
                        description="Contrastive (SetFit-style) fine-tuning of the embedding model on the "
                                    "catalog's task texts; seeded and reproducible. Load the result with "
                                    "`task-matcher --model DIR` or `task-matcher serve --model DIR`.")
    ft.add_argument("catalog_path", type=Path, metavar="CATALOG", help="a catalog file or directory")
    ft.add_argument("--out", type=Path, required=True, metavar="DIR", help="the folder to write the model into")
    ft.add_argument("--model", type=Path, metavar="DIR", help="the model to start from (default: the shipped MiniLM)")
    ft.add_argument("--epochs", type=int, default=4, help="passes over every task text (default 4)")
    ft.add_argument("--batch-size", type=int, default=32, help="texts per batch, each of another task (default 32)")
    ft.add_argument("--learning-rate", type=float, default=5e-5, help="AdamW's peak learning rate (default 5e-5)")
    ft.add_argument("--seed", type=int, default=0, help="seed of every draw and of dropout (default 0)")
    ft.add_argument("--threads", type=int, default=None, metavar="N",
                    help="torch intra-op threads while training (default: the usable cores)")
    ft.add_argument("--overwrite", action="store_true", help="replace the model already in --out")
    ft.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    ev = sub.add_parser("evaluate", help="measure the matcher on your labelled queries and write a report",
                        description="Match labelled queries and write per-task precision, recall and F1, confusion "
                                    "pairs, misclassified examples, tiers, a reliability diagram and a threshold "
                                    "sweep (PNG, with the 'evaluate' extra) and a Markdown report into --out.")
    ev.add_argument("labelled", type=Path, nargs="+",
                    help='one or more files of JSON lines {"text": ..., "task_id": id or null}')
    ev.add_argument("--out", type=Path, required=True, help="the folder to write the report into")
    ev.add_argument("--config", type=Path, help="a MatcherConfig JSON file (default: the shipped one, or the "
                                                "catalog's self-calibration)")
    ev.add_argument("--semantic", choices=tuple(SEMANTIC_CHOICES), default="auto", help=SEMANTIC_HELP)
    ev.add_argument("--top-k", type=int, default=5, help="candidates per query (recall@k; default 5)")
    ev.add_argument("--no-plots", action="store_true", help="skip the PNG figures (no matplotlib needed)")
    _threads_option(ev)
    _catalog_options(ev)
    sub.add_parser("serve", help="run the HTTP API (see task-matcher serve --help)", add_help=False)
    conf = sub.add_parser("confusability", help="task pairs whose profiles overlap, and the phrases causing it")
    conf.add_argument("--limit", type=int, default=20, help="pairs to show (default 20)")
    conf.add_argument("--json", action="store_true", help="print the report as JSON")
    _catalog_options(conf)
    board = sub.add_parser("leaderboard", help="build leaderboards from eval results")
    board_sub = board.add_subparsers(dest="leaderboard_command", required=True)
    imp = board_sub.add_parser("import", help="rank eval results into a catalog-side leaderboards file",
                               description="Rank eval results (JSON lines of model, kind, task_id, quality, "
                                           "cost_per_request_micro_usd, context_k) into boards: quality descending, "
                                           "then cheaper, then by name; recommended is the curated pick if set, "
                                           "else the top-ranked open model.")
    imp.add_argument("results", type=Path, help="the eval results, one JSON object per line")
    imp.add_argument("--out", type=Path,
                     help="where to write the boards (default: <catalog>.leaderboards.json beside --catalog, "
                          "which serve reads with the catalog)")
    imp.add_argument("--recommend", action="append", default=[], metavar="TASK_ID=ALIAS",
                     help="a curated pick for a task (repeatable); it must be a model on that task's board")
    _catalog_options(imp)
    _batch_parser(sub)
    show = sub.add_parser("show", help="show one task's record")
    show.add_argument("task_id")
    show.add_argument("--examples", type=int, default=2, help="examples to include (default 2)")
    show.add_argument("--json", action="store_true", help="print the record as JSON")
    _catalog_options(show)
    return parser


def _batch_parser(sub: Any) -> None:
    b = sub.add_parser("batch", help="match every row of a JSON-lines, CSV or Parquet file (resumable)",
                       description="Match every row of IN and write one result per row to OUT, in input order. "
                                   "Rows that cannot be matched go to the errors file with the reason. After a "
                                   "crash or Ctrl-C, the same command resumes where the last commit left off.")
    b.add_argument("input", type=Path, metavar="IN", help="a .jsonl, .csv or .parquet file of requests")
    b.add_argument("output", type=Path, metavar="OUT", help="where the results go: a .jsonl or .parquet file")
    b.add_argument("--text-column", default="text", metavar="NAME", help="the column holding the text (default text)")
    b.add_argument("--id-column", metavar="NAME",
                   help="the column whose value (a string or an integer) is each result's id "
                        "(default: the row number, counting data rows from 0)")
    b.add_argument("--top-k", type=int, default=5, help="candidates per result (default 5)")
    _catalog_options(b)
    b.add_argument("--config", type=Path, help="a MatcherConfig JSON file (default: the shipped one)")
    b.add_argument("--semantic", choices=tuple(SEMANTIC_CHOICES), default="auto", help=SEMANTIC_HELP)
    _threads_option(b)
    b.add_argument("--workers", type=int, metavar="N",
                   help="worker processes, each with its own matcher (default 1); with --ray, actors "
                        "(default: one per CPU of the cluster)")
    b.add_argument("--batch-size", type=int, default=256, metavar="ROWS",
                   help="rows per task handed to a worker or a Ray actor (default 256)")
    b.add_argument("--checkpoint-rows", type=int, default=10_000, metavar="ROWS",
                   help="commit the output at least every ROWS rows (and every 10 seconds); a crash redoes at "
                        "most the rows since the last commit (default 10000)")
    b.add_argument("--errors", type=Path, metavar="PATH",
                   help="the errors file, JSON lines of row, line, id, reason and text (default: OUT with the "
                        "suffix .errors.jsonl)")
    b.add_argument("--unmatched", type=Path, metavar="PATH",
                   help="also write the requests that got type none, grouped by nearest task (JSON lines, one "
                        "task per line, the most requested first): the input for new tasks or phrases")
    b.add_argument("--ray", metavar="ADDRESS",
                   help="match on Ray (extra 'ray'): a cluster address (ray://HOST:10001 or HOST:6379), auto "
                        "(the cluster running on this machine) or local (a private instance of --workers CPUs)")
    b.add_argument("--overwrite", action="store_true",
                   help="start over: replace OUT, its errors and unmatched files and any unfinished run")
    b.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    b.add_argument("--json", action="store_true", help="print the summary as JSON")


def _batch(args: argparse.Namespace) -> int:
    from .batch import BatchOptions, render_summary, run_batch

    options = BatchOptions(
        input=args.input, output=args.output, text_column=args.text_column, id_column=args.id_column,
        catalog=args.catalog, config=args.config, top_k=args.top_k, semantic=_semantic_option(args.semantic),
        threads=args.threads, workers=args.workers, batch_size=args.batch_size,
        checkpoint_rows=args.checkpoint_rows, errors=args.errors, unmatched=args.unmatched, ray=args.ray,
        overwrite=args.overwrite)

    def resuming(done: int, total: int) -> None:
        print(f"task-matcher batch: resuming an unfinished run at row {done:,} of {total:,}", file=sys.stderr)

    try:
        summary = run_batch(options, progress=None if args.no_progress else sys.stderr, on_resume=resuming)
    except KeyboardInterrupt:
        print("\ntask-matcher batch: interrupted; the rows committed so far are kept: run the same command "
              "again to resume", file=sys.stderr)
        return 130
    print(json.dumps(summary.to_dict(), indent=2, ensure_ascii=False) if args.json else render_summary(summary))
    return 0


def _semantic_option(name: str) -> bool | Literal["auto", "onnx", "torch"]:
    choice = SEMANTIC_CHOICES[name]
    assert isinstance(choice, bool) or choice in ("auto", "onnx", "torch")
    return choice  # type: ignore[return-value]


def _share(text: str) -> float | None:
    """`--out-of-scope-share`: a number in (0, 1), or 'none' for the labelled proportions."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1) or 'none', got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1) or 'none', got {text!r}")
    return value


def _threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="intra-op threads of the embedding model (default: $TASK_MATCHER_THREADS, else 1; "
                             "0: the backend's own default)")


def _catalog_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--catalog", type=Path, help="a catalog file or directory (default: bundled)")


def _catalog(args: argparse.Namespace) -> Catalog:
    from .semantic import default_cache_dir

    return load_catalog(args.catalog, cache_dir=default_cache_dir()) if args.catalog else default_catalog()


def _prepare_output(path: Path) -> None:
    """Create the output's directory now, so an unwritable `--out` fails before a long fit, not after it."""
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)


def _format_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip()
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _verdict(result: TaskMatch) -> str:
    """First line of the text output: the outcome type, its confidence and the scoring path."""
    how = f"{result.confidence}, via {result.matcher}"
    if result.type == "task" and result.chosen is not None:
        verdict = f"matched {result.chosen.task_id} ({how})"
    elif result.type == "capability":
        lane = result.capability.id if result.capability is not None else result.candidates[0].task_id
        verdict = f"capability: {lane} ({how})"
    elif result.type == "unsupported":
        verdict = f"out of scope ({how})"
    else:
        verdict = f"no confident match (via {result.matcher})"
    if result.ambiguous:
        verdict += "; ambiguous: the top two are close"
    return verdict


def _render_match(result: TaskMatch) -> str:
    """Verdict, reasoning and the candidates that scored above 0.

    Zero-score candidates are only the catalog's first ids in alphabetical order, so they are
    counted instead of being ranked as if they meant something.
    """
    parts = [_verdict(result)]
    if result.reasoning:
        parts.append(textwrap.fill(result.reasoning, width=_WRAP))
    scored = [c for c in result.candidates if c.score > 0]
    if scored:
        rows = [(str(rank), c.task_id, f"{c.score:.4f}", c.confidence)
                for rank, c in enumerate(scored, start=1)]
        table = _format_table(rows, ("rank", "task", "score", "confidence"))
        zeros = len(result.candidates) - len(scored)
        if zeros:
            table += f"\n{zeros} more candidate{'s' if zeros > 1 else ''} scored 0"
        parts.append(f"\n{table}")
    else:
        parts.append("\nno candidate scored above 0")
    return "\n".join(parts)


def _render_task(task: Task, examples: int) -> str:
    """Readable text of one catalog record; `--json` gives the full record instead."""
    label_width = len("description") + 2
    indent = " " * label_width

    def field(label: str, value: str) -> str:
        return textwrap.fill(value, width=_WRAP, initial_indent=f"{label}:".ljust(label_width),
                             subsequent_indent=indent)

    lines = [field("id", task.id), field("title", task.title or "-")]
    if task.kind != "task":
        lines.append(field("kind", f"{task.kind} (an out-of-scope profile, never returned as a match)"))
    lines += [
        field("category", task.category or "-"),
        field("blob input", "yes" if task.has_blob_input else "no"),
        field("scorer", task.default_scorer or "-"),
        field("description", task.description or "-"),
    ]
    keywords = sorted(task.keywords, key=lambda item: (-item[1], item[0]))
    lines.append(field("keywords", ", ".join(f"{term} ({weight:g})" for term, weight in keywords) or "-"))
    lines.append(f"{'phrases:'.ljust(label_width)}{len(task.phrases)}")
    lines += [textwrap.fill(p, width=_WRAP, initial_indent="  - ", subsequent_indent="    ")
              for p in task.phrases]
    shown = task.examples[: max(examples, 0)]
    if not task.examples or len(shown) == len(task.examples):
        count = str(len(task.examples))
    elif shown:
        count = f"{len(task.examples)}, first {len(shown)} below (--examples N for more)"
    else:
        count = f"{len(task.examples)} (--examples N to print them)"
    lines.append(f"{'examples:'.ljust(label_width)}{count}")
    lines += [f"  - {json.dumps(example, ensure_ascii=False)}" for example in shown]
    return "\n".join(lines)


def _render_explanations(explanations: Sequence[CandidateExplanation]) -> str:
    lines: list[str] = []
    if explanations and explanations[0].corrections:
        fixes = ", ".join(f"{c.original} -> {c.corrected} ({c.similarity:.0f})"
                          for c in explanations[0].corrections)
        lines.append(f"fuzzy corrections: {fixes}")
    for item in explanations:
        semantic = ("" if item.semantic_similarity is None
                    else f", semantic similarity {item.semantic_similarity:.4f}")
        if item.head_probability is not None:
            semantic += f", head probability {item.head_probability:.4f}"
        lines.append(f"\n{item.task_id}: score {item.score:.4f} ({item.confidence}), "
                     f"keyword raw {item.keyword_raw:.4f}{semantic}")
        for field in item.fields:
            terms = ", ".join(f"{t} (+{c:.4f})" for t, c in field.terms)
            detail = f": {terms}" if terms else ""
            lines.append(f"  {field.field:<12} sim {field.similarity:.4f} x weight "
                         f"{field.weight:g}{detail}")
        if item.best_phrase:
            lines.append(f"  nearest phrase: {item.best_phrase!r}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    if args.command == "list":
        tasks = _catalog(args).list()
        if args.json:
            print(json.dumps({"tasks": [t.to_dict(examples_n=0) for t in tasks]}, indent=2,
                             ensure_ascii=False))
        else:
            rows = [(t.id, t.category or "", "yes" if t.has_blob_input else "no",
                     t.default_scorer or "", t.title or "") for t in tasks]
            print(_format_table(rows, ("task", "category", "blob input", "scorer", "title")))
        return 0
    if args.command == "show":
        task = _catalog(args).get(args.task_id)
        if args.json:
            print(json.dumps(task.to_dict(examples_n=args.examples), indent=2, ensure_ascii=False))
        else:
            print(_render_task(task, args.examples))
        return 0
    if args.command == "confusability":
        from .confusability import confusability_report

        pairs = confusability_report(_catalog(args), limit=args.limit)
        if args.json:
            print(json.dumps([p.to_dict() for p in pairs], indent=2, ensure_ascii=False))
            return 0
        pair_rows = [(f"{p.task_a} / {p.task_b}", str(len(p.phrases)), f"{p.profile_similarity:.3f}",
                      p.phrases[0][1][:60]) for p in pairs]
        print(_format_table(pair_rows, ("task pair", "phrases", "profile cosine", "e.g.")))
        return 0
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "leaderboard":
        return _import_leaderboards(args)
    if args.command == "batch":
        return _batch(args)
    if args.command == "finetune":
        return _finetune(args)
    if args.command == "tune":
        from .tuning import PRECISION_Z, load_labelled, tune

        catalog, labelled = _catalog(args), [row for path in args.labelled for row in load_labelled(path)]
        _prepare_output(args.out)
        tuned = tune(catalog, labelled,
                     semantic=_embedder_choice(args.semantic, args.threads),
                     target_precision=args.target_precision,
                     precision_z=PRECISION_Z if args.precision_z is None else args.precision_z,
                     out_of_scope_share=args.out_of_scope_share,
                     catalog_phrases=not args.labelled_only, progress=True)
        tuned.save(args.out)
        report = dict(tuned.tuning or {})
        report.pop("per_task", None)
        print(json.dumps(report, indent=2))
        return 0
    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    config = MatcherConfig.load(args.config) if args.config else None
    semantic = args.model if args.model is not None else SEMANTIC_CHOICES[args.semantic]
    matcher = Matcher(_catalog(args), semantic=semantic, config=config, threads=args.threads)
    scope = {"tasks": args.tasks, "categories": args.categories}
    result = matcher.match(args.query, top_k=args.top_k, **scope)
    if args.json:
        body: dict[str, Any] = result.to_dict()
        if args.explain:
            body["explanations"] = [e.to_dict() for e in matcher.explain(args.query, args.top_k, **scope)]
        print(json.dumps(body, indent=2, ensure_ascii=False))
    else:
        print(_render_match(result))
        if args.explain:
            print(_render_explanations(matcher.explain(args.query, args.top_k, **scope)))
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from .finetune import FinetuneSettings, finetune

    settings = FinetuneSettings(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                                seed=args.seed, threads=args.threads)
    catalog = load_catalog(args.catalog_path)
    bar: Any = None
    if not args.no_progress:
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            bar = tqdm(desc="fine-tuning", unit="step", file=sys.stderr)

    def progress(step: int, steps: int, loss: float) -> None:
        if bar is not None:
            bar.total = steps
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            bar.update(1)

    try:
        report = finetune(catalog, args.out, model=args.model, settings=settings, overwrite=args.overwrite,
                          progress=progress)
    finally:
        if bar is not None:
            bar.close()
    print(f"fine-tuned {report.tasks} tasks ({report.texts} texts, {report.steps} steps, {report.threads} threads) "
          f"in {report.seconds:.1f} s; loss {report.first_epoch_loss:.4f} -> {report.last_epoch_loss:.4f}\n"
          f"model: {report.out} (load it with `task-matcher --model {report.out}` or "
          f"`task-matcher serve --model {report.out}`)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    """`task-matcher evaluate`: match the labelled queries, write the report, print its summary."""
    from .evaluation import evaluate, write_report
    from .tuning import load_labelled

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if args.out.exists() and not args.out.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(args.out))
    labelled = [row for path in args.labelled for row in load_labelled(path)]
    config = MatcherConfig.load(args.config) if args.config else None
    engine = Matcher(_catalog(args), semantic=SEMANTIC_CHOICES[args.semantic], config=config, threads=args.threads)
    if not args.no_plots:
        from .evaluation import require_plots

        require_plots()  # matplotlib missing: say so before any query is matched
    source = str(args.config) if args.config else (
        "shipped, tuned for this catalog" if engine.config is default_config(semantic=engine.semantic_enabled)
        else "self-calibrated from the catalog's phrases")
    result = evaluate(engine, labelled, top_k=args.top_k, sources=[str(p) for p in args.labelled],
                      config_source=source)
    written = write_report(result, args.out, plots=not args.no_plots)
    s = result.summary
    print(f"{len(result.predictions)} queries: top-1 {100 * s['top1']:.1f}%, answered right "
          f"{100 * s['answered_right']:.1f}%, high precision {100 * s['high_precision']:.1f}%, "
          f"OOS recall {100 * s['oos_recall']:.1f}%")
    print(f"wrote {', '.join(p.name for p in written)} to {args.out}")
    return 0


def _import_leaderboards(args: argparse.Namespace) -> int:
    """`task-matcher leaderboard import`: rank the results, write the boards file, print each board's pick."""
    from .leaderboard import import_results, leaderboards_path, recommended

    if args.out is None and args.catalog is None:
        raise ValueError("--out is required with the bundled catalog (the boards file goes beside --catalog)")
    picks: dict[str, str] = {}
    for item in args.recommend:
        task_id, sep, alias = item.partition("=")
        if not sep or not task_id or not alias:
            raise ValueError(f"--recommend takes TASK_ID=ALIAS, got {item!r}")
        picks[task_id] = alias
    boards = import_results(args.results, _catalog(args), recommend=picks)
    out = args.out if args.out is not None else leaderboards_path(args.catalog)
    _prepare_output(out)
    boards.save(out)
    rows = [(task_id, str(len(board["models"])), recommended(board) or "-",
             board["frontier"]["name"] if board.get("frontier") else "-")
            for task_id, board in sorted(boards.boards.items())]
    print(_format_table(rows, ("task", "models", "recommended", "frontier")))
    print(f"wrote {len(boards)} board{'s' if len(boards) != 1 else ''} to {out}")
    return 0


def _embedder_choice(semantic: str, threads: int | None) -> SemanticOption:
    """`--semantic` as `tune` takes it: with `--threads`, the embedder of that backend with those threads."""
    choice = SEMANTIC_CHOICES[semantic]
    if threads is None or choice is False:
        return choice
    return resolve_embedder(choice, threads=threads) or False


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """Print a warning as one `task-matcher: warning:` line: its source location means nothing to a user."""
    stream = sys.stderr if file is None else file
    with contextlib.suppress(OSError):  # stderr gone too: nowhere left to report
        stream.write(f"task-matcher: warning: {message}\n")


def _os_error_message(exc: OSError) -> str:
    """`PATH: reason` for a file the command could not read or write."""
    reason = "no such file" if isinstance(exc, FileNotFoundError) else (exc.strerror or str(exc)).lower()
    return f"{exc.filename}: {reason}" if exc.filename else str(exc)


def _discard_stdout() -> None:
    """Point stdout at devnull once its reader is gone, so the interpreter's final flush cannot fail."""
    with contextlib.suppress(OSError, ValueError):  # no file descriptor (captured in-process): nothing to do
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)


def _serve(arguments: Sequence[str]) -> int:
    """`task-matcher serve`, with an install hint instead of a traceback when the `server` extra is missing."""
    try:
        from .server import serve_main
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in _SERVER_MODULES:
            raise
        print(_SERVER_EXTRA_MISSING, file=sys.stderr)
        return 2
    return serve_main(arguments)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `task-matcher` and `python -m matcher`; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["serve"]:
        return _serve(arguments[1:])
    if arguments and arguments[0] not in _COMMANDS and arguments[0] not in _TOP_LEVEL_OPTIONS:
        arguments.insert(0, "match")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            status = _run(_parser().parse_args(arguments))
            sys.stdout.flush()  # a closed pipe must fail here, not in the interpreter's final flush
            return status
    except BrokenPipeError:  # the reader went away early (`task-matcher list | head -1`): not an error
        _discard_stdout()
        return 0
    except OSError as exc:
        print(f"task-matcher: error: {_os_error_message(exc)}", file=sys.stderr)
        return 2
    except (MatcherError, ValueError, TypeError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"task-matcher: error: {message}", file=sys.stderr)
        return 2
