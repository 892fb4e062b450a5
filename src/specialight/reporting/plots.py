"""The paper's figures from logged runs.

A run is a folder holding ``evaluations.jsonl`` (written by `PeriodicEvaluation`; ``selection.json`` beside
it marks the chosen checkpoint). `curves_figure` draws Figure-3-style curves, accuracy on GSM8K, M-A-S,
BBH answer-only and BBH CoT against examples seen, one line per run; `scaling_figure` draws the
Figure-2-style trade-off across model sizes: accuracy against parameters (log scale), before and after
specialization; `likelihood_figure` draws the likelihood suites (``nll_*``), one panel each, with their
bootstrap bands; `dose_response_figure` draws accuracy and likelihood on GSM8K dev and M-A-S dev against
training examples seen (a record's ``examples``: the rows its batches held, summed over ranks, whether
batches hold a fixed count or fill a token budget). Each score's 95% interval (``ci95`` beside ``scores``
in a record) is drawn as a band (curves) or error bar (scaling); records written before intervals existed
are drawn without one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specialight.core.constants import EVALUATIONS_FILE
from specialight.data.jsonl import read_jsonl

PANELS = (
    ("GSM8K (in-distribution)", ("gsm8k_test", "gsm8k_dev")),
    ("MultiArith / ASDiv / SVAMP (out-of-distribution)", ("mas_test", "mas_dev")),
    ("BIG-Bench Hard, answer-only", ("bbh_ao",)),
    ("BIG-Bench Hard, chain of thought", ("bbh_cot",)),
)

DOSE_PANELS = (  # title, accuracy suite, likelihood suites (the first evaluated is drawn)
    ("GSM8K dev", "gsm8k_dev", ("nll_gsm8k_dev_zero_shot", "nll_gsm8k_dev_in_context")),
    ("MultiArith / ASDiv / SVAMP dev", "mas_dev", ("nll_mas_dev",)),
)


@dataclass
class Run:
    """One run's evaluations (in step order) and, where selection ran, the selected step."""

    name: str
    records: list[dict[str, Any]]
    selected_step: int | None = None
    selection: dict[str, Any] = field(default_factory=dict)

    def series(self, metric: str) -> tuple[list[int], list[float]]:
        """(examples seen, accuracy) wherever ``metric`` was evaluated."""
        points = [(r["examples"], r["scores"][metric]) for r in self.records if metric in r["scores"]]
        return [x for x, _ in points], [y for _, y in points]

    def band(self, metric: str) -> tuple[list[int], list[float], list[float]]:
        """(examples seen, low, high) of the 95% interval wherever ``metric`` has one."""
        points = [
            (r["examples"], *r["ci95"][metric])
            for r in self.records
            if metric in r["scores"] and metric in r.get("ci95", {})
        ]
        return [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]

    def record_at(self, step: int | None) -> dict[str, Any]:
        """The evaluation record at ``step`` (the last one when None or not evaluated)."""
        matching = [r for r in self.records if r["step"] == step] if step is not None else []
        return (matching or self.records)[-1]

    def at_step(self, step: int | None) -> dict[str, float]:
        """The scores evaluated at ``step`` (the last evaluation when None)."""
        return self.record_at(step)["scores"]

    @property
    def num_parameters(self) -> int:
        return int(self.records[0].get("num_parameters", 0))


def load_runs(logdirs: list[str | os.PathLike]) -> list[Run]:
    """Every run (``evaluations.jsonl``) under the given folders, in path order."""
    runs = []
    for logdir in logdirs:
        root = Path(logdir)
        files = (
            [root / EVALUATIONS_FILE] if (root / EVALUATIONS_FILE).is_file() else sorted(root.rglob(EVALUATIONS_FILE))
        )
        if not files:
            raise FileNotFoundError(f"no {EVALUATIONS_FILE} under {root} (a run with PeriodicEvaluation writes one)")
        for path in files:
            records = sorted((row for _, row in read_jsonl(path, ("step", "scores"))), key=lambda r: r["step"])
            name = str(path.parent.relative_to(root)) if path.parent != root else root.name
            run = Run(name=f"{root.name}/{name}" if name != root.name else name, records=records)
            selection_path = path.parent / "selection.json"
            if selection_path.is_file():
                run.selection = json.loads(selection_path.read_text())
                best = run.selection.get("best_checkpoint") or {}
                run.selected_step = best.get("step")
            runs.append(run)
    return runs


