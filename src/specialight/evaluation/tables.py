"""Printable tables of evaluation results: `format_table` (``specialight evaluate``, ``specialight validate``)
and `selection_table` (the paper's Table 3, ``selection.md`` of `specialight.training.callbacks.ModelSelection`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from specialight.evaluation.results import Results


def format_table(results: Results, per_task: bool = False) -> str:
    """A printable table: accuracy, n, 95% interval and prompts shortened per suite (BBH tasks only with
    ``per_task``), then the likelihood suites' mean NLL, n and interval."""
    names = [n for n in sorted(results.scores) if per_task or "/" not in n]
    width = max((len(n) for n in [*names, *results.nll]), default=5)
    lines = []
    if names:
        lines.append(f"{'suite':<{width}}  accuracy %      n  95% interval  shortened")
    for n in names:
        low, high = results.intervals[n]
        lines.append(
            f"{n:<{width}}  {results.scores[n]:10.1f}  {results.counts[n]:5d}  "
            f"{low:5.1f}-{high:5.1f}   {results.shortened[n]:9d}"
        )
    if results.nll:
        lines.append(f"{'likelihood suite':<{width}}  NLL/token      n  95% interval")
        for n, stats in sorted(results.nll.items()):
            lines.append(
                f"{n:<{width}}  {stats['mean']:10.3f}  {stats['n']:5d}  {stats['low']:.3f}-{stats['high']:.3f}"
            )
    return "\n".join(lines)


def score_cell(record: dict[str, Any], metric: str) -> str:
    """``"12.5 [4.1-31.0] n=24"``: a record's score with its 95% interval and count (older records
    without them: the score alone)."""
    if metric not in record["scores"]:
        return "-"
    text = f"{record['scores'][metric]:.1f}"
    interval = record.get("ci95", {}).get(metric)
    count = record.get("n", {}).get(metric)
    if interval is not None:
        text += f" [{interval[0]:.1f}-{interval[1]:.1f}]"
    return text + (f" n={count}" if count is not None else "")


def first_label(record: dict[str, Any]) -> str:
    """What a run's first evaluation was: ``before training`` at step 0, else (a run evaluated only later,
    as reproduce-cpu-formats' arms) ``first evaluation``."""
    return "before training" if record["step"] == 0 else "first evaluation"


def selection_table(summary: dict[str, Any]) -> str:
    """The paper's Table 3 as markdown: per selection criterion, the chosen step and its scores (95%
    interval, n); the first and last evaluations for reference."""
    rows = [(first_label(summary["first"]), summary["first"])]
    rows += [
        (f"selected by {metric.removeprefix('eval/')}", record) for metric, record in summary["selections"].items()
    ]
    rows.append(("end of training", summary["last"]))
    metrics = [m for m in summary["last"]["scores"] if "/" not in m]
    header = "| checkpoint | step | examples | " + " | ".join(metrics) + " |"
    lines = [header, "|" + "---|" * (3 + len(metrics))]
    for label, record in rows:
        scores = " | ".join(score_cell(record, m) for m in metrics)
        lines.append(f"| {label} | {record['step']} | {record['examples']} | {scores} |")
    note = "Cells: accuracy % [95% interval] n=examples. Selection is among training checkpoints"
    note += " and the step-0 evaluation." if summary.get("include_initial") else " (step 0 excluded)."
    return "\n".join(lines) + "\n\n" + note + "\n"
