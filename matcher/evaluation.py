"""Evaluation on your own labelled queries: per-task precision, recall and F1, confusions, errors,
tiers, calibration and a threshold sweep, written as a Markdown report with CSV, JSON and PNG files.

`evaluate` runs a `Matcher` over labelled ``(text, task_id or None)`` pairs (the format `tune`
reads) and measures what it decided with `matcher.metrics`, the functions the benchmarks use:
an answer is a ``matched`` result (the ``high`` tier), an out-of-scope query (``task_id`` null)
is right only when nothing matches. `write_report` writes the files; its figures need matplotlib
(the ``evaluate`` extra), and ``plots=False`` writes everything else without it.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import metrics
from .engine import Matcher
from .errors import MatcherError
from .metrics import Prediction, TaskScores, TierStats
from .results import TaskMatch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Evaluation", "Misclassified", "PlotsUnavailableError", "evaluate", "reliability_figure", "render_markdown",
           "require_plots", "sweep_figure", "write_report"]

SWEEP_THRESHOLDS = tuple(round(0.005 * i, 3) for i in range(201))
_SHOWN_ERRORS = 50
_SHOWN_PAIRS = 20
PLOTS_HINT = "the figures need matplotlib: pip install 'task-matcher[evaluate]' -c constraints.txt (or --no-plots)"


class PlotsUnavailableError(MatcherError, ImportError):
    """matplotlib is not installed, so the report's figures cannot be drawn."""


@dataclass(frozen=True)
class Misclassified:
    """One query the matcher got wrong: a wrong answer, or (no answer) a wrong top candidate."""

    text: str
    labelled: str | None
    answered: str | None
    top: str | None
    score: float
    confidence: str
    kind: str

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "labelled": self.labelled, "answered": self.answered, "top": self.top,
                "score": self.score, "confidence": self.confidence, "kind": self.kind}


@dataclass(frozen=True)
class Evaluation:
    """What one matcher decided on one labelled set, and the figures of it."""

    predictions: tuple[Prediction, ...]
    texts: tuple[str, ...]
    high_threshold: float
    top_k: int
    sources: tuple[str, ...] = ()
    catalog: str = ""
    fingerprint: str = ""
    semantic: bool = False
    config_source: str = ""
    summary: dict[str, float] = field(default_factory=dict)

    @property
    def per_task(self) -> list[TaskScores]:
        """Precision, recall and F1 of the committed answers, per task."""
        return metrics.per_task_scores(self.predictions)

    @property
    def tiers(self) -> dict[str, TierStats]:
        """Precision and coverage of each confidence tier of the top candidate."""
        return metrics.tier_stats(self.predictions)

    def confusions(self, n: int = _SHOWN_PAIRS) -> list[tuple[str, str, int]]:
        """The most frequent (labelled, ranked first) pairs among in-scope top-1 errors."""
        return metrics.confused_pairs(self.predictions, n)

    def misclassified(self) -> list[Misclassified]:
        """Wrong answers (matched a wrong task, or matched an out-of-scope query) first, then in-scope
        queries left unanswered whose top candidate is wrong; by label and text within each."""
        rows = []
        for text, p in zip(self.texts, self.predictions, strict=True):
            top = p.ranking[0] if p.ranking else None
            if p.accepted and not p.correct:
                kind = "wrong answer"
            elif not p.accepted and p.gold is not None and not p.correct:
                kind = "wrong top candidate"
            else:
                continue
            rows.append(Misclassified(text, p.gold, p.answer, top, p.top_score, p.tier or "low", kind))
        return sorted(rows, key=lambda m: (m.kind != "wrong answer", m.labelled or "", m.text))

    def reliability(self, bins: int = 10) -> list[tuple[float, float, float, int]]:
        """Reliability curve of the top score: (bin low, mean score, share right, count)."""
        return metrics.reliability_curve([p.top_score for p in self.predictions],
                                         [p.correct for p in self.predictions], bins)

    def sweep(self) -> list[tuple[float, float, float, float, float]]:
        """Threshold sweep on the top score: (t, precision, coverage, in-scope accuracy, OOS recall)."""
        return metrics.threshold_sweep(self.predictions, SWEEP_THRESHOLDS)

    def to_dict(self) -> dict[str, Any]:
        """Every figure of the report, JSON-ready (NaN as null)."""
        body: dict[str, Any] = _finite({
            "sources": list(self.sources), "catalog": self.catalog, "catalog_fingerprint": self.fingerprint,
            "semantic": self.semantic, "config": self.config_source, "top_k": self.top_k,
            "high_threshold": self.high_threshold, "queries": len(self.predictions), "summary": self.summary,
            "tiers": {name: vars(stats) for name, stats in self.tiers.items()},
            "per_task": [{**vars(s), "f1": s.f1} for s in self.per_task],
            "confusions": [{"labelled": a, "ranked_first": b, "count": c} for a, b, c in self.confusions()],
            "misclassified": [m.to_dict() for m in self.misclassified()],
            "reliability": [{"bin": b, "mean_score": m, "share_right": r, "count": c}
                            for b, m, r, c in self.reliability()],
            "threshold_sweep": [{"threshold": t, "precision": p, "coverage": c, "in_scope_accuracy": a,
                                 "oos_recall": o} for t, p, c, a, o in self.sweep()],
        })
        return body


