"""`Evaluator`: generate for every suite in one length-sorted pass, score, and write what it saw.

Every run writes ``<out>/<suite>.jsonl`` (one line per example: id, prompt id, completion, extracted
answer, gold, correct) and ``<out>/summary.json``, so each number traces back to its completions.
Scores are accuracies in percent. BBH suites report the unweighted mean over tasks (``bbh_cot``) and each
task (``bbh_cot/<task>``); ``mas_dev`` is the mean of its three parts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from specialight.data.answers import extract_answer, is_correct
from specialight.data.formats import newline_separator
from specialight.evaluation.generation import generate
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


def score(items: list[EvalItem], completions: list[str]) -> tuple[dict[str, float], list[dict]]:
    """Accuracy (%) per suite from completions, and the per-example records."""
    records, by_suite = [], defaultdict(list)
    for item, completion in zip(items, completions, strict=True):
        correct = is_correct(completion, item.gold, item.task, item.options)
        records.append(
            {
                "suite": item.suite,
                "id": item.id,
                "prompt_id": item.prompt_id,
                "completion": completion,
                "extracted": extract_answer(completion, item.task),
                "gold": item.gold,
                "correct": correct,
            }
        )
        by_suite[item.suite].append(correct)
    scores = {suite: 100.0 * sum(flags) / len(flags) for suite, flags in by_suite.items()}
    for family in ("bbh_ao", "bbh_cot"):
        tasks = [v for k, v in scores.items() if k.startswith(family + "/")]
        if tasks:
            scores[family] = sum(tasks) / len(tasks)
    return scores, records


class Evaluator:
    """Runs suites on a model; `run` returns ``{suite: accuracy %}`` including composites."""

    def __init__(self, model, tokenizer, settings: EvalSettings) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.newline = newline_separator(tokenizer)
        self._items: list[EvalItem] | None = None

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

    def run(
        self,
        out_dir: str | os.PathLike | None = None,
        progress: bool = True,
        context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> dict[str, float]:
        """Generate, score, write files under ``out_dir`` (when given) and return the scores."""
        items = self.items()
        completions = generate(
            self.model,
            self.tokenizer,
            [i.prompt for i in items],
            [i.max_new_tokens for i in items],
            self.settings.batch_size,
            progress=progress,
            context=context,
            description="evaluate",
        )
        scores, records = score(items, completions)
        for name in self.settings.suites:
            if name in COMPOSITES:
                scores[name] = sum(scores[part] for part in COMPOSITES[name]) / len(COMPOSITES[name])
        if out_dir is not None:
            write_results(Path(out_dir), scores, records)
        return scores


def write_results(out: Path, scores: dict[str, float], records: list[dict]) -> None:
    """Per-example JSONL per suite family and ``summary.json``."""
    out.mkdir(parents=True, exist_ok=True)
    by_file = defaultdict(list)
    for record in records:
        by_file[record["suite"].split("/", 1)[0]].append(record)
    for name, rows in by_file.items():
        with (out / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    (out / "summary.json").write_text(json.dumps(scores, indent=2, sort_keys=True))


def format_table(scores: dict[str, float], per_task: bool = False) -> str:
    """A printable table of suite scores (BBH tasks only with ``per_task``)."""
    names = [n for n in sorted(scores) if per_task or "/" not in n]
    width = max((len(n) for n in names), default=5)
    return "\n".join([f"{'suite':<{width}}  accuracy %"] + [f"{n:<{width}}  {scores[n]:10.1f}" for n in names])


def load_for_evaluation(model: str, device: str = "cpu"):
    """A model and its tokenizer from a folder, hub id or alias, or a specialight ``.ckpt``."""
    import torch

    from specialight.models import load_student, load_tokenizer

    if model.endswith(".ckpt"):
        from specialight.module import SpecializationModule

        module = SpecializationModule.load_from_checkpoint(model, map_location=torch.device(device))
        return module.model.eval(), load_tokenizer(module.hparams.model_name_or_path)
    return load_student(model).to(device).eval(), load_tokenizer(model)
