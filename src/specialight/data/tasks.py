"""The five built-in benchmarks (GSM8K, MultiArith, ASDiv, SVAMP, BIG-Bench Hard), each defined once as a
`Benchmark` in the registry, and the loaders every consumer reads the registry through.

Local data follows each upstream repository's layout (see ``../shared/data/MANIFEST.md``):

    gsm8k/{train,test}.jsonl, gsm8k/validation_index.npy
    multiarith/MultiArith.json, multiarith/validation_index.npy
    asdiv/ASDiv.xml, asdiv/nfolds/asdiv-a/fold*.txt
    svamp/SVAMP.json
    bbh/bbh/<task>.json, bbh/cot-prompts/<task>.txt, bbh/ao-prompts/<task>.txt

Splits follow the paper's code (FranxYao/FlanT5-CoT-Specialization): GSM8K ``tune`` = train minus the
200 rows of ``validation_index.npy``, ``dev`` = those rows, ``test`` = test.jsonl (ours: ``heldout``, the last
200 tune rows, to choose a recipe on); MultiArith ``dev`` = 200 indexed rows and ``test`` = the other 400. ASDiv
and SVAMP have no dev split upstream: ``dev``/``test`` here are a seeded permutation (``OOD_DEV_SEED``,
``OOD_DEV_SIZE``), and ``all`` is what the paper reports.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from specialight.data import hub
from specialight.data.examples import DATA_DIR_ENV as DATA_DIR_ENV  # the CLI imports it from here
from specialight.data.examples import (
    OOD_DEV_SEED,
    OOD_DEV_SIZE,
    Example,
    asdiv_answer,
    bbh_example,
    field_of,
    format_number,
    gsm8k_examples,
    indexed_split,
    read_json,
    resolve_data_dir,
    seeded_split,
    svamp_question,
)
from specialight.data.jsonl import DataError, need, read_jsonl
from specialight.data.registry import REGISTRY, Benchmark, register, register_entry_points

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


def _read_gsm8k(root: Path, task: str, split: str, dev_size: int) -> list[Example]:
    name = "test" if split == "test" else "train"  # tune and dev are rows of train.jsonl
    rows = list(read_jsonl(root / "gsm8k" / f"{name}.jsonl"))
    chosen = list(range(len(rows)))
    if split not in ("test", "train"):
        chosen = indexed_split(chosen, split, root / "gsm8k" / "validation_index.npy")
    return gsm8k_examples(rows, name, chosen)


def _read_multiarith(root: Path, task: str, split: str, dev_size: int) -> list[Example]:
    path = root / "multiarith" / "MultiArith.json"
    examples = []
    for position, row in enumerate(read_json(path)):
        where = f"{path} item {position}"
        examples.append(
            Example(
                id=f"multiarith/{field_of(row, 'iIndex', where)}",
                task="multiarith",
                question=str(field_of(row, "sQuestion", where)).strip(),
                answer=format_number(field_of(row, "lSolutions", where)[0]),
            )
        )
    if split == "all":
        return examples
    return indexed_split(examples, split, root / "multiarith" / "validation_index.npy")


def _read_asdiv(root: Path, task: str, split: str, dev_size: int) -> list[Example]:
    path = need(root / "asdiv" / "ASDiv.xml")
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
                answer=asdiv_answer(parts["Answer"]),
            )
        )
    if split == "a":
        folds = sorted((root / "asdiv" / "nfolds" / "asdiv-a").glob("fold*.txt"))
        if not folds:
            raise DataError(f"missing ASDiv-A fold files under {root / 'asdiv' / 'nfolds' / 'asdiv-a'}")
        wanted = {line.strip() for fold in folds for line in fold.read_text().splitlines() if line.strip()}
        return [e for e in examples if e.id.split("/", 1)[1] in wanted]
    return seeded_split(examples, split, dev_size)


def _read_svamp(root: Path, task: str, split: str, dev_size: int) -> list[Example]:
    path = root / "svamp" / "SVAMP.json"
    examples = []
    for position, row in enumerate(read_json(path)):
        where = f"{path} item {position}"
        body, question = str(field_of(row, "Body", where)).strip(), str(field_of(row, "Question", where)).strip()
        examples.append(
            Example(
                id=f"svamp/{field_of(row, 'ID', where)}",
                task="svamp",
                question=svamp_question(body, question),
                answer=format_number(field_of(row, "Answer", where)),
            )
        )
    return seeded_split(examples, split, dev_size)


def _read_bbh(root: Path, task: str, split: str, dev_size: int) -> list[Example]:
    name = task.split("/", 1)[1]
    path = root / "bbh" / "bbh" / f"{name}.json"
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected an object with an 'examples' list")
    rows = field_of(data, "examples", str(path))
    return [bbh_example(f"{path} example {i}", row, name, i) for i, row in enumerate(rows)]


SEEDED = f"dev: {OOD_DEV_SIZE} rows of a permutation seeded {OOD_DEV_SEED}; test: the rest; all: every row"
GSM8K = register(
    Benchmark(
        "gsm8k",
        ("tune", "dev", "test", "train", "heldout"),
        _read_gsm8k,
        files=("gsm8k/train.jsonl", "gsm8k/test.jsonl", "gsm8k/validation_index.npy"),
        dev_rule="dev: 200 train rows (validation_index.npy); tune: the rest; heldout: its last 200; test: test.jsonl",
        suites=("dev", "test", "heldout"),
        hub_id="openai/gsm8k",
        read_hub=hub.gsm8k,
    )
)
MULTIARITH = register(
    Benchmark(
        "multiarith",
        ("dev", "test", "all"),
        _read_multiarith,
        files=("multiarith/MultiArith.json", "multiarith/validation_index.npy"),
        dev_rule="dev: the 200 rows of validation_index.npy; test: the other 400",
        suites=("dev", "test"),
        hub_id="ChilleD/MultiArith",
        read_hub=hub.multiarith,
    )
)
ASDIV = register(
    Benchmark(
        "asdiv",
        ("dev", "test", "all", "a"),
        _read_asdiv,
        files=("asdiv/ASDiv.xml", "asdiv/nfolds/asdiv-a/fold*.txt"),
        dev_rule=f"{SEEDED}; a: the ASDiv-A folds",
        suites=("dev", "test", "all"),
        hub_id="EleutherAI/asdiv",
        read_hub=hub.asdiv,
    )
)
SVAMP = register(
    Benchmark(
        "svamp",
        ("dev", "test", "all"),
        _read_svamp,
        files=("svamp/SVAMP.json",),
        dev_rule=SEEDED,
        suites=("dev", "test", "all"),
        hub_id="ChilleD/SVAMP",
        read_hub=hub.svamp,
    )
)
BBH = register(
    Benchmark(
        "bbh",
        ("test",),
        _read_bbh,
        files=("bbh/bbh/<task>.json", "bbh/cot-prompts/<task>.txt", "bbh/ao-prompts/<task>.txt"),
        dev_rule="test only",
        answer_kind="exact",
        suites=("ao", "cot"),
        hub_id="lukaemon/bbh",
        read_hub=hub.bbh,
        subtasks=BBH_TASKS,
    )
)


def benchmark_of(task: str) -> Benchmark:
    """The registered benchmark that ``task`` belongs to, or `DataError` naming the known tasks."""
    benchmark = REGISTRY.get(task.split("/", 1)[0])
    if benchmark is None or task not in benchmark.tasks():
        plain = [b.name for b in REGISTRY.values() if not b.subtasks]
        families = [f"{b.name}/<one of {', '.join(b.subtasks)}>" for b in REGISTRY.values() if b.subtasks]
        raise DataError(f"unknown task {task!r}; known: {', '.join(plain + families)}")
    return benchmark


def known_tasks() -> list[str]:
    """Every task name the loaders accept."""
    return [task for benchmark in REGISTRY.values() for task in benchmark.tasks()]


def check_task(task: str) -> str:
    """Return ``task`` or raise naming the known tasks."""
    benchmark_of(task)
    return task


def answer_kind(task: str) -> str:
    """How ``task``'s answers are graded (`specialight.data.registry.ANSWER_KINDS`)."""
    return benchmark_of(task).answer_kind


