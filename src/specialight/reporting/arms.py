"""``comparison.md``: arms of one experiment (fits of the same student on the same budget) compared at
their last evaluation, by paired intervals on the same examples, and by the teacher–student divergence on
held-out samples of each student (``scripts/compare_on_policy.py`` writes both).

Every arm's first evaluation is the untouched student (step 0), so each arm is compared with it and with
the reference arm: GSM8K dev accuracy by `paired_change` (points), the per-token NLL of the gold rationales
by `paired_difference` (nats). A change is a difference only where its 95% interval excludes 0.
"""

from __future__ import annotations

from pathlib import Path

from specialight.evaluation.likelihood import paired_difference, summarize
from specialight.reporting.claims import accuracy_change, load_run, outcomes

ACCURACY = "gsm8k_dev"
LIKELIHOOD = "nll_gsm8k_dev_zero_shot"


def nll_values(run: Path, step: int) -> dict[str, dict[str, float]]:
    """``suite -> {text id: mean per-token NLL}`` of the evaluation at ``step`` (its ``nll.jsonl``)."""
    from specialight.data.jsonl import read_jsonl

    path = run / "evaluations" / f"step-{step}" / "nll.jsonl"
    values: dict[str, dict[str, float]] = {}
    for _, row in read_jsonl(path, fields=("suite", "id", "nll")):
        values.setdefault(row["suite"], {})[row["id"]] = float(row["nll"])
    return values


def _span(value: float, low: float, high: float, digits: int, unit: str = "") -> str:
    return f"{value:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]{unit}"


def _change(before_run: Path, before: int, after_run: Path, after: int) -> tuple[str, str]:
    """GSM8K dev accuracy change (points) and likelihood change (nats/token) between two evaluations."""
    found = accuracy_change(ACCURACY, outcomes(before_run, before), outcomes(after_run, after))
    accuracy = _span(*found[:3], 1) if found else "-"
    old, new = nll_values(before_run, before).get(LIKELIHOOD), nll_values(after_run, after).get(LIKELIHOOD)
    nll = "-"
    if old and new:
        stats = paired_difference(old, new)
        nll = _span(stats["mean"], stats["low"], stats["high"], 3)
    return accuracy, nll


def _last(run: Path) -> dict:
    return [r for r in load_run(run) if r["scores"]][-1]


def arm_rows(arms: dict[str, Path], reference: str) -> list[str]:
    """One markdown table row per arm: steps, examples, GSM8K dev accuracy, NLL, and the paired changes
    against step 0 and against the ``reference`` arm."""
    rows = []
    ref_run, ref_step = arms[reference], _last(arms[reference])["step"]
    for name, run in arms.items():
        first, last = load_run(run)[0], _last(run)
        n, accuracy, (low, high) = last["n"][ACCURACY], last["scores"][ACCURACY], last["ci95"][ACCURACY]
        nll = last["nll"][LIKELIHOOD]
        from_start = _change(run, first["step"], run, last["step"])
        against = _change(ref_run, ref_step, run, last["step"]) if name != reference else ("-", "-")
        rows.append(
            f"| {name} | {last['step']} | {last['examples']} | {accuracy:.1f} [{low:.1f}, {high:.1f}] (n={n}) | "
            f"{from_start[0]} | {against[0]} | {nll['mean']:.3f} (n={nll['n']}) | {from_start[1]} | {against[1]} |"
        )
    return rows


def probe_rows(probe: dict[str, dict[str, dict[str, float]]], reference: str) -> tuple[list[str], list[str]]:
    """The divergence table's header and one row per model: each divergence's mean per-token value over the
    model's own samples of the held-out questions (``{model: {divergence: {question id: value}}}``), with its
    95% bootstrap interval, and its paired change from the ``reference`` model over the questions both kept
    (each model samples its own answer to the same question)."""
    names = sorted({name for values in probe.values() for name in values})
    header = ["| model | samples | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    rows = []
    for model, values in probe.items():
        cells = []
        for name in names:
            by_question = values.get(name, {})
            if not by_question:
                cells.append("-")
                continue
            stats = summarize(list(by_question.values()))
            cell = f"{stats['mean']:.3f} [{stats['low']:.3f}, {stats['high']:.3f}]"
            base = probe.get(reference, {}).get(name, {})
            if model != reference and base.keys() & by_question.keys():
                change = paired_difference(base, by_question)
                span = _span(change["mean"], change["low"], change["high"], 3)
                cell += f"; {span} from {reference} (n={change['n']})"
            cells.append(cell)
        count = max((len(v) for v in values.values()), default=0)
        rows.append(f"| {model} | {count} | " + " | ".join(cells) + " |")
    return header, rows


def comparison_markdown(
    arms: dict[str, Path],
    reference: str,
    probe: dict[str, dict[str, dict[str, float]]] | None = None,
    probe_reference: str = "untrained",
) -> str:
    """The ``comparison.md`` text: the arms table, then the held-out divergence table where ``probe`` is given.
    Every arm is compared with ``reference`` (no correction for the several comparisons)."""
    lines = [
        "# Arms compared",
        "",
        f"GSM8K dev accuracy (%, Wilson 95%) and the per-token NLL of its gold rationales ({LIKELIHOOD}) at "
        "each arm's last evaluation; changes are paired over the same examples with 95% bootstrap intervals, "
        f"from the untouched student (step 0) and against the `{reference}` arm (each interval on its own: "
        "no correction for the several comparisons).",
        "",
        "| arm | steps | examples | GSM8K dev | change from step 0 | change vs "
        f"{reference} | NLL | NLL change from step 0 | NLL change vs {reference} |",
        "|---|---|---|---|---|---|---|---|---|",
        *arm_rows(arms, reference),
    ]
    if probe:
        header, rows = probe_rows(probe, probe_reference)
        lines += [
            "",
            "Teacher–student divergence (nats/token, on the (k+1)-bin partition of the teacher's top-k, over the "
            "positions that carry the teacher's distribution) on each student's own samples of held-out "
            "questions, scored teacher-forced by the teacher; mean [95% interval]; the paired change from "
            f"{probe_reference} over the same questions:",
            "",
            *header,
            *rows,
        ]
    return "\n".join(lines) + "\n"