def evaluate(matcher: Matcher, labelled: Sequence[tuple[str, str | None]], *, top_k: int = 5,
             sources: Sequence[str] = (), config_source: str = "") -> Evaluation:
    """Match every labelled query and measure the decisions; a label that is no task of the catalog
    raises `UnknownTaskError` naming the closest ids, before any query is matched."""
    rows = list(labelled)
    if not rows:
        raise ValueError("no labelled queries to evaluate: give rows of {\"text\": ..., \"task_id\": id or null}")
    for _, task_id in rows:
        if task_id is not None and task_id not in matcher.catalog:
            matcher.catalog.get(task_id)  # raises UnknownTaskError with the closest ids
    results: list[TaskMatch] = matcher.match_many([text for text, _ in rows], top_k=top_k)
    preds = tuple(metrics.prediction(task_id, result) for (_, task_id), result in zip(rows, results, strict=True))
    scores, correct = [p.top_score for p in preds], [p.correct for p in preds]
    high = metrics.tier_stats(preds)["high"]
    summary = {
        "top1": metrics.top1_accuracy(preds), f"recall_at_{top_k}": metrics.recall_at_k(preds, top_k),
        "answered_right": metrics.accepted_accuracy(preds), "oos_recall": metrics.oos_recall(preds),
        "high_precision": high.precision, "high_coverage": high.coverage,
        "expected_calibration_error": metrics.expected_calibration_error(scores, correct),
        "ambiguous": metrics.ambiguity_rate(preds), "semantic_path": metrics.path_share(preds, "semantic"),
        "in_scope": float(sum(p.gold is not None for p in preds)),
        "out_of_scope": float(sum(p.gold is None for p in preds)),
    }
    return Evaluation(preds, tuple(text for text, _ in rows), matcher.config.high_threshold, top_k,
                      tuple(sources), matcher.catalog.source, matcher.catalog.fingerprint,
                      matcher.semantic_enabled, config_source, summary)


def require_plots() -> None:
    """Raise `PlotsUnavailableError` (with the install hint) unless matplotlib can draw the figures."""
    _figure()


def _figure() -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotsUnavailableError(PLOTS_HINT) from None
    return Figure(figsize=(6.5, 4.5), layout="tight")


