"""Evaluation suites: which questions, in which prompt, scored how.

Math suites ``<task>_<split>`` (``gsm8k_dev``, ``gsm8k_test``, ``multiarith_dev``, ``multiarith_test``,
``asdiv_dev``, ``asdiv_test``, ``asdiv_all``, ``svamp_dev``, ``svamp_test``, ``svamp_all``, and those of any
benchmark registered later: `specialight.data.registry.Benchmark.suites`) prompt with the
paper's 4-shot CoT file (``prompt_simple_4_cases.txt``, or ``prompt_file``) followed by
``Q: <question>\\nLet's think step by step\\n``; a ``_zero_shot`` suffix drops the demonstrations (the
zero-shot CoT tuning format). ``mas_dev`` is the mean of the MultiArith, ASDiv and SVAMP dev suites: the
paper's model-selection metric; ``mas_test`` the mean of their test suites, which share no row with dev
(``mas_all`` keeps the Table-1 rows: MultiArith test, ASDiv all, SVAMP all). ``bbh_ao`` and ``bbh_cot`` run the 27 BBH
tasks with their 3-shot prompts (answer-only as the BBH authors ran them; CoT ending "Let's think step by
step.") and report the mean over tasks and each task (``bbh_cot/<task>``).

Prompts pass through the student tokenizer's newline mapping, as in training. Each item keeps its prompt
in parts (task header, in-context demonstrations, the question) so that a prompt too long for a model's
context can drop whole leading demonstrations (`EvalItem.prompt_without`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from specialight.data.formats import COT_TRIGGER, question_prompt, render
from specialight.data.registry import REGISTRY
from specialight.data.tasks import BBH, BBH_TASKS, DataError, load_bbh_prompt, load_examples, resolve_data_dir

DEFAULT_PROMPT = "prompts/flan_t5_cot_specialization/prompt_simple_4_cases.txt"


class _SplitSuites(Mapping[str, tuple[str, str]]):
    """``suite -> (task, split)``: the suites ``<name>_<split>`` of every registered benchmark without
    subtasks, read from the registry at each use so that a benchmark registered later has its suites."""

    def _table(self) -> dict[str, tuple[str, str]]:
        return {f"{b.name}_{s}": (b.name, s) for b in REGISTRY.values() if not b.subtasks for s in b.suites}

    def __getitem__(self, name: str) -> tuple[str, str]:
        return self._table()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


MATH_SUITES: Mapping[str, tuple[str, str]] = _SplitSuites()
COMPOSITES = {
    "mas_dev": ("multiarith_dev", "asdiv_dev", "svamp_dev"),
    "mas_test": ("multiarith_test", "asdiv_test", "svamp_test"),
    "mas_all": ("multiarith_test", "asdiv_all", "svamp_all"),
}
_DEMONSTRATION_START = re.compile(r"\n\n+(?=Q: )")
BBH_SUITES = tuple(f"{BBH.name}_{style}" for style in BBH.suites)


@dataclass(frozen=True)
class EvalItem:
    """One prompt to complete and how to score it.

    The prompt is ``header``, then ``demonstrations``, then ``query``, joined by blank lines and passed
    through the ``newline`` mapping; ``cot`` says whether the prompt asks for a chain of thought.
    """

    suite: str
    id: str
    task: str
    prompt_id: str
    gold: str
    query: str
    demonstrations: tuple[str, ...] = ()
    header: str = ""
    newline: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    max_new_tokens: int = 256
    cot: bool = True

    def prompt_without(self, dropped: int) -> str:
        """The prompt with its first ``dropped`` demonstrations left out."""
        parts = [self.header, *self.demonstrations[dropped:], self.query]
        return render("\n\n".join(p for p in parts if p), self.newline)

    @property
    def prompt(self) -> str:
        """The whole prompt."""
        return self.prompt_without(0)


def split_demonstrations(prefix: str) -> tuple[str, tuple[str, ...]]:
    """``(header, demonstrations)`` of a few-shot prefix: blocks starting ``Q: `` are demonstrations,
    any text before the first one is the header (a BBH task description)."""
    blocks = [b.strip() for b in _DEMONSTRATION_START.split(prefix.strip()) if b.strip()]
    header = blocks[0] if blocks and not blocks[0].startswith("Q: ") else ""
    return header, tuple(blocks[1:] if header else blocks)


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
        prefix, prompt_id = path.read_text(encoding="utf-8"), path.stem
    header, demonstrations = split_demonstrations(prefix)
    return [
        EvalItem(
            name,
            e.id,
            e.task,
            prompt_id,
            e.answer,
            query=question_prompt(e.question, cot=True),
            demonstrations=demonstrations,
            header=header,
            newline=newline,
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
        header, demonstrations = split_demonstrations(load_bbh_prompt(task, style, data_dir))
        for example in load_examples(f"bbh/{task}", "test", data_dir)[:limit]:
            items.append(
                EvalItem(
                    f"{name}/{task}",
                    example.id,
                    example.task,
                    f"bbh-{style}/{task}",
                    example.answer,
                    query=bbh_query(example.question, style),
                    demonstrations=demonstrations,
                    header=header,
                    newline=newline,
                    options=example.options,
                    max_new_tokens=max_new_tokens,
                    cot=style == "cot",
                )
            )
    return items


def bbh_query(question: str, style: str) -> str:
    """The question part of a BBH prompt as the BBH authors ran it: ``Q: ...`` then ``A:`` (answer-only) or
    ``A: Let's think step by step.`` (CoT)."""
    return f"Q: {question}\nA: {COT_TRIGGER}." if style == "cot" else f"Q: {question}\nA:"


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
