"""The five benchmarks (GSM8K, MultiArith, ASDiv, SVAMP, BIG-Bench Hard) as `Example` records.

Local data follows each upstream repository's layout (see ``../shared/data/MANIFEST.md``):

    gsm8k/{train,test}.jsonl, gsm8k/validation_index.npy
    multiarith/MultiArith.json, multiarith/validation_index.npy
    asdiv/ASDiv.xml, asdiv/nfolds/asdiv-a/fold*.txt
    svamp/SVAMP.json
    bbh/bbh/<task>.json, bbh/cot-prompts/<task>.txt, bbh/ao-prompts/<task>.txt

Splits follow the paper's code (FranxYao/FlanT5-CoT-Specialization): GSM8K ``tune`` = train minus the
200 rows of ``validation_index.npy``, ``dev`` = those rows, ``test`` = test.jsonl; MultiArith ``dev`` = the
200 indexed rows and ``test`` = the other 400. ASDiv and SVAMP have no dev split upstream: ``dev``/``test``
here are a seeded permutation (``OOD_DEV_SEED``, ``OOD_DEV_SIZE``), and ``all`` is what the paper reports.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specialight.data.jsonl import DataError

DATA_DIR_ENV = "SPECIALIGHT_DATA_DIR"
OOD_DEV_SEED = 20230130
OOD_DEV_SIZE = 200

BBH_TASKS: tuple[str, ...] = (
    "boolean_expressions",
    "causal_judgement",
    "date_understanding",
    "disambiguation_qa",
    "dyck_languages",
    "formal_fallacies",
    "geometric_shapes",
    "hyperbaton",
    "logical_deduction_five_objects",
    "logical_deduction_seven_objects",
    "logical_deduction_three_objects",
    "movie_recommendation",
    "multistep_arithmetic_two",
    "navigate",
    "object_counting",
    "penguins_in_a_table",
    "reasoning_about_colored_objects",
    "ruin_names",
    "salient_translation_error_detection",
    "snarks",
    "sports_understanding",
    "temporal_sequences",
    "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects",
    "tracking_shuffled_objects_three_objects",
    "web_of_lies",
    "word_sorting",
)
MATH_TASKS: tuple[str, ...] = ("gsm8k", "multiarith", "asdiv", "svamp")
SPLITS: dict[str, tuple[str, ...]] = {
    "gsm8k": ("tune", "dev", "test", "train"),
    "multiarith": ("dev", "test", "all"),
    "asdiv": ("dev", "test", "all", "a"),
    "svamp": ("dev", "test", "all"),
    "bbh": ("test",),
}
HUB_IDS = {
    "gsm8k": "openai/gsm8k",
    "multiarith": "ChilleD/MultiArith",
    "asdiv": "EleutherAI/asdiv",
    "svamp": "ChilleD/SVAMP",
    "bbh": "lukaemon/bbh",
}

_CALCULATOR = re.compile(r"<<[^>]*>>")
_OPTION = re.compile(r"^\(([A-R])\)\s*(.+)$", re.MULTILINE)


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


def _need(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"missing data file: {path} (expected the upstream repository's layout; see MANIFEST.md)")
    return path


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with _need(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: malformed JSON line ({err.msg} at column {err.colno})") from err
    return rows


def _read_json(path: Path) -> object:
    try:
        return json.loads(_need(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno})") from err


def _field(record: dict, name: str, where: str) -> object:
    if name not in record:
        raise DataError(f"{where}: missing field {name!r} (fields present: {sorted(record)})")
    return record[name]


def _index(path: Path) -> list[int]:
    return [int(i) for i in np.load(_need(path))]


def format_number(value: float | int | str) -> str:
    """``51.0`` -> ``"51"``, ``2.50`` -> ``"2.5"``: gold numbers as a person would write them."""
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def strip_calculator(text: str) -> str:
    """Remove GSM8K calculator annotations: ``48/2 = <<48/2=24>>24`` -> ``48/2 = 24``."""
    return _CALCULATOR.sub("", text)


def _gsm8k_rows(rows: list[dict], path: Path, prefix: str, positions: list[int]) -> list[Example]:
    examples = []
    for position in positions:
        row, where = rows[position], f"{path} row {position + 1}"
        solution = str(_field(row, "answer", where))
        if "####" not in solution:
            raise DataError(f"{where}: answer has no '#### <number>' final line")
        rationale, answer = solution.rsplit("####", 1)
        examples.append(
            Example(
                id=f"gsm8k/{prefix}/{position}",
                task="gsm8k",
                question=str(_field(row, "question", where)).strip(),
                answer=answer.strip().replace(",", ""),
                rationale=strip_calculator(rationale).strip(),
            )
        )
    return examples


def _load_gsm8k(root: Path, split: str) -> list[Example]:
    if split == "test":
        path = root / "gsm8k" / "test.jsonl"
        rows = _read_jsonl(path)
        return _gsm8k_rows(rows, path, "test", list(range(len(rows))))
    path = root / "gsm8k" / "train.jsonl"
    rows = _read_jsonl(path)
    if split == "train":
        return _gsm8k_rows(rows, path, "train", list(range(len(rows))))
    dev = _index(root / "gsm8k" / "validation_index.npy")
    excluded = set(dev)
    chosen = dev if split == "dev" else [i for i in range(len(rows)) if i not in excluded]
    return _gsm8k_rows(rows, path, "train", chosen)


def _load_multiarith(root: Path, split: str) -> list[Example]:
    path = root / "multiarith" / "MultiArith.json"
    rows = _read_json(path)
    examples = []
    for position, row in enumerate(rows):
        where = f"{path} item {position}"
        examples.append(
            Example(
                id=f"multiarith/{_field(row, 'iIndex', where)}",
                task="multiarith",
                question=str(_field(row, "sQuestion", where)).strip(),
                answer=format_number(_field(row, "lSolutions", where)[0]),
            )
        )
    if split == "all":
        return examples
    dev = _index(root / "multiarith" / "validation_index.npy")
    if split == "dev":
        return [examples[i] for i in dev]
    excluded = set(dev)
    return [e for i, e in enumerate(examples) if i not in excluded]


def _asdiv_answer(raw: str) -> str:
    """``"9 (apples)"`` -> ``"9"``; non-numeric answers (``"3:4"``, ``"Mrs. Hilt"``) kept as written."""
    text = re.sub(r"\s*\([^)]*\)\s*$", "", raw.strip())
    try:
        return format_number(text.replace(",", ""))
    except ValueError:
        return text


def _ood_split(examples: list[Example], split: str, dev_size: int) -> list[Example]:
    """Seeded dev/test split of a data set that has none upstream; ``all`` returns everything."""
    if split == "all":
        return examples
    order = np.random.default_rng(OOD_DEV_SEED).permutation(len(examples))
    chosen = sorted(order[:dev_size]) if split == "dev" else sorted(order[dev_size:])
    return [examples[i] for i in chosen]


def _load_asdiv(root: Path, split: str, dev_size: int) -> list[Example]:
    path = _need(root / "asdiv" / "ASDiv.xml")
    try:
        problems = ET.parse(path).getroot().findall(".//Problem")
    except ET.ParseError as err:
        raise DataError(f"{path}:{err.position[0]}: malformed XML ({err})") from err
    examples = []
    for problem in problems:
        where = f"{path} problem {problem.get('ID')}"
        parts = {}
        for name in ("Body", "Question", "Answer"):
            node = problem.find(name)
            if node is None or node.text is None:
                raise DataError(f"{where}: missing field {name!r}")
            parts[name] = node.text.strip()
        examples.append(
            Example(
                id=f"asdiv/{problem.get('ID')}",
                task="asdiv",
                question=f"{parts['Body']} {parts['Question']}",
                answer=_asdiv_answer(parts["Answer"]),
            )
        )
    if split == "a":
        folds = sorted((root / "asdiv" / "nfolds" / "asdiv-a").glob("fold*.txt"))
        if not folds:
            raise DataError(f"missing ASDiv-A fold files under {root / 'asdiv' / 'nfolds' / 'asdiv-a'}")
        wanted = {line.strip() for fold in folds for line in fold.read_text().splitlines() if line.strip()}
        return [e for e in examples if e.id.split("/", 1)[1] in wanted]
    return _ood_split(examples, split, dev_size)


def svamp_question(body: str, question: str) -> str:
    """SVAMP's ``Body`` and ``Question`` as one text; 358 of the 1,000 bodies end without a period, so one
    is added rather than run two sentences together."""
    body = body.strip()
    return f"{body}{'' if body.endswith(('.', '!', '?')) else '.'} {question.strip()}"


def _load_svamp(root: Path, split: str, dev_size: int) -> list[Example]:
    path = root / "svamp" / "SVAMP.json"
    examples = []
    for position, row in enumerate(_read_json(path)):
        where = f"{path} item {position}"
        body, question = str(_field(row, "Body", where)).strip(), str(_field(row, "Question", where)).strip()
        examples.append(
            Example(
                id=f"svamp/{_field(row, 'ID', where)}",
                task="svamp",
                question=svamp_question(body, question),
                answer=format_number(_field(row, "Answer", where)),
            )
        )
    return _ood_split(examples, split, dev_size)


def bbh_options(question: str) -> dict[str, str]:
    """Option letters and texts of a multiple-choice BBH input (``(A) 01/02/2003`` lines)."""
    return {letter: text.strip() for letter, text in _OPTION.findall(question)}


def _load_bbh(root: Path, name: str) -> list[Example]:
    path = root / "bbh" / "bbh" / f"{name}.json"
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected an object with an 'examples' list")
    examples = []
    for position, row in enumerate(_field(data, "examples", str(path))):
        where = f"{path} example {position}"
        question = str(_field(row, "input", where))
        examples.append(
            Example(
                id=f"bbh/{name}/{position}",
                task=f"bbh/{name}",
                question=question,
                answer=str(_field(row, "target", where)).strip(),
                options=bbh_options(question),
            )
        )
    return examples


def known_tasks() -> list[str]:
    """Every task name the loaders accept."""
    return [*MATH_TASKS, *(f"bbh/{name}" for name in BBH_TASKS)]


def check_task(task: str) -> str:
    """Return ``task`` or raise naming the known tasks."""
    if task not in known_tasks():
        raise DataError(f"unknown task {task!r}; known: {', '.join(MATH_TASKS)}, bbh/<one of {', '.join(BBH_TASKS)}>")
    return task


def load_examples(
    task: str,
    split: str = "test",
    data_dir: str | os.PathLike | None = None,
    source: str = "local",
    ood_dev_size: int = OOD_DEV_SIZE,
) -> list[Example]:
    """Load one task's split as `Example` records, from a local folder (``source="local"``) or the hub."""
    check_task(task)
    family = task.split("/", 1)[0]
    if split not in SPLITS[family]:
        raise DataError(f"unknown split {split!r} for {task}; known: {', '.join(SPLITS[family])}")
    if source == "hub":
        from specialight.data.hub import load_from_hub

        return load_from_hub(task, split, ood_dev_size)
    if source != "local":
        raise DataError(f"unknown source {source!r}; use 'local' or 'hub'")
    root = resolve_data_dir(data_dir)
    loaders: dict[str, Callable[[], list[Example]]] = {
        "gsm8k": lambda: _load_gsm8k(root, split),
        "multiarith": lambda: _load_multiarith(root, split),
        "asdiv": lambda: _load_asdiv(root, split, ood_dev_size),
        "svamp": lambda: _load_svamp(root, split, ood_dev_size),
        "bbh": lambda: _load_bbh(root, task.split("/", 1)[1]),
    }
    return loaders[family]()


