"""One definition per benchmark (`Benchmark`) and the registry that holds them.

A benchmark says in one place which files it reads, its splits and how dev and test are drawn, how its
answers are graded, which evaluation suites it has, and where it lives on the Hugging Face hub. The
five built-in benchmarks are registered by `specialight.data.tasks`, which every consumer (the loaders,
answer grading, evaluation suites, ``specialight data``) reads the registry through. A new benchmark
needs only `register`; `jsonl_benchmark` defines one kept as a JSONL file per split::

    register(jsonl_benchmark("toy", {"dev": "toy/dev.jsonl", "test": "toy/test.jsonl"}))

after which ``toy`` loads with `load_examples`, is listed by ``specialight data`` and is evaluated by
the suites ``toy_dev`` and ``toy_test`` (and their ``_zero_shot`` variants) like the math benchmarks.

For the ``specialight`` command (and every other consumer) to know it without a line of Python, an installed
package declares it under the entry-point group ``specialight.benchmarks`` (`ENTRY_POINT_GROUP`), naming a
`Benchmark` or a function that returns one or several; `specialight.data.tasks` registers them after the
built-ins::

    [project.entry-points."specialight.benchmarks"]
    toy = "toy_bench:TOY"
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from specialight.data.examples import Example, field_of
from specialight.data.jsonl import read_jsonl

ANSWER_KINDS = ("number", "exact")
"""``number``: the final number of a math rationale (free text where the gold is not a number);
``exact``: the BIG-Bench Hard authors' exact match of what follows "the answer is"."""

Reader = Callable[[Path, str, str, int], list[Example]]
"""``(data folder, task, split, dev size) -> examples`` from local files."""
HubReader = Callable[[str, str, str, int], list[Example]]
"""``(hub id, task, split, dev size) -> examples`` from the Hugging Face hub."""


@dataclass(frozen=True)
class Benchmark:
    """Everything the project knows about one benchmark.

    Args:
        name: the task name (``gsm8k``); with ``subtasks``, the family whose tasks are ``<name>/<subtask>``.
        splits: the splits `load_examples` accepts.
        read: reads one task's split from the local data folder.
        files: the files it reads, relative to the data folder (``<task>`` stands for each subtask).
        dev_rule: how its dev and test splits are drawn, in words.
        answer_kind: how answers are graded, one of `ANSWER_KINDS`.
        suites: its evaluation suites are ``<name>_<suffix>`` for each suffix: a split (math-style suites:
            the 4-shot CoT prompt, or zero-shot with ``_zero_shot``), or with ``subtasks`` a BBH prompt
            style (``ao``, ``cot``).
        hub_id: its Hugging Face hub dataset, if any.
        read_hub: reads one task's split from the hub.
        subtasks: the tasks of a family (BIG-Bench Hard's 27).
    """

    name: str
    splits: tuple[str, ...]
    read: Reader
    files: tuple[str, ...] = ()
    dev_rule: str = ""
    answer_kind: str = "number"
    suites: tuple[str, ...] = ()
    hub_id: str | None = None
    read_hub: HubReader | None = None
    subtasks: tuple[str, ...] = ()

    def tasks(self) -> list[str]:
        """Its task names: ``[name]``, or ``<name>/<subtask>`` for each subtask."""
        return [f"{self.name}/{s}" for s in self.subtasks] if self.subtasks else [self.name]


REGISTRY: dict[str, Benchmark] = {}
"""Every registered benchmark by name, in registration order (the built-ins first)."""


def register(benchmark: Benchmark, replace: bool = False) -> Benchmark:
    """Add ``benchmark`` to the registry and return it; a name already taken needs ``replace=True``."""
    if benchmark.name in REGISTRY and not replace:
        raise ValueError(f"a benchmark named {benchmark.name!r} is already registered (replace=True to replace it)")
    if "/" in benchmark.name:
        raise ValueError(f"benchmark name {benchmark.name!r} may not contain '/'")
    if benchmark.answer_kind not in ANSWER_KINDS:
        raise ValueError(f"unknown answer kind {benchmark.answer_kind!r}; known: {', '.join(ANSWER_KINDS)}")
    missing = [s for s in benchmark.suites if s not in benchmark.splits]
    if missing and not benchmark.subtasks:
        raise ValueError(f"suites of {benchmark.name!r} name splits it does not have: {', '.join(missing)}")
    REGISTRY[benchmark.name] = benchmark
    return benchmark


def unregister(name: str) -> Benchmark:
    """Remove the benchmark ``name`` from the registry and return it."""
    return REGISTRY.pop(name)


ENTRY_POINT_GROUP = "specialight.benchmarks"


def register_entry_points(group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Register the benchmarks that installed packages declare under the entry-point group ``group``; returns
    their names. An entry point names a `Benchmark`, or a function returning a `Benchmark` or an iterable of
    them. One that fails to load, names something else or takes a registered name raises, naming it."""
    names: list[str] = []
    for point in entry_points(group=group):
        where = f"entry point {point.name} = {point.value!r} (group {group})"
        try:
            target = point.load()
            found = target() if callable(target) else target
        except Exception as error:
            raise ValueError(f"{where} failed to load: {error!r}") from error
        benchmarks = [found] if isinstance(found, Benchmark) or not isinstance(found, Iterable) else list(found)
        if not all(isinstance(benchmark, Benchmark) for benchmark in benchmarks):
            raise ValueError(f"{where} gave {type(found).__name__}; expected a Benchmark or an iterable of them")
        for benchmark in benchmarks:
            try:
                names.append(register(benchmark).name)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from error
    return names


@dataclass(frozen=True)
class JsonlFiles:
    """A `Reader` of a benchmark kept as one JSONL file per split, each row holding a question and an
    answer (and optionally a rationale); examples are named ``<task>/<split>/<row>``."""

    files: dict[str, str]
    question: str = "question"
    answer: str = "answer"
    rationale: str | None = None

    def __call__(self, root: Path, task: str, split: str, dev_size: int) -> list[Example]:
        """The examples of ``split`` (``dev_size`` does not apply: each split is its own file)."""
        return [
            Example(
                id=f"{task}/{split}/{position}",
                task=task,
                question=str(field_of(row, self.question, where)).strip(),
                answer=str(field_of(row, self.answer, where)).strip(),
                rationale=str(field_of(row, self.rationale, where)).strip() if self.rationale else None,
            )
            for position, (where, row) in enumerate(read_jsonl(root / self.files[split]))
        ]


def jsonl_benchmark(
    name: str,
    files: dict[str, str],
    question: str = "question",
    answer: str = "answer",
    rationale: str | None = None,
    answer_kind: str = "number",
    suites: tuple[str, ...] | None = None,
) -> Benchmark:
    """A benchmark kept as one JSONL file per split (``{"dev": "toy/dev.jsonl", ...}``, relative to the
    data folder); its suites default to its ``dev`` and ``test`` splits."""
    return Benchmark(
        name=name,
        splits=tuple(files),
        read=JsonlFiles(dict(files), question, answer, rationale),
        files=tuple(files.values()),
        dev_rule="each split is its own file",
        answer_kind=answer_kind,
        suites=tuple(s for s in ("dev", "test") if s in files) if suites is None else suites,
    )
