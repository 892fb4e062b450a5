"""``claims.md``: which of the paper's claims a finished run shows, judged by paired intervals.

Every judgement compares two evaluations of the same examples (the run's first and last evaluation, two
selected checkpoints, or two runs' last evaluations) by the 95% paired-bootstrap interval of the change
(`specialight.evaluation.intervals.paired_change` for accuracies, the run's ``nll_change`` for the
likelihood suites). A change is *shown* where its interval excludes 0 on the side the paper claims,
*opposite* where it excludes 0 on the other side, and *not shown* where it contains 0. Point estimates
never decide.

Claims (Fu et al., 2023): (a) specializing raises math (in-distribution GSM8K, out-of-distribution
M-A-S) while BBH answer-only drops and BBH CoT falls; (c) in-context tuning data keeps in-context
ability where zero-shot data trades it away (Fig. 4; needs two runs, ``specialight claims --in_context_run`` and
``--zero_shot_run``); (d) selecting on M-A-S dev picks a checkpoint better out of distribution than
selecting on GSM8K dev.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from specialight.core.constants import EVALUATIONS_FILE
from specialight.data.jsonl import DataError, read_jsonl
from specialight.evaluation.intervals import paired_change
from specialight.evaluation.suites import COMPOSITES


@dataclass(frozen=True)
class Judgement:
    """One measured change and what it says about a claim."""

    claim: str
    metric: str
    compared: str
    change: float
    low: float
    high: float
    n: int
    expected: int  # +1: the paper claims a rise, -1: a fall
    unit: str = "points"

    @property
    def verdict(self) -> str:
        """``shown``, ``opposite`` or ``not shown`` from the interval alone."""
        if self.low > 0 or self.high < 0:
            return "shown" if (self.low > 0) == (self.expected > 0) else "opposite"
        return "not shown"

    def row(self) -> str:
        digits = 3 if self.unit == "nats" else 1
        change = f"{self.change:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}] {self.unit}"
        claimed = "rise" if self.expected > 0 else "fall"
        return (
            f"| {self.claim} | {self.metric} | {self.compared} | {change} | {self.n} | {claimed} | **{self.verdict}** |"
        )


def load_run(run: Path) -> list[dict]:
    """The evaluation records of a run folder (``evaluations.jsonl``), in order."""
    return [row for _, row in read_jsonl(run / EVALUATIONS_FILE, fields=("step", "scores"))]


def outcomes(run: Path, step: int) -> dict[str, dict[str, bool]]:
    """``suite -> {example id: correct}`` of the evaluation at ``step`` (its per-example files)."""
    folder = run / "evaluations" / f"step-{step}"
    if not folder.is_dir():
        raise DataError(f"{folder}: no per-example records of the evaluation at step {step}")
    result: dict[str, dict[str, bool]] = {}
    for path in sorted(folder.glob("*.jsonl")):
        if path.name == "nll.jsonl":
            continue
        for _, row in read_jsonl(path, fields=("suite", "id", "correct")):
            result.setdefault(row["suite"], {})[row["id"]] = bool(row["correct"])
    return result


def _parts(metric: str, suites: dict[str, dict[str, bool]]) -> list[str]:
    """The leaf suites a metric averages: itself, a composite's members, or BBH's tasks."""
    if metric in COMPOSITES:
        return list(COMPOSITES[metric])
    tasks = sorted(s for s in suites if s.startswith(f"{metric}/"))
    return tasks or [metric]


def accuracy_change(
    metric: str, before: dict[str, dict[str, bool]], after: dict[str, dict[str, bool]]
) -> tuple[float, float, float, int] | None:
    """``(change, low, high, n)`` of ``metric`` between two evaluations (None where either lacks it)."""
    parts = []
    for suite in _parts(metric, after):
        if suite not in before or suite not in after:
            return None
        common = sorted(before[suite].keys() & after[suite].keys())
        if not common:
            return None
        parts.append([(before[suite][key], after[suite][key]) for key in common])
    change, low, high = paired_change(parts)
    return change, low, high, sum(len(p) for p in parts)


def judge_run(run: Path) -> tuple[list[Judgement], list[str]]:
    """Claims (a) and (d) on one run: the judgements and notes on what could not be judged."""
    records = load_run(run)
    judgements: list[Judgement] = []
    notes: list[str] = []
    generation = [r for r in records if r["scores"]]
    if len(generation) < 2:
        return [], [f"{run}: fewer than two generation evaluations; nothing to compare"]
    first, last = generation[0], generation[-1]
    before, after = outcomes(run, first["step"]), outcomes(run, last["step"])
    compared = f"step {first['step']} -> {last['step']}"
    for metric, expected in (("gsm8k_dev", 1), ("mas_dev", 1), ("bbh_ao", -1), ("bbh_cot", -1)):
        found = accuracy_change(metric, before, after)
        if found is None:
            notes.append(f"(a) {metric}: not evaluated in this run")
            continue
        change, low, high, n = found
        judgements.append(Judgement("(a)", metric, compared, change, low, high, n, expected))
    final_nll = next((r for r in reversed(records) if r.get("nll_change")), None)
    for suite, expected in (
        ("nll_gsm8k_dev_zero_shot", -1),
        ("nll_gsm8k_dev_in_context", -1),
        ("nll_bbh_cot", 1),
        ("nll_bbh_ao", 1),
    ):
        stats = (final_nll or {}).get("nll_change", {}).get(suite)
        if stats:
            step = f"step {records[0]['step']} -> {final_nll['step']}"
            judgements.append(
                Judgement("(a)", suite, step, stats["mean"], stats["low"], stats["high"], stats["n"], expected, "nats")
            )
    judgements += _judge_selection(run, notes)
    return judgements, notes


def _judge_selection(run: Path, notes: list[str]) -> list[Judgement]:
    path = run / "selection.json"
    if not path.is_file():
        notes.append("(d) no selection.json (no ModelSelection callback)")
        return []
    selections = json.loads(path.read_text())["selections"]
    ours, theirs = selections.get("eval/mas_dev"), selections.get("eval/gsm8k_dev")
    if ours is None or theirs is None:
        notes.append("(d) needs selections on both eval/mas_dev and eval/gsm8k_dev")
        return []
    if ours["step"] == theirs["step"]:
        notes.append(f"(d) not shown: selecting on M-A-S dev and on GSM8K dev both pick step {ours['step']}")
        return []
    found = accuracy_change("mas_dev", outcomes(run, theirs["step"]), outcomes(run, ours["step"]))
    if found is None:
        return []
    notes.append(
        "(d) is judged on M-A-S dev itself, the set the selection used, so it favours the M-A-S choice; "
        "a held-out M-A-S test evaluation of both checkpoints would remove that bias"
    )
    compared = f"GSM8K-selected step {theirs['step']} -> M-A-S-selected step {ours['step']}"
    return [Judgement("(d)", "mas_dev", compared, *found[:3], found[3], 1)]


def judge_formats(in_context: Path, zero_shot: Path) -> list[Judgement]:
    """Claim (c): in-context evaluation of the in-context-tuned run against the zero-shot-tuned run's,
    both at their last evaluation (the same questions, paired)."""
    ends = []
    for run in (zero_shot, in_context):
        last = [r for r in load_run(run) if r["scores"]][-1]
        ends.append((last["step"], outcomes(run, last["step"])))
    judgements = []
    for metric in ("gsm8k_dev", "mas_dev"):
        found = accuracy_change(metric, ends[0][1], ends[1][1])
        if found is not None:
            compared = (
                f"zero-shot-tuned (step {ends[0][0]}) -> in-context-tuned (step {ends[1][0]}), in-context prompts"
            )
            judgements.append(Judgement("(c)", metric, compared, *found[:3], found[3], 1))
    return judgements


def claims_markdown(run: Path, in_context: Path | None = None, zero_shot: Path | None = None) -> str:
    """The ``claims.md`` text for ``run`` (and the two format arms for claim (c), where given)."""
    judgements, notes = judge_run(run)
    if in_context and zero_shot:
        judgements += judge_formats(in_context, zero_shot)
    else:
        notes.append("(c) not tested by this run: it needs the two format arms (make reproduce-cpu-formats)")
    lines = [
        f"# Claims of Fu et al. (2023) on `{run}`",
        "",
        "Each row is a paired change between two evaluations of the same examples, with its 95% bootstrap "
        "interval; a claim is **shown** only where the interval excludes 0 on the claimed side, **opposite** "
        "where it excludes 0 on the other side, **not shown** where it contains 0.",
        "",
        "| claim | metric | compared | change [95% interval] | n | paper | verdict |",
        "|---|---|---|---|---|---|---|",
        *(j.row() for j in judgements),
    ]
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"
