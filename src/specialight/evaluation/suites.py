"""Evaluation suites: which questions, in which prompt, scored how.

Math suites ``<task>_<split>`` (``gsm8k_dev``, ``gsm8k_test``, ``multiarith_dev``, ``multiarith_test``,
``asdiv_dev``, ``asdiv_test``, ``asdiv_all``, ``svamp_dev``, ``svamp_test``, ``svamp_all``) prompt with the
paper's 4-shot CoT file (``prompt_simple_4_cases.txt``, or ``prompt_file``) followed by
``Q: <question>\\nLet's think step by step\\n``; a ``_zero_shot`` suffix drops the demonstrations (the
zero-shot CoT tuning format). ``mas_dev`` (and ``mas_test``) is the mean of the MultiArith, ASDiv and
SVAMP suites of that split: the paper's model-selection metric. ``bbh_ao`` and ``bbh_cot`` run the 27 BBH
tasks with their 3-shot prompts (answer-only as the BBH authors ran them; CoT ending "Let's think step by
step.") and report the mean over tasks and each task (``bbh_cot/<task>``).

Prompts pass through the student tokenizer's newline mapping, as in training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from specialight.data.formats import COT_TRIGGER, question_prompt, render
from specialight.data.tasks import BBH_TASKS, DataError, load_bbh_prompt, load_examples, resolve_data_dir

DEFAULT_PROMPT = "prompts/flan_t5_cot_specialization/prompt_simple_4_cases.txt"
MATH_SUITES = {
    f"{task}_{split}": (task, split)
    for task, splits in {
        "gsm8k": ("dev", "test"),
        "multiarith": ("dev", "test"),
        "asdiv": ("dev", "test", "all"),
        "svamp": ("dev", "test", "all"),
    }.items()
    for split in splits
}
COMPOSITES = {
    "mas_dev": ("multiarith_dev", "asdiv_dev", "svamp_dev"),
    "mas_test": ("multiarith_test", "asdiv_all", "svamp_all"),
}
BBH_SUITES = ("bbh_ao", "bbh_cot")


@dataclass(frozen=True)
class EvalItem:
    """One prompt to complete and how to score it."""

    suite: str
    id: str
    task: str
    prompt: str
    prompt_id: str
    gold: str
    options: dict[str, str] = field(default_factory=dict)
    max_new_tokens: int = 256


def known_suites() -> list[str]:
    """Every suite name `build_items` accepts (math suites also with ``_zero_shot``)."""
    return [*MATH_SUITES, *(f"{s}_zero_shot" for s in MATH_SUITES), *COMPOSITES, *BBH_SUITES]


def expand(suites: list[str]) -> list[str]:
    """Leaf suites to generate for ``suites`` (composites replaced by their parts, order kept)."""
    leaves: list[str] = []
    for name in suites:
        if name not in known_suites():
            raise DataError(f"unknown suite {name!r}; known: {', '.join(known_suites())}")
        for leaf in COMPOSITES.get(name, (name,)):
            if leaf not in leaves:
                leaves.append(leaf)
    return leaves


def _math_items(
    name: str,
    data_dir: str | os.PathLike | None,
    newline: str | None,
    limit: int | None,
    prompt_file: str | None,
    max_new_tokens: int,
) -> list[EvalItem]:
    zero_shot = name.endswith("_zero_shot")
    task, split = MATH_SUITES[name.removesuffix("_zero_shot")]
    examples = load_examples(task, split, data_dir)[:limit]
    if zero_shot:
        prefix, prompt_id = "", "zero_shot_cot"
    else:
        path = Path(prompt_file) if prompt_file else resolve_data_dir(data_dir) / DEFAULT_PROMPT
        if not path.is_file():
            raise DataError(f"missing prompt file: {path}")
        prefix, prompt_id = path.read_text(encoding="utf-8").strip() + "\n\n", path.stem
    return [
        EvalItem(
            name,
            e.id,
            e.task,
            render(prefix + question_prompt(e.question, cot=True), newline),
            prompt_id,
            e.answer,
            max_new_tokens=max_new_tokens,
        )
        for e in examples
    ]


def _bbh_items(
    name: str,
    data_dir: str | os.PathLike | None,
    newline: str | None,
    limit: int | None,
    tasks: list[str] | None,
    max_new_tokens: int,
) -> list[EvalItem]:
    style = "cot" if name == "bbh_cot" else "ao"
    items = []
    for task in tasks or BBH_TASKS:
        prompt = load_bbh_prompt(task, style, data_dir)
        answer_start = f"A: {COT_TRIGGER}." if style == "cot" else "A:"
        for example in load_examples(f"bbh/{task}", "test", data_dir)[:limit]:
            text = f"{prompt}\n\nQ: {example.question}\n{answer_start}"
            items.append(
                EvalItem(
                    f"{name}/{task}",
                    example.id,
                    example.task,
                    render(text, newline),
                    f"bbh-{style}/{task}",
                    example.answer,
                    example.options,
                    max_new_tokens,
                )
            )
    return items


def build_items(
    suite: str,
    data_dir: str | os.PathLike | None = None,
    newline: str | None = None,
    limit: int | None = None,
    prompt_file: str | None = None,
    bbh_tasks: list[str] | None = None,
    max_new_tokens: int = 256,
    answer_only_max_new_tokens: int | None = None,
) -> list[EvalItem]:
    """The prompts of one leaf suite; ``limit`` caps each math suite and each BBH task."""
    if suite in MATH_SUITES or suite.removesuffix("_zero_shot") in MATH_SUITES:
        return _math_items(suite, data_dir, newline, limit, prompt_file, max_new_tokens)
    if suite in BBH_SUITES:
        budget = answer_only_max_new_tokens if suite == "bbh_ao" and answer_only_max_new_tokens else max_new_tokens
        return _bbh_items(suite, data_dir, newline, limit, bbh_tasks, budget)
    raise DataError(f"unknown suite {suite!r}; known: {', '.join(known_suites())}")