def load_examples(
    task: str,
    split: str = "test",
    data_dir: str | os.PathLike | None = None,
    source: str = "local",
    ood_dev_size: int = OOD_DEV_SIZE,
) -> list[Example]:
    """Load one task's split as `Example` records, from a local folder (``source="local"``) or the hub."""
    benchmark = benchmark_of(task)
    if split not in benchmark.splits:
        raise DataError(f"unknown split {split!r} for {task}; known: {', '.join(benchmark.splits)}")
    if source == "hub":
        if benchmark.hub_id is None or benchmark.read_hub is None:
            raise DataError(f"{benchmark.name} is not on the hub here; use a local --data-dir")
        return benchmark.read_hub(benchmark.hub_id, task, split, ood_dev_size)
    if source != "local":
        raise DataError(f"unknown source {source!r}; use 'local' or 'hub'")
    return benchmark.read(resolve_data_dir(data_dir), task, split, ood_dev_size)


def load_bbh_prompt(task: str, style: str, data_dir: str | os.PathLike | None = None) -> str:
    """The 3-shot prompt of a BBH task without its canary header.

    ``style="cot"`` reads ``cot-prompts/`` (rationales ending "So the answer is X."), ``style="ao"`` the
    answer-only prompts exactly as the BBH authors ran them (``ao-prompts/``).
    """
    name = check_task(task if task.startswith("bbh/") else f"bbh/{task}").split("/", 1)[1]
    folder = {"cot": "cot-prompts", "ao": "ao-prompts"}.get(style)
    if folder is None:
        raise DataError(f"unknown BBH prompt style {style!r}; use 'cot' or 'ao'")
    text = need(resolve_data_dir(data_dir) / "bbh" / folder / f"{name}.txt").read_text(encoding="utf-8")
    return text.split("-----\n", 1)[1].strip() if "-----\n" in text else text.strip()


def split_table(data_dir: str | os.PathLike | None = None) -> list[tuple[str, str, int]]:
    """``(task, split, count)`` for every registered task and split (and BBH's prompts read); raises on
    anything missing."""
    rows: list[tuple[str, str, int]] = []
    for benchmark in REGISTRY.values():
        for task in benchmark.tasks():
            rows += [(task, split, len(load_examples(task, split, data_dir))) for split in benchmark.splits]
            if benchmark is BBH:
                for style in BBH.suites:
                    load_bbh_prompt(task, style, data_dir)
    return rows


register_entry_points()  # installed packages' benchmarks, after the built-ins (a plugin may import this module)