def _metric(runs: list[Run], candidates: tuple[str, ...]) -> str | None:
    for metric in candidates:
        if any(metric in r["scores"] for run in runs for r in run.records):
            return metric
    return None


def curves_figure(runs: list[Run]):
    """Figure 3: four panels of accuracy against examples seen; a star marks each selected checkpoint."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    for axis, (title, candidates) in zip(axes.flat, PANELS):
        metric = _metric(runs, candidates)
        axis.set_title(f"{title}\n[{metric or 'not evaluated'}]", fontsize=10)
        axis.set_ylabel("accuracy (%)")
        axis.grid(alpha=0.3)
        if metric is None:
            continue
        for run in runs:
            xs, ys = run.series(metric)
            (line,) = axis.plot(xs, ys, marker="o", markersize=3, label=run.name)
            band_x, low, high = run.band(metric)
            if band_x:
                axis.fill_between(band_x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
            if run.selected_step is not None:
                chosen = [
                    (r["examples"], r["scores"][metric])
                    for r in run.records
                    if r["step"] == run.selected_step and metric in r["scores"]
                ]
                if chosen:
                    axis.plot(*chosen[0], marker="*", markersize=14, color=line.get_color())
    for axis in axes[1]:
        axis.set_xlabel("training examples seen")
    axes.flat[0].legend(fontsize=8)
    figure.suptitle("Accuracy against training examples seen; bands: 95% intervals; ★ = selected checkpoint")
    figure.tight_layout()
    return figure


def scaling_figure(runs: list[Run]):
    """Figure 2: accuracy against parameters (log scale), before (step 0) and after (selected or last)."""
    import matplotlib.pyplot as plt

    ordered = sorted(runs, key=lambda r: r.num_parameters)
    params = [r.num_parameters for r in ordered]
    figure, axes = plt.subplots(1, len(PANELS), figsize=(15, 3.8))
    for axis, (title, candidates) in zip(axes, PANELS):
        metric = _metric(runs, candidates)
        axis.set_title(f"{title}\n[{metric or 'not evaluated'}]", fontsize=9)
        axis.set_xscale("log")
        axis.set_xlabel("parameters")
        axis.grid(alpha=0.3)
        if metric is None:
            continue
        for label, marker, records in (
            ("before", "o", [r.records[0] for r in ordered]),
            ("specialized", "s", [r.record_at(r.selected_step) for r in ordered]),
        ):
            values = [r["scores"].get(metric, float("nan")) for r in records]
            errors = _error_bars(records, metric, values)
            axis.errorbar(params, values, yerr=errors, marker=marker, capsize=3, label=label)
    axes[0].set_ylabel("accuracy (%)")
    axes[0].legend(fontsize=8)
    figure.suptitle("Accuracy against parameters, before training and at the selected checkpoint (bars: 95% intervals)")
    figure.tight_layout()
    return figure


def _error_bars(records: list[dict[str, Any]], metric: str, values: list[float]) -> list[list[float]] | None:
    """``[[below...], [above...]]`` for `errorbar` (zero where a record has no interval), or None."""
    intervals = [r.get("ci95", {}).get(metric) for r in records]
    if not any(intervals):
        return None
    below = [v - i[0] if i else 0.0 for v, i in zip(values, intervals, strict=True)]
    above = [i[1] - v if i else 0.0 for v, i in zip(values, intervals, strict=True)]
    return [below, above]


def likelihood_suites(runs: list[Run]) -> list[str]:
    """The likelihood suites (``nll_*``) any of the runs evaluated, in name order."""
    return sorted({suite for run in runs for record in run.records for suite in record.get("nll", {})})


def likelihood_figure(runs: list[Run]):
    """One panel per likelihood suite: mean per-token NLL of its reference text against examples seen."""
    import matplotlib.pyplot as plt

    suites = likelihood_suites(runs)
    figure, axes = plt.subplots(1, len(suites), figsize=(4.2 * len(suites), 3.8), squeeze=False)
    for axis, suite in zip(axes[0], suites):
        axis.set_title(suite, fontsize=10)
        axis.set_xlabel("training examples seen")
        axis.grid(alpha=0.3)
        for run in runs:
            points = [(r["examples"], r["nll"][suite]) for r in run.records if suite in r.get("nll", {})]
            xs = [x for x, _ in points]
            (line,) = axis.plot(xs, [p["mean"] for _, p in points], marker="o", markersize=3, label=run.name)
            low, high = [p["low"] for _, p in points], [p["high"] for _, p in points]
            axis.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    axes[0][0].set_ylabel("mean NLL per token (nats)")
    axes[0][0].legend(fontsize=8)
    figure.suptitle("Likelihood of reference text against training examples seen; bands: 95% bootstrap intervals")
    figure.tight_layout()
    return figure


def _line_with_band(axis, xs: list, ys: list, low: list, high: list, label: str) -> None:
    (line,) = axis.plot(xs, ys, marker="o", markersize=3, label=label)
    if low:
        axis.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)


def dose_response_figure(runs: list[Run]):
    """Accuracy (top row, %) and mean per-token NLL of the reference rationales (bottom row) on GSM8K dev and
    M-A-S dev against training examples seen, with 95% bands (intervals of the proportions; bootstrap
    intervals of the NLL). A panel whose suite no run evaluated says so."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(DOSE_PANELS), figsize=(11, 7.5), sharex="col", squeeze=False)
    for column, (title, accuracy, likelihoods) in enumerate(DOSE_PANELS):
        top, bottom = axes[0][column], axes[1][column]
        nll = next((s for s in likelihoods if s in likelihood_suites(runs)), None)
        measured = any(accuracy in r["scores"] for run in runs for r in run.records)
        top.set_title(f"{title}: accuracy [{accuracy if measured else 'not evaluated'}]", fontsize=10)
        bottom.set_title(f"{title}: likelihood [{nll or 'no likelihood suite evaluated'}]", fontsize=10)
        top.set_ylabel("accuracy (%)")
        bottom.set_ylabel("mean NLL per token (nats)")
        bottom.set_xlabel("training examples seen")
        for run in runs:
            if measured:
                xs, ys = run.series(accuracy)
                _, low, high = run.band(accuracy)
                _line_with_band(top, xs, ys, low if len(low) == len(xs) else [], high, run.name)
            if nll is not None:
                points = [(r["examples"], r["nll"][nll]) for r in run.records if nll in r.get("nll", {})]
                stats = [p for _, p in points]
                low, high = [p["low"] for p in stats], [p["high"] for p in stats]
                _line_with_band(bottom, [x for x, _ in points], [p["mean"] for p in stats], low, high, run.name)
        for axis in (top, bottom):
            axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.suptitle("Dose-response: math accuracy and likelihood against training examples seen; bands: 95% intervals")
    figure.tight_layout()
    return figure


def plot_runs(logdirs: list[str | os.PathLike], out: str | os.PathLike) -> list[Path]:
    """Write the curves to ``out`` and beside it the dose-response figure (``<out>_dose_response``), the
    likelihood panels where likelihood suites ran, and the scaling plot for runs of several model sizes."""
    runs = load_runs(logdirs)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    written = [out_path]
    curves_figure(runs).savefig(out_path, dpi=120)
    dose = out_path.with_name(out_path.stem + "_dose_response" + out_path.suffix)
    dose_response_figure(runs).savefig(dose, dpi=120)
    written.append(dose)
    if len({run.num_parameters for run in runs}) > 1:
        scaling = out_path.with_name(out_path.stem + "_scaling" + out_path.suffix)
        scaling_figure(runs).savefig(scaling, dpi=120)
        written.append(scaling)
    if likelihood_suites(runs):
        likelihood = out_path.with_name(out_path.stem + "_likelihood" + out_path.suffix)
        likelihood_figure(runs).savefig(likelihood, dpi=120)
        written.append(likelihood)
    return written
