"""The Hugging Face hub as a fallback source of the benchmarks (online only; tests use local folders).

GSM8K and BBH on the hub hold the same rows in the same order as upstream, so the paper's splits carry
over exactly. The hub copies of MultiArith, ASDiv and SVAMP are re-split or re-ordered by their uploaders:
their rows are concatenated in the hub's split order and split here as locally (``_ood_split``), which
is *not* the paper's MultiArith dev/test; use a local clone of the upstream files to reproduce Table 1.
"""

from __future__ import annotations

from specialight.data.tasks import (
    HUB_IDS,
    DataError,
    Example,
    _asdiv_answer,
    _gsm8k_rows,
    _ood_split,
    bbh_options,
    format_number,
)


def _rows(hub_id: str, config: str | None = None) -> dict[str, list[dict]]:
    try:
        from datasets import load_dataset

        loaded = load_dataset(hub_id, config)
    except Exception as err:  # the hub raises many types; the message is what matters to the user
        raise DataError(f"could not load {hub_id!r} from the Hugging Face hub ({err}); use a local --data-dir") from err
    return {name: list(split) for name, split in loaded.items()}


def load_from_hub(task: str, split: str, ood_dev_size: int) -> list[Example]:
    """Load one task's split from the hub into `Example` records."""
    family = task.split("/", 1)[0]
    hub_id = HUB_IDS[family]
    if family == "gsm8k":
        data = _rows(hub_id, "main")
        if split == "test":
            return _gsm8k_rows(data["test"], hub_id, "test", list(range(len(data["test"]))))
        raise DataError("the paper's GSM8K dev index is not on the hub; use a local --data-dir for tune/dev")
    if family == "bbh":
        name = task.split("/", 1)[1]
        rows = _rows(hub_id, name)["test"]
        return [
            Example(
                id=f"bbh/{name}/{i}",
                task=task,
                question=r["input"],
                answer=r["target"].strip(),
                options=bbh_options(r["input"]),
            )
            for i, r in enumerate(rows)
        ]
    rows = [row for part in _rows(hub_id).values() for row in part]
    examples = []
    for i, row in enumerate(rows):
        if family == "multiarith":
            question, answer = row["question"], format_number(row["final_ans"])
        elif family == "asdiv":
            question, answer = f"{row['body']} {row['question']}", _asdiv_answer(row["answer"])
        else:
            question, answer = f"{row['Body']} {row['Question']}", format_number(row["Answer"])
        examples.append(Example(id=f"{family}/hub/{i}", task=family, question=question.strip(), answer=answer))
    return examples if split == "all" else _ood_split(examples, "test" if split == "test" else "dev", ood_dev_size)
