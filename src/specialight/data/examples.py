"""The `Example` record and what the benchmark readers share: the data folder, the parsers that turn one
upstream row into one, and the dev/test rules.

Shared by the local readers (`specialight.data.tasks`) and the hub readers (`specialight.data.hub`), so
a row reads the same from either source.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from specialight.data.jsonl import DataError, need

DATA_DIR_ENV = "SPECIALIGHT_DATA_DIR"
OOD_DEV_SEED = 20230130
OOD_DEV_SIZE = 200
HELDOUT_SIZE = 200  # GSM8K heldout: the last tune rows; data.limit <= 7,073 keeps them out of the loss

_CALCULATOR = re.compile(r"<<[^>]*>>")
_OPTION = re.compile(r"^\(([A-R])\)\s*(.+)$", re.MULTILINE)
Row = TypeVar("Row")


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The benchmark folder: the argument, else ``$SPECIALIGHT_DATA_DIR``, else ``./data``."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV) or "data"
    path = Path(chosen).expanduser()
    if not path.is_dir():
        if data_dir:
            why = "--data-dir was given"
        elif os.environ.get(DATA_DIR_ENV):
            why = f"{DATA_DIR_ENV} is set"
        else:
            why = "it is the default"
        raise DataError(
            f"data folder not found: {path.resolve()} (looked there because {why}). "
            f"Point to a folder laid out like shared/data with --data-dir DIR or {DATA_DIR_ENV}=DIR, "
            "or use source='hub' when online."
        )
    return path


def read_json(path: Path) -> object:
    """A whole-file JSON document; `DataError` naming the file and line if missing or malformed."""
    try:
        return json.loads(need(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno})") from err


@dataclass(frozen=True)
class Example:
    """One benchmark question.

    ``answer`` is the gold final answer as a string (``"72"``, ``"(B)"``, ``"valid"``); ``rationale`` the
    gold chain of thought where the data has one (GSM8K, calculator annotations removed); ``options``
    maps option letters to their text for multiple-choice BBH tasks.
    """

    id: str
    task: str
    question: str
    answer: str
    rationale: str | None = None
    options: dict[str, str] = field(default_factory=dict)


def field_of(record: dict, name: str, where: str) -> object:
    """``record[name]``, or `DataError` naming ``where`` and the fields present."""
    if name not in record:
        raise DataError(f"{where}: missing field {name!r} (fields present: {sorted(record)})")
    return record[name]


def format_number(value: float | int | str) -> str:
    """``51.0`` -> ``"51"``, ``2.50`` -> ``"2.5"``: gold numbers as a person would write them."""
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def strip_calculator(text: str) -> str:
    """Remove GSM8K calculator annotations: ``48/2 = <<48/2=24>>24`` -> ``48/2 = 24``."""
    return _CALCULATOR.sub("", text)


def gsm8k_examples(rows: list[tuple[str, dict]], prefix: str, positions: list[int]) -> list[Example]:
    """GSM8K ``(where, row)`` pairs at ``positions`` as examples ``gsm8k/<prefix>/<position>``."""
    examples = []
    for position in positions:
        where, row = rows[position]
        solution = str(field_of(row, "answer", where))
        if "####" not in solution:
            raise DataError(f"{where}: answer has no '#### <number>' final line")
        rationale, answer = solution.rsplit("####", 1)
        examples.append(
            Example(
                id=f"gsm8k/{prefix}/{position}",
                task="gsm8k",
                question=str(field_of(row, "question", where)).strip(),
                answer=answer.strip().replace(",", ""),
                rationale=strip_calculator(rationale).strip(),
            )
        )
    return examples


def asdiv_answer(raw: str) -> str:
    """``"9 (apples)"`` -> ``"9"``; non-numeric answers (``"3:4"``, ``"Mrs. Hilt"``) kept as written."""
    text = re.sub(r"\s*\([^)]*\)\s*$", "", raw.strip())
    try:
        return format_number(text.replace(",", ""))
    except ValueError:
        return text


def svamp_question(body: str, question: str) -> str:
    """SVAMP's ``Body`` and ``Question`` as one text; 358 of the 1,000 bodies end without a period, so one
    is added rather than run two sentences together."""
    body = body.strip()
    return f"{body}{'' if body.endswith(('.', '!', '?')) else '.'} {question.strip()}"


def bbh_options(question: str) -> dict[str, str]:
    """Option letters and texts of a multiple-choice BBH input (``(A) 01/02/2003`` lines)."""
    return {letter: text.strip() for letter, text in _OPTION.findall(question)}


def bbh_example(where: str, row: dict, name: str, position: int) -> Example:
    """One row (``input``, ``target``) of BBH task ``name``."""
    question = str(field_of(row, "input", where))
    return Example(
        id=f"bbh/{name}/{position}",
        task=f"bbh/{name}",
        question=question,
        answer=str(field_of(row, "target", where)).strip(),
        options=bbh_options(question),
    )


def seeded_split(examples: list[Example], split: str, dev_size: int) -> list[Example]:
    """Seeded dev/test split of a data set that has none upstream; ``all`` returns everything."""
    if split == "all":
        return examples
    order = np.random.default_rng(OOD_DEV_SEED).permutation(len(examples))
    chosen = sorted(order[:dev_size]) if split == "dev" else sorted(order[dev_size:])
    return [examples[i] for i in chosen]


def indexed_split(rows: list[Row], split: str, index_file: Path) -> list[Row]:
    """``dev``: the rows ``index_file`` names (in its order); ``heldout``: the last `HELDOUT_SIZE` rows it does
    not name; any other split: the rows it does not name."""
    dev = [int(i) for i in np.load(need(index_file))]
    if split == "dev":
        return [rows[i] for i in dev]
    excluded = set(dev)
    rest = [row for i, row in enumerate(rows) if i not in excluded]
    return rest[-HELDOUT_SIZE:] if split == "heldout" else rest
