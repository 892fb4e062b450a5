"""The four tuning formats of the paper and the prompt templates evaluation shares with them.

    zero_shot_cot           prompt  "Q: <question>\\nLet's think step by step\\n"
                            target  "<rationale>\\nThe answer is <answer>."
    zero_shot_answer_only   prompt  "Q: <question>\\n"
                            target  "The answer is <answer>."
    in_context_*            the same, after k demonstrations in the same format joined by blank lines

This is the layout of the paper's evaluation prompt ``prompt_simple_4_cases.txt`` (and of its
answer-only twin), so a model tuned here is evaluated in the form it was tuned in.

T5's SentencePiece vocabulary cannot encode a newline (it becomes a space). `newline_separator` finds
whether a tokenizer round-trips ``"\\n"``; where it does not, `render` maps every run of newlines to
``NEWLINE_STAND_IN``, in training and in evaluation alike.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Protocol

from specialight.core.constants import FORMATS
from specialight.data.tasks import DataError, Example

COT_TRIGGER = "Let's think step by step"
NEWLINE_STAND_IN = " | "
NEWLINES = re.compile(r"[ \t]*\n+[ \t]*")


class _Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...
    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


def newline_separator(tokenizer: _Tokenizer) -> str | None:
    """None if the tokenizer round-trips a newline, else the stand-in to write instead."""
    decoded = tokenizer.decode(tokenizer.encode("a\nb", add_special_tokens=False), skip_special_tokens=True)
    return None if "\n" in decoded else NEWLINE_STAND_IN


def render(text: str, separator: str | None) -> str:
    """``text`` with its newlines replaced by ``separator`` (unchanged when it is None)."""
    return text if separator is None else NEWLINES.sub(separator, text)


def is_cot(fmt: str) -> bool:
    """Whether a format's target carries a chain of thought."""
    return check_format(fmt).endswith("_cot")


def check_format(fmt: str) -> str:
    """Return ``fmt`` or raise naming the four formats."""
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    return fmt


def question_prompt(question: str, cot: bool) -> str:
    """The zero-shot prompt for one question."""
    return f"Q: {question.strip()}\n{COT_TRIGGER}\n" if cot else f"Q: {question.strip()}\n"


def answer_target(answer: str, rationale: str | None = None) -> str:
    """The target: the rationale (CoT formats) then ``The answer is X.``."""
    final = f"The answer is {answer.strip()}."
    return f"{rationale.strip()}\n{final}" if rationale else final


@dataclass(frozen=True)
class Formatted:
    """One tuning example: the text the student reads and the text it learns to write."""

    example_id: str
    format: str
    prompt: str
    target: str


class FormatBuilder:
    """Turns examples (and optional teacher targets) into the four formats.

    Demonstrations for in-context formats are drawn from ``pool`` with an RNG seeded by
    ``(seed, example id, draw)``: the same example gets the same demonstrations on every run and in every
    worker, and never itself nor an ``exclude`` id: a draw that hits one keeps its other rows and tops them up
    from a second RNG, so every draw that avoids ``exclude`` is the draw made without it.
    """

    def __init__(
        self,
        pool: list[Example],
        num_demonstrations: int = 4,
        seed: int = 0,
        newline: str | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> None:
        usable = [e for e in pool if e.rationale]
        allowed = sum(e.id not in exclude for e in usable)
        if num_demonstrations and allowed <= num_demonstrations:
            raise DataError(
                f"the demonstration pool has {allowed} examples with rationales (not excluded); "
                f"{num_demonstrations} demonstrations need at least {num_demonstrations + 1}"
            )
        self.pool = usable
        self.num_demonstrations = num_demonstrations
        self.seed = seed
        self.newline = newline
        self.exclude = frozenset(exclude)

    def demonstrations(self, example_id: str, cot: bool, draw: int = 0) -> list[str]:
        """The k demonstration blocks (prompt + target) for one example."""
        rng = random.Random(f"{self.seed}:{example_id}:{draw}")
        drawn = rng.sample(self.pool, self.num_demonstrations + 1)
        picked = [e for e in drawn if e.id != example_id and e.id not in self.exclude]
        if self.exclude and len(picked) < self.num_demonstrations:
            taken = self.exclude | {example_id} | {e.id for e in drawn}
            rest = [e for e in self.pool if e.id not in taken]
            more = random.Random(f"{self.seed}:{example_id}:{draw}:more")
            picked += more.sample(rest, self.num_demonstrations - len(picked))
        return [
            question_prompt(e.question, cot) + answer_target(e.answer, e.rationale if cot else None)
            for e in picked[: self.num_demonstrations]
        ]

    def build(self, example: Example, fmt: str, rationale: str | None = None, draw: int = 0) -> Formatted:
        """Format one example; ``rationale`` overrides the gold one (a teacher sample's text)."""
        cot = is_cot(fmt)
        chain = rationale if rationale is not None else example.rationale
        if cot and not chain:
            raise DataError(f"{example.id}: format {fmt} needs a rationale and the example has none")
        prompt = question_prompt(example.question, cot)
        if fmt.startswith("in_context"):
            prompt = "\n\n".join([*self.demonstrations(example.id, cot, draw), prompt])
        if rationale is not None and cot:
            target = rationale.strip()
        else:
            target = answer_target(example.answer, chain if cot else None)
        return Formatted(example.id, fmt, render(prompt, self.newline), render(target, self.newline))