def load_bbh_prompt(task: str, style: str, data_dir: str | os.PathLike | None = None) -> str:
    """The 3-shot prompt of a BBH task without its canary header.

    ``style="cot"`` reads ``cot-prompts/`` (rationales ending "So the answer is X."), ``style="ao"`` the
    answer-only prompts exactly as the BBH authors ran them (``ao-prompts/``).
    """
    name = check_task(task).split("/", 1)[1] if task.startswith("bbh/") else check_task(f"bbh/{task}")[4:]
    folder = {"cot": "cot-prompts", "ao": "ao-prompts"}.get(style)
    if folder is None:
        raise DataError(f"unknown BBH prompt style {style!r}; use 'cot' or 'ao'")
    text = _need(resolve_data_dir(data_dir) / "bbh" / folder / f"{name}.txt").read_text(encoding="utf-8")
    return text.split("-----\n", 1)[1].strip() if "-----\n" in text else text.strip()


def split_table(data_dir: str | os.PathLike | None = None) -> list[tuple[str, str, int]]:
    """``(task, split, count)`` for every math split and every BBH task; raises on anything missing."""
    rows: list[tuple[str, str, int]] = []
    for task in MATH_TASKS:
        for split in SPLITS[task]:
            rows.append((task, split, len(load_examples(task, split, data_dir))))
    for name in BBH_TASKS:
        rows.append((f"bbh/{name}", "test", len(load_examples(f"bbh/{name}", "test", data_dir))))
        for style in ("cot", "ao"):
            load_bbh_prompt(name, style, data_dir)
    return rows
