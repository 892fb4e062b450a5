"""`Evaluator`: generate for every suite in one length-sorted pass, score, and write what it saw.

Every run writes ``<out>/<suite>.jsonl`` (one line per example: id, prompt id, completion, extracted
answer, gold, correct, whether the prompt was shortened) and ``<out>/summary.json`` (``scores``, ``n``,
``ci95``, ``shortened`` per suite), so each number traces back to its completions. Scores are accuracies in
percent with n and a 95% interval (`specialight.evaluation.intervals`). BBH suites report the unweighted
mean over tasks (``bbh_cot``) and each task (``bbh_cot/<task>``); ``mas_*`` is the mean of its three parts.
Prompts longer than the model's context are shortened first (`specialight.evaluation.context`) and
counted per suite.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from specialight.data.answers import extract_answer, is_correct
from specialight.data.formats import newline_separator
from specialight.evaluation.context import FittedPrompt, context_length, fit_prompt
from specialight.evaluation.generation import generate
from specialight.evaluation.intervals import accuracy_interval, mean_interval
from specialight.evaluation.suites import COMPOSITES, EvalItem, build_items, expand

logger = logging.getLogger(__name__)


@dataclass
class EvalSettings:
    """How suites are run.

    Args:
        suites: suite names (`specialight.evaluation.suites`).
        limit: cap on each math suite and each BBH task (None: all).
        limits: per-suite caps overriding ``limit`` (``{"bbh_cot": 5}``).
        prompt_file: in-context math prompt (default: the paper's ``prompt_simple_4_cases.txt``).
        bbh_tasks: a subset of the 27 BBH tasks (None: all).
        max_new_tokens: generation budget (the paper: 256).
        answer_only_max_new_tokens: budget for ``bbh_ao`` (answers are a few tokens).
        batch_size: prompts per generate call.
        data_dir: benchmark folder.
    """

    suites: list[str]
    limit: int | None = None
    limits: dict[str, int] | None = None
    prompt_file: str | None = None
    bbh_tasks: list[str] | None = None
    max_new_tokens: int = 256
    answer_only_max_new_tokens: int = 32
    batch_size: int = 16
    data_dir: str | None = None


@dataclass
class Results:
    """Per suite: accuracy (%), examples, 95% interval (%, low and high) and prompts shortened to fit."""

    scores: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    shortened: dict[str, int] = field(default_factory=dict)

    def add_mean(self, name: str, parts: list[str]) -> None:
        """Add suite ``name`` as the unweighted mean of ``parts`` (interval of a mean of proportions)."""
        self.scores[name] = sum(self.scores[p] for p in parts) / len(parts)
        self.counts[name] = sum(self.counts[p] for p in parts)
        self.intervals[name] = mean_interval([(self.scores[p], self.counts[p]) for p in parts])
        self.shortened[name] = sum(self.shortened[p] for p in parts)

    def summary(self) -> dict[str, dict]:
        """What ``summary.json`` holds and an evaluation record carries beside its ``scores``."""
        return {
            "scores": self.scores,
            "n": self.counts,
            "ci95": {k: [round(v, 2) for v in pair] for k, pair in self.intervals.items()},
            "shortened": self.shortened,
        }


def score(
    items: list[EvalItem], completions: list[str], shortened: list[bool] | None = None
) -> tuple[Results, list[dict]]:
    """Accuracy (%), n and interval per suite from completions, and the per-example records."""
    flags_shortened = shortened or [False] * len(items)
    records, by_suite = [], defaultdict(list)
    for item, completion, cut in zip(items, completions, flags_shortened, strict=True):
        correct = is_correct(completion, item.gold, item.task, item.cot)
        records.append(
            {
                "suite": item.suite,
                "id": item.id,
                "prompt_id": item.prompt_id,
                "completion": completion,
                "extracted": extract_answer(completion, item.task, item.cot),
                "gold": item.gold,
                "correct": correct,
                "shortened": cut,
            }
        )
        by_suite[item.suite].append((correct, cut))
    results = Results()
    for suite, flags in by_suite.items():
        correct = sum(c for c, _ in flags)
        results.scores[suite] = 100.0 * correct / len(flags)
        results.counts[suite] = len(flags)
        results.intervals[suite] = accuracy_interval(correct, len(flags))
        results.shortened[suite] = sum(cut for _, cut in flags)
    for family in ("bbh_ao", "bbh_cot"):
        tasks = [k for k in by_suite if k.startswith(family + "/")]
        if tasks:
            results.add_mean(family, tasks)
    return results, records


class Evaluator:
    """Runs suites on a model; `run` returns the `Results` of every suite, composites included."""

    def __init__(self, model, tokenizer, settings: EvalSettings) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.newline = newline_separator(tokenizer)
        self._items: list[EvalItem] | None = None
        self._fitted: list[FittedPrompt] | None = None

    def items(self) -> list[EvalItem]:
        """Every prompt of every leaf suite (built once)."""
        if self._items is None:
            s = self.settings
            limits = s.limits or {}
            self._items = [
                item
                for suite in expand(s.suites)
                for item in build_items(
                    suite,
                    s.data_dir,
                    self.newline,
                    limits.get(suite, s.limit),
                    s.prompt_file,
                    s.bbh_tasks,
                    s.max_new_tokens,
                    s.answer_only_max_new_tokens,
                )
            ]
        return self._items

    def fitted(self) -> list[FittedPrompt]:
        """Every item's prompt fitted to the model's context (built once)."""
        if self._fitted is None:
            config = self.model.config
            context = context_length(config)
            encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
            self._fitted = [fit_prompt(item, self.tokenizer, context, encoder_decoder) for item in self.items()]
            if any(f.shortened for f in self._fitted):
                logger.info(
                    "%d of %d prompts shortened to fit the model's %s positions",
                    sum(f.shortened for f in self._fitted),
                    len(self._fitted),
                    context,
                )
        return self._fitted

    def run(
        self,
        out_dir: str | os.PathLike | None = None,
        progress: bool = True,
        context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> Results:
        """Generate, score, write files under ``out_dir`` (when given) and return the results."""
        items, fitted = self.items(), self.fitted()
        completions = generate(
            self.model,
            self.tokenizer,
            [f.text for f in fitted],
            [i.max_new_tokens for i in items],
            self.settings.batch_size,
            progress=progress,
            context=context,
            description="evaluate",
            max_prompt_tokens=[f.max_tokens for f in fitted],
        )
        results, records = score(items, completions, [f.shortened for f in fitted])
        for name in self.settings.suites:
            if name in COMPOSITES:
                results.add_mean(name, list(COMPOSITES[name]))
        if out_dir is not None:
            write_results(Path(out_dir), results, records)
        return results


def write_results(out: Path, results: Results, records: list[dict]) -> None:
    """Per-example JSONL per suite family and ``summary.json``."""
    out.mkdir(parents=True, exist_ok=True)
    by_file = defaultdict(list)
    for record in records:
        by_file[record["suite"].split("/", 1)[0]].append(record)
    for name, rows in by_file.items():
        with (out / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    (out / "summary.json").write_text(json.dumps(results.summary(), indent=2, sort_keys=True))


def format_table(results: Results, per_task: bool = False) -> str:
    """A printable table: accuracy, n, 95% interval and prompts shortened per suite (BBH tasks only with
    ``per_task``)."""
    names = [n for n in sorted(results.scores) if per_task or "/" not in n]
    width = max((len(n) for n in names), default=5)
    lines = [f"{'suite':<{width}}  accuracy %      n  95% interval  shortened"]
    for n in names:
        low, high = results.intervals[n]
        lines.append(
            f"{n:<{width}}  {results.scores[n]:10.1f}  {results.counts[n]:5d}  "
            f"{low:5.1f}-{high:5.1f}   {results.shortened[n]:9d}"
        )
    return "\n".join(lines)


def load_for_evaluation(model: str, device: str = "cpu"):
    """A model and its tokenizer from a folder, hub id or alias, or a specialight ``.ckpt``."""
    import torch

    from specialight.models import load_student, load_tokenizer

    if model.endswith(".ckpt"):
        if not Path(model).is_file():
            raise FileNotFoundError(f"{model}: no such checkpoint file")
        from specialight.module import SpecializationModule

        module = SpecializationModule.load_from_checkpoint(model, map_location=torch.device(device))
        return module.model.eval(), load_tokenizer(module.hparams.model_name_or_path)
    return load_student(model).to(device).eval(), load_tokenizer(model)