def reliability_figure(evaluation: Evaluation) -> Figure:
    """Reliability diagram: mean top score against the share whose top task is right, per bin."""
    fig = _figure()
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    curve = evaluation.reliability()
    ece = evaluation.summary.get("expected_calibration_error", math.nan)
    ax.plot([c[1] for c in curve], [c[2] for c in curve], marker="o", label=f"top score (ECE {ece:.3f})")
    for _, mean, share, count in curve:
        ax.annotate(str(count), (mean, share), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("top score (mean of the bin)")
    ax.set_ylabel("share whose top task is right")
    ax.set_title("Reliability of the top score (labels: queries per bin)")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def sweep_figure(evaluation: Evaluation, target: float = 0.97) -> Figure:
    """Threshold sweep: precision, coverage, in-scope accuracy and OOS recall as the cut on the top score moves."""
    fig = _figure()
    ax = fig.subplots()
    sweep = evaluation.sweep()
    thresholds = [row[0] for row in sweep]
    for column, label in ((1, "precision"), (2, "coverage"), (3, "in-scope accuracy"), (4, "OOS recall")):
        ax.plot(thresholds, [row[column] for row in sweep], label=label)
    ax.axhline(target, color="grey", linestyle=":", label=f"{target:.0%} target")
    ax.axvline(evaluation.high_threshold, color="black", linewidth=1,
               label=f"high_threshold = {evaluation.high_threshold:g}")
    ax.set_xlabel("acceptance threshold on the top score")
    ax.set_ylim(0, 1.02)
    ax.set_title("Threshold sweep")
    ax.legend(loc="lower left", fontsize=8)
    return fig


def write_report(evaluation: Evaluation, out: Path, *, plots: bool = True) -> list[Path]:
    """Write ``report.md``, ``summary.json``, ``per_task.csv``, ``confusions.csv``, ``misclassified.jsonl``
    and (with `plots`) ``reliability.png`` and ``threshold_sweep.png`` into `out`; returns their paths.
    Without matplotlib, `plots` raises `PlotsUnavailableError` before anything is written."""
    figures = [("reliability.png", reliability_figure(evaluation)), ("threshold_sweep.png", sweep_figure(evaluation))] \
        if plots else []
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures:
        fig.savefig(out / name, dpi=110)
        written.append(out / name)
    (out / "summary.json").write_text(json.dumps(evaluation.to_dict(), indent=2, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    with open(out / "per_task.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["task_id", "support", "answered", "precision", "recall", "f1"])
        for s in evaluation.per_task:
            writer.writerow([s.task_id, s.support, s.answered, _num(s.precision), _num(s.recall), _num(s.f1)])
    with open(out / "confusions.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["labelled", "ranked_first", "count"])
        writer.writerows(evaluation.confusions(n=10_000))
    with open(out / "misclassified.jsonl", "w", encoding="utf-8") as handle:
        for row in evaluation.misclassified():
            handle.write(json.dumps(row.to_dict(), ensure_ascii=False) + "\n")
    (out / "report.md").write_text(render_markdown(evaluation, plots=plots), encoding="utf-8")
    return [*written, *(out / n for n in ("summary.json", "per_task.csv", "confusions.csv", "misclassified.jsonl",
                                         "report.md"))]


def render_markdown(evaluation: Evaluation, *, plots: bool = True) -> str:
    """The report: summary, tiers, per-task scores, confusions, misclassified examples and the figures."""
    s = evaluation.summary
    lines = [
        "# Evaluation report", "",
        f"- labelled queries: {', '.join(f'`{x}`' for x in evaluation.sources) or '(given in code)'}: "
        f"{len(evaluation.predictions)} ({s['in_scope']:.0f} in scope, {s['out_of_scope']:.0f} out of scope)",
        f"- catalog: `{evaluation.catalog}` (fingerprint {evaluation.fingerprint[:12]}); "
        f"semantic backstop {'on' if evaluation.semantic else 'off'}; config: {evaluation.config_source or 'default'}",
        "- an answer is a `matched` result (the `high` tier); an out-of-scope query is right when nothing matches", "",
        "## Summary", "", "| figure | value |", "|---|---:|",
        f"| top-1 accuracy (in scope) | {_pct(s['top1'])} |",
        f"| recall@{evaluation.top_k} (in scope) | {_pct(s[f'recall_at_{evaluation.top_k}'])} |",
        f"| answered right (in scope, matched and right) | {_pct(s['answered_right'])} |",
        f"| out-of-scope recall (no match) | {_pct(s['oos_recall'])} |",
        f"| `high` precision / coverage | {_pct(s['high_precision'])} / {_pct(s['high_coverage'])} |",
        f"| expected calibration error of the top score | {_num(s['expected_calibration_error'])} |",
        f"| flagged ambiguous | {_pct(s['ambiguous'])} |",
        f"| decided on the semantic path | {_pct(s['semantic_path'])} |", "",
        "## Confidence tiers", "", "| tier | queries | right | precision | coverage |", "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {name} | {t.count} | {t.correct} | {_pct(t.precision)} | {_pct(t.coverage)} |"
              for name, t in evaluation.tiers.items()]
    lines += ["", "## Per task", "", "Precision: answers for the task that were right; recall: its labelled queries "
              "answered right.", "", "| task | labelled | answered | precision | recall | F1 |",
              "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {t.task_id} | {t.support} | {t.answered} | {_pct(t.precision)} | {_pct(t.recall)} | {_pct(t.f1)} |"
              for t in evaluation.per_task]
    pairs = evaluation.confusions()
    lines += ["", "## Confusion pairs", "", "In-scope queries whose top candidate is another task (all in "
              "`confusions.csv`).", ""]
    table = ["| labelled | ranked first | queries |", "|---|---|---:|", *(f"| {a} | {b} | {c} |" for a, b, c in pairs)]
    lines += table if pairs else ["No in-scope query ranked another task first."]
    errors = evaluation.misclassified()
    lines += ["", "## Misclassified examples", "",
              f"{len(errors)} in all (every one in `misclassified.jsonl`); the first "
              f"{min(len(errors), _SHOWN_ERRORS)}:", ""]
    if errors:
        lines += ["| query | labelled | answered | top candidate | score | tier | kind |",
                  "|---|---|---|---|---:|---|---|"]
        lines += [f"| {_cell(m.text)} | {m.labelled or '(out of scope)'} | {m.answered or '-'} | {m.top or '-'} | "
                  f"{m.score:.4f} | {m.confidence} | {m.kind} |" for m in errors[:_SHOWN_ERRORS]]
    if plots:
        lines += ["", "## Calibration", "", "![Reliability diagram](reliability.png)", "",
                  "![Threshold sweep](threshold_sweep.png)"]
    return "\n".join(lines) + "\n"


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}%"


def _num(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.4f}"


def _cell(text: str) -> str:
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= 120 else flat[:117] + "..."


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value

