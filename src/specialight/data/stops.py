"""Where a completion ends: the one definition of the stop strings, for generation, teacher sampling and
answer extraction.

Every prompt the project writes labels its questions ``Question:`` (the paper's ``prompt_complex.txt``)
or ``Q:`` (the 4-shot math prompt, BBH); a model that goes on past its answer starts the next question
with one of these labels. Each reader stops there, at the strictness it needs:

* evaluation (in-process generation and server evaluation) stops at `EVALUATION_STOP` (``Q:``), the label
  of every evaluation prompt;
* teacher sampling stops at `TEACHER_STOPS`, either label after a blank line, so a chain of thought may
  mention "Q:" inside a line;
* answer extraction cuts at `NEXT_QUESTION`, either label between white space (or at the start).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

QUESTION_LABELS = ("Question:", "Q:")
EVALUATION_STOP = "Q:"
TEACHER_STOPS = tuple(f"\n\n{label}" for label in QUESTION_LABELS)
NEXT_QUESTION = re.compile(
    r"(?:^|\n|\s)(?:" + "|".join(re.escape(label) for label in QUESTION_LABELS) + r")\s", re.MULTILINE
)


def cut_at_stop(text: str, stops: str | Sequence[str] = EVALUATION_STOP) -> str:
    """``text`` up to (not including) the earliest of ``stops``."""
    found = [text.find(stop) for stop in ([stops] if isinstance(stops, str) else stops)]
    return text[: min((f for f in found if f >= 0), default=len(text))]


def cut_tokens_at_stop(
    tokens: list[str], tops: list[list[str]], values: list[list[float]], stops: Sequence[str]
) -> tuple[list[str], list[list[str]], list[list[float]]]:
    """Keep the tokens that start before the first stop string (servers may return the stop's tokens)."""
    text = "".join(tokens)
    found = [text.find(s) for s in stops if s in text]
    if not found:
        return tokens, tops, values
    cut, start = min(found), 0
    for index, token in enumerate(tokens):
        if start >= cut:
            return tokens[:index], tops[:index], values[:index]
        start += len(token)
    return tokens, tops, values


def until_next_question(completion: str) -> str:
    """``completion`` up to where it starts a new question (a label at position 0 does not count)."""
    match = NEXT_QUESTION.search(completion, 1)
    return completion[: match.start()] if match else completion
