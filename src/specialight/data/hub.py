"""The Hugging Face hub as a fallback source of the benchmarks (online only; tests use local folders).

Each function is a `specialight.data.registry.HubReader` of one built-in benchmark. GSM8K and BBH on the
hub hold the same rows in the same order as upstream, so the paper's splits carry over exactly. The hub
copies of MultiArith, ASDiv and SVAMP are re-split or re-ordered by their uploaders: their rows are
concatenated in the hub's split order and split here as locally (`seeded_split`), which is *not* the
paper's MultiArith dev/test; use a local clone of the upstream files to reproduce Table 1.
"""

from __future__ import annotations

from collections.abc import Callable

from specialight.data.examples import (
    Example,
    asdiv_answer,
    bbh_example,
    format_number,
    gsm8k_examples,
    seeded_split,
)
from specialight.data.jsonl import DataError


def _rows(hub_id: str, config: str | None = None) -> dict[str, list[dict]]:
    try:
        from datasets import load_dataset

        loaded = load_dataset(hub_id, config)
    except Exception as err:  # the hub raises many types; the message is what matters to the user
        raise DataError(f"could not load {hub_id!r} from the Hugging Face hub ({err}); use a local --data-dir") from err
    return {name: list(split) for name, split in loaded.items()}


def gsm8k(hub_id: str, task: str, split: str, dev_size: int) -> list[Example]:
    """GSM8K's test split (the paper's dev index is not on the hub)."""
    if split != "test":
        raise DataError("the paper's GSM8K dev index is not on the hub; use a local --data-dir for tune/dev")
    rows = [(f"{hub_id} row {i + 1}", row) for i, row in enumerate(_rows(hub_id, "main")["test"])]
    return gsm8k_examples(rows, "test", list(range(len(rows))))


def bbh(hub_id: str, task: str, split: str, dev_size: int) -> list[Example]:
    """One BBH task (``bbh/<name>``); BBH has only a test split."""
    name = task.split("/", 1)[1]
    rows = _rows(hub_id, name)["test"]
    return [bbh_example(f"{hub_id}/{name} row {i + 1}", row, name, i) for i, row in enumerate(rows)]


def _reshuffled(question_answer: Callable[[dict], tuple[str, str]]) -> Callable[..., list[Example]]:
    """A reader of a benchmark the hub re-splits: every hub split concatenated, then `seeded_split`."""

    def read(hub_id: str, task: str, split: str, dev_size: int) -> list[Example]:
        rows = [row for part in _rows(hub_id).values() for row in part]
        examples = []
        for i, row in enumerate(rows):
            question, answer = question_answer(row)
            examples.append(Example(id=f"{task}/hub/{i}", task=task, question=question.strip(), answer=answer))
        return examples if split == "all" else seeded_split(examples, "test" if split == "test" else "dev", dev_size)

    return read


multiarith = _reshuffled(lambda row: (row["question"], format_number(row["final_ans"])))
asdiv = _reshuffled(lambda row: (f"{row['body']} {row['question']}", asdiv_answer(row["answer"])))
svamp = _reshuffled(lambda row: (f"{row['Body']} {row['Question']}", format_number(row["Answer"])))
