"""Final-answer extraction and equivalence for the math benchmarks and the 27 BBH tasks.

Rules, in order: cut the completion where the model starts a new question (``Q:``); take what follows
the last "answer is" (a rationale may say "the final answer is 15 gallons * 8 = 120" before its
closing line); read the answer there by the task's kind (a number, an option letter, a label, free
text); with no "answer is", fall back to the last number (math) or the last option / label / first line.

Numbers keep their sign and thousands separators (``"1,000"`` is 1000, ``"-3"`` is -3; the paper's
extractor read these as 0 and 3), and drop ``$``, ``%``, units and trailing periods; ``"3/4"`` is 0.75.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from specialight.data.tasks import check_task

_NUMBER = re.compile(
    r"(?P<sign>[-−–])?\s?\$?\s?(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<frac>\.\d+)?"
    r"(?:\s?/\s?(?P<den>\d+(?:\.\d+)?))?"
)
_ANSWER_IS = re.compile(r"answer is\s*:?\s*", re.IGNORECASE)
_NEXT_QUESTION = re.compile(r"(?:^|\n|\s)(?:Q|Question):\s", re.MULTILINE)
_CHOICE = re.compile(r"\(([A-R])\)")
_BARE_LETTER = re.compile(r"^\s*([A-R])\b")
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

NUMERIC_BBH = {"multistep_arithmetic_two", "object_counting"}
LABELS = {
    "boolean_expressions": ("true", "false"),
    "causal_judgement": ("yes", "no"),
    "navigate": ("yes", "no"),
    "web_of_lies": ("yes", "no"),
    "sports_understanding": ("yes", "no"),
    "formal_fallacies": ("invalid", "valid"),
}
FREE_TEXT = {"dyck_languages", "word_sorting"}


def answer_kind(task: str) -> str:
    """``"number"``, ``"choice"``, ``"label"`` or ``"text"``: how a task's answers are read and compared."""
    check_task(task)
    if not task.startswith("bbh/"):
        return "number"
    name = task[4:]
    if name in NUMERIC_BBH:
        return "number"
    if name in LABELS:
        return "label"
    return "text" if name in FREE_TEXT else "choice"


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


def _until_next_question(completion: str) -> str:
    match = _NEXT_QUESTION.search(completion, 1)
    return completion[: match.start()] if match else completion


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


def _extract_choice(text: str, tail: str | None) -> str | None:
    if tail is not None:
        found = _CHOICE.search(tail) or _BARE_LETTER.search(tail)
        if found is not None:
            return f"({found.group(1)})"
    choices = _CHOICE.findall(text)
    if choices:
        return f"({choices[-1]})"
    return _clean_text(tail if tail is not None else text) or None


def _extract_label(text: str, tail: str | None, labels: tuple[str, ...]) -> str | None:
    pattern = re.compile(r"\b(" + "|".join(labels) + r")\b", re.IGNORECASE)
    if tail is not None:
        found = pattern.search(tail)
        if found:
            return found.group(1).lower()
    found_all = pattern.findall(text)
    return found_all[-1].lower() if found_all else None


def extract_answer(completion: str, task: str) -> str | None:
    """The final answer a completion gives for ``task``, normalized, or None if it gives none.

    Numbers come back canonical (``"1000"``, ``"-3"``, ``"0.75"``), options as ``"(B)"``, labels
    lower-case (``"valid"``), free text with whitespace collapsed and a trailing period dropped.
    """
    kind = answer_kind(task)
    text = _until_next_question(completion)
    tail = _after_answer_is(text)
    if kind == "number":
        return _extract_number(text, tail)
    if kind == "choice":
        return _extract_choice(text, tail)
    if kind == "label":
        return _extract_label(text, tail, LABELS[task[4:]])
    answer = _clean_text(tail if tail is not None else text)
    return answer or None


def normalize_gold(gold: str, task: str) -> str:
    """The gold answer in the form `extract_answer` returns."""
    kind = answer_kind(task)
    if kind == "number":
        match = _NUMBER.fullmatch(gold.strip().rstrip(".").replace("$", ""))
        value = None if match is None else _number_value(match)
        return _clean_text(gold).lower() if value is None else format_value(value)
    if kind == "label":
        return gold.strip().lower()
    return _clean_text(gold)


def is_correct(completion: str, gold: str, task: str, options: dict[str, str] | None = None) -> bool:
    """Whether ``completion``'s final answer equals ``gold`` for ``task``.

    Numbers compare within 1e-6 (relative); non-numeric math answers (ASDiv's ``"3:4"``) as text;
    an option letter also matches a gold given as that option's text (``options`` from the example).
    """
    kind = answer_kind(task)
    expected = normalize_gold(gold, task)
    if kind == "number":
        if _PLAIN_NUMBER.fullmatch(expected) is None:
            tail = _after_answer_is(_until_next_question(completion))
            return _clean_text(tail if tail is not None else completion).lower() == expected
        predicted = extract_answer(completion, task)
        return predicted is not None and math.isclose(float(predicted), float(expected), rel_tol=1e-6, abs_tol=1e-6)
    predicted = extract_answer(completion, task)
    if predicted is None:
        return False
    if kind == "label":
        return predicted == expected
    if predicted.lower() == expected.lower():
        return True
    letter = _CHOICE.fullmatch(predicted)
    return bool(letter and options and _clean_text(options.get(letter.group(1), "")).lower() == expected.lower())
