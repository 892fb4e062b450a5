"""`Results` of an evaluation: scoring completions, counting per suite and writing what was seen.

`score_records` grades each completion (one record per example), `count` and `results_from_counts` turn
records into accuracies with n and a 95% interval (`specialight.evaluation.intervals`), BBH means over tasks
included, and `write_results` writes ``<out>/<suite>.jsonl``, ``nll.jsonl`` and ``summary.json``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from specialight.data.answers import extract_answer, is_correct
from specialight.evaluation.intervals import accuracy_interval, mean_interval
from specialight.evaluation.likelihood import summarize
from specialight.evaluation.suites import EvalItem


@dataclass
class Results:
    """Per suite: accuracy (%), examples, 95% interval (%, low and high) and prompts shortened to fit; per
    likelihood suite ``nll``: ``{mean, n, low, high}`` and ``nll_values``: example id -> mean per-token NLL."""

    scores: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    shortened: dict[str, int] = field(default_factory=dict)
    nll: dict[str, dict[str, float]] = field(default_factory=dict)
    nll_values: dict[str, dict[str, float]] = field(default_factory=dict)

    def add_counts(self, suite: str, correct: int, total: int, shortened: int) -> None:
        """Add a leaf suite from its counts."""
        self.scores[suite] = 100.0 * correct / total
        self.counts[suite] = total
        self.intervals[suite] = accuracy_interval(correct, total)
        self.shortened[suite] = shortened

    def add_likelihood(self, suite: str, values: dict[str, float]) -> None:
        """Add a likelihood suite from its per-example NLLs."""
        self.nll_values[suite] = values
        self.nll[suite] = summarize(list(values.values()))

    def add_mean(self, name: str, parts: list[str]) -> None:
        """Add suite ``name`` as the unweighted mean of ``parts`` (interval of a mean of proportions)."""
        self.scores[name] = sum(self.scores[p] for p in parts) / len(parts)
        self.counts[name] = sum(self.counts[p] for p in parts)
        self.intervals[name] = mean_interval([(self.scores[p], self.counts[p]) for p in parts])
        self.shortened[name] = sum(self.shortened[p] for p in parts)

    def summary(self) -> dict[str, dict]:
        """What ``summary.json`` holds and an evaluation record carries beside its ``scores``."""
        summary: dict[str, dict] = {
            "scores": self.scores,
            "n": self.counts,
            "ci95": {k: [round(v, 2) for v in pair] for k, pair in self.intervals.items()},
            "shortened": self.shortened,
        }
        if self.nll:
            summary["nll"] = {k: {f: round(v, 5) for f, v in stats.items()} for k, stats in self.nll.items()}
        return summary


def score_records(items: list[EvalItem], completions: list[str], shortened: list[bool] | None = None) -> list[dict]:
    """One record per example: id, prompt id, completion, extracted answer, gold, correct, shortened."""
    flags_shortened = shortened or [False] * len(items)
    records = []
    for item, completion, cut in zip(items, completions, flags_shortened, strict=True):
        # a student without newlines (T5) writes the prompts' stand-in: grade its lines as lines
        text = completion.replace(item.newline, "\n") if item.newline else completion
        records.append(
            {
                "suite": item.suite,
                "id": item.id,
                "prompt_id": item.prompt_id,
                "completion": completion,
                "extracted": extract_answer(text, item.task, item.cot),
                "gold": item.gold,
                "correct": is_correct(text, item.gold, item.task, item.cot),
                "shortened": cut,
            }
        )
    return records


def count(records: list[dict]) -> dict[str, tuple[int, int, int]]:
    """``suite -> (correct, total, shortened)`` of per-example records."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for record in records:
        entry = counts[record["suite"]]
        entry[0] += bool(record["correct"])
        entry[1] += 1
        entry[2] += bool(record["shortened"])
    return {suite: (c, t, s) for suite, (c, t, s) in counts.items()}


def results_from_counts(counts: dict[str, tuple[int, int, int]]) -> Results:
    """`Results` of leaf suites from their counts, with the BBH means over tasks."""
    results = Results()
    for suite, (correct, total, shortened) in counts.items():
        if total:
            results.add_counts(suite, correct, total, shortened)
    for family in ("bbh_ao", "bbh_cot"):
        tasks = [k for k in results.scores if k.startswith(family + "/")]
        if tasks:
            results.add_mean(family, tasks)
    return results


def score(
    items: list[EvalItem], completions: list[str], shortened: list[bool] | None = None
) -> tuple[Results, list[dict]]:
    """Accuracy (%), n and interval per suite from completions, and the per-example records."""
    records = score_records(items, completions, shortened)
    return results_from_counts(count(records)), records


def write_results(out: Path, results: Results, records: list[dict]) -> None:
    """Per-example JSONL per suite family, ``nll.jsonl`` (likelihood suites) and ``summary.json``."""
    out.mkdir(parents=True, exist_ok=True)
    by_file = defaultdict(list)
    for record in records:
        by_file[record["suite"].split("/", 1)[0]].append(record)
    for name, rows in by_file.items():
        with (out / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if results.nll_values:
        with (out / "nll.jsonl").open("w", encoding="utf-8") as handle:
            for suite, values in results.nll_values.items():
                handle.writelines(json.dumps({"suite": suite, "id": k, "nll": v}) + "\n" for k, v in values.items())
    (out / "summary.json").write_text(json.dumps(results.summary(), indent=2, sort_keys=True))
