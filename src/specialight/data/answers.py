"""Final-answer extraction and equivalence for the math benchmarks and the 27 BBH tasks.

Which rules grade a task is its benchmark's answer kind (`specialight.data.registry.ANSWER_KINDS`):
``number`` for the math benchmarks, ``exact`` for BBH.

Math, in order: cut the completion where the model starts a new question (``Q:`` or ``Question:``, see
`specialight.data.stops`); take what follows
the last "answer is" (a rationale may say "the final answer is 15 gallons * 8 = 120" before its
closing line) and read the first number there; with no "answer is", the last number. Numbers keep their
sign and thousands separators (``"1,000"`` is 1000, ``"-3"`` is -3; the paper's extractor read these as 0
and 3), and drop ``$``, ``%``, units and trailing periods; ``"3/4"`` is 0.75.

BBH is graded as its authors (Suzgun et al.) graded it: exact match of the answer string. With CoT the
answer is what follows the last "the answer is" (its first line, a trailing period dropped); a
completion without one gets no credit, and a hedge ("(A) or (B)") or an answer outside the options
("None of the above") matches no target. Answer-only takes the completion's first line the same way
(or what follows "the answer is" if the model wrote one). This reproduces all 54 of the authors'
per-task accuracies on their own code-davinci-002 outputs (tests/data/test_bbh_reference.py).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from specialight.data.stops import until_next_question
from specialight.data.tasks import answer_kind

_NUMBER = re.compile(
    r"(?P<sign>[-−–])?\s?\$?\s?(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<frac>\.\d+)?"
    r"(?:\s?/\s?(?P<den>\d+(?:\.\d+)?))?"
)
_ANSWER_IS = re.compile(r"answer is\s*:?\s*", re.IGNORECASE)
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def parse_number(text: str) -> float | None:
    """The first number in ``text`` as a float (sign, separators, decimals, fractions), or None."""
    match = _NUMBER.search(text)
    return None if match is None else _number_value(match)


def _number_value(match: re.Match) -> float | None:
    value = Fraction(match["int"].replace(",", "") + (match["frac"] or ""))
    if match["den"] is not None:
        denominator = Fraction(match["den"])
        if denominator == 0:
            return None
        value /= denominator
    return float(-value if match["sign"] else value)


def format_value(value: float) -> str:
    """A number as a canonical string: ``1000.0`` -> ``"1000"``, ``0.75`` -> ``"0.75"``."""
    if value.is_integer():
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _after_answer_is(text: str) -> str | None:
    matches = list(_ANSWER_IS.finditer(text))
    return text[matches[-1].end() :] if matches else None


def _clean_text(text: str) -> str:
    first_line = text.strip().split("\n", 1)[0]
    return re.sub(r"\s+", " ", first_line).strip().rstrip(".").strip()


def _extract_number(text: str, tail: str | None) -> str | None:
    if tail is not None:
        match = _NUMBER.search(tail)
        if match is not None:
            value = _number_value(match)
            return None if value is None else format_value(value)
    matches = list(_NUMBER.finditer(text))
    for match in reversed(matches):
        value = _number_value(match)
        if value is not None:
            return format_value(value)
    return None


def bbh_answer(completion: str, cot: bool = True) -> str | None:
    """The answer string a BBH completion gives, as the BBH authors read it, or None (no credit).

    CoT: what follows the last "the answer is" (None without one); answer-only: the first line (or what
    follows "the answer is" where the model wrote one). First line only, whitespace stripped, one
    trailing period dropped: ``"So the answer is (B)."`` -> ``"(B)"``.
    """
    text = until_next_question(completion)
    tail = _after_answer_is(text)
    if tail is None:
        if cot:
            return None
        tail = text
    answer = tail.strip().split("\n", 1)[0].strip().removesuffix(".").strip()
    return answer or None


def extract_answer(completion: str, task: str, cot: bool = True) -> str | None:
    """The final answer a completion gives for ``task``, or None if it gives none.

    By ``task``'s answer kind: ``number`` answers come back canonical (``"1000"``, ``"-3"``, ``"0.75"``);
    ``exact`` (BBH) answers as `bbh_answer` reads them (``cot`` says whether the prompt asked for a chain of
    thought; ``number`` ignores it).
    """
    if answer_kind(task) == "exact":
        return bbh_answer(completion, cot)
    text = until_next_question(completion)
    return _extract_number(text, _after_answer_is(text))


def normalize_gold(gold: str, task: str) -> str:
    """A math gold answer in the form `extract_answer` returns (canonical number, else lower-case text)."""
    match = _NUMBER.fullmatch(gold.strip().rstrip(".").replace("$", ""))
    value = None if match is None else _number_value(match)
    return _clean_text(gold).lower() if value is None else format_value(value)


def is_correct(completion: str, gold: str, task: str, cot: bool = True) -> bool:
    """Whether ``completion``'s final answer equals ``gold`` for ``task``.

    Answer kind ``number`` (math): numbers compare within 1e-6 (relative), non-numeric answers (ASDiv's
    ``"3:4"``) as text. ``exact`` (BBH): exact match of `bbh_answer` with the target (``cot`` as there).
    """
    if answer_kind(task) == "exact":
        return bbh_answer(completion, cot) == gold.strip()
    expected = normalize_gold(gold, task)
    if _PLAIN_NUMBER.fullmatch(expected) is None:
        tail = _after_answer_is(until_next_question(completion))
        return _clean_text(tail if tail is not None else completion).lower() == expected
    predicted = extract_answer(completion, task)
    return predicted is not None and math.isclose(float(predicted), float(expected), rel_tol=1e-6, abs_tol=1e-6)
