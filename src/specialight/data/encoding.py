"""Training examples as the student's tokens: source items, the dataset of one epoch's ``(item, format)``
units, their encoding (prompt and target ids, labels, the teacher's sparse top-k where aligned) and their
collation into padded batches. `batch_examples` and `batch_tokens` measure a batch for Lightning's
``ThroughputMonitor`` (``batch_size_fn`` and ``length_fn`` in the configs)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from specialight.core.constants import FORMATS, IGNORE_INDEX
from specialight.data.formats import FormatBuilder, is_cot
from specialight.data.tasks import Example

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Item:
    """One source item: a question, a teacher sample's text (its CoT target as written, answer line
    included; ``None``: the gold rationale followed by ``The answer is X.``), and its row in the aligned
    targets if any."""

    example: Example
    rationale: str | None
    target_row: int | None = None


@dataclass
class Encoder:
    """Encodes source items in a format for the student and pads them into batches.

    Args:
        tokenizer: the student's tokenizer.
        builder: the four formats' prompts and targets (demonstrations included).
        encoder_decoder: the student is a seq2seq model (prompt to the encoder, target to the decoder).
        max_source_length: prompt tokens kept (the start of long in-context prompts is cut).
        max_target_length: target tokens kept, EOS included.
        pad_to_multiple_of: batch lengths are rounded up to a multiple of this (1: no rounding).
        targets: aligned targets (`specialight.core.targets.load_targets`): the exact student tokens of each
            teacher sample and the teacher's top-k on them; ``None`` without.
    """

    tokenizer: PreTrainedTokenizerBase
    builder: FormatBuilder
    encoder_decoder: bool
    max_source_length: int
    max_target_length: int
    pad_to_multiple_of: int = 1
    targets: datasets.Dataset | None = None
    target_width: int = field(init=False)

    def __post_init__(self) -> None:
        self.target_width = (
            int(self.targets[0]["target_width"]) if self.targets is not None and len(self.targets) else 0
        )

    def encode(self, item: Item, fmt: str, draw: int = 0) -> dict:
        """One training example as token ids: ``input_ids``, ``labels`` and, with aligned targets,
        ``topk_ids``/``topk_probs`` ``[len(labels), k]`` (one-hot outside the aligned CoT text)."""
        tokenizer = self.tokenizer
        cot = is_cot(fmt)
        formatted = self.builder.build(item.example, fmt, item.rationale if cot else None, draw)
        row = self.targets[item.target_row] if self.targets is not None and cot else None
        if row is not None:
            target = list(row["input_ids"])  # the exact tokens the teacher's top-k were projected onto
        else:
            target = tokenizer.encode(formatted.target, add_special_tokens=False)
        target = target[: self.max_target_length - 1] + [tokenizer.eos_token_id]
        prompt = tokenizer.encode(formatted.prompt, add_special_tokens=True)[-self.max_source_length :]
        if self.encoder_decoder:
            input_ids, labels, offset = prompt, target, 0
        else:
            input_ids, labels, offset = prompt + target, [IGNORE_INDEX] * len(prompt) + target, len(prompt)
        encoded = {"input_ids": input_ids, "labels": labels, "format_id": FORMATS.index(fmt)}
        if self.targets is not None:
            k = self.target_width
            ids = np.zeros((len(labels), k), dtype=np.int64)
            probs = np.zeros((len(labels), k), dtype=np.float32)
            ids[offset:, 0] = target
            probs[offset:, 0] = 1.0
            if row is not None:
                n = len(target) - 1
                ids[offset : offset + n] = np.asarray(row["topk_ids"], dtype=np.int64).reshape(-1, k)[:n]
                probs[offset : offset + n] = np.asarray(row["topk_probs"], dtype=np.float32).reshape(-1, k)[:n]
            encoded |= {"topk_ids": ids, "topk_probs": probs}
        return encoded

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Pad to the longest in the batch, rounded up to ``pad_to_multiple_of``: ``input_ids``/``attention_mask``
        ``[B, S]``, ``labels`` ``[B, T]``, ``format_ids``, ``units`` (dataset indices) and ``num_tokens`` (the
        tokens the student reads, prompt and target, padding left out) ``[B]``, and ``topk_ids``/``topk_probs``
        ``[B, T, k]`` where present."""
        pad = self.tokenizer.pad_token_id
        multiple = max(self.pad_to_multiple_of, 1)
        source = -(-max(len(e["input_ids"]) for e in examples) // multiple) * multiple
        target = -(-max(len(e["labels"]) for e in examples) // multiple) * multiple
        # decoder-only inputs hold the target already; a seq2seq decoder reads it besides the encoder's prompt
        read = [len(e["input_ids"]) + (len(e["labels"]) if self.encoder_decoder else 0) for e in examples]
        batch = {
            "input_ids": torch.full((len(examples), source), pad, dtype=torch.long),
            "attention_mask": torch.zeros((len(examples), source), dtype=torch.long),
            "labels": torch.full((len(examples), target), IGNORE_INDEX, dtype=torch.long),
            "format_ids": torch.tensor([e["format_id"] for e in examples], dtype=torch.long),
            "units": torch.tensor([e.get("unit", -1) for e in examples], dtype=torch.long),
            "num_tokens": torch.tensor(read, dtype=torch.long),
        }
        if "topk_ids" in examples[0]:
            k = examples[0]["topk_ids"].shape[1]
            batch["topk_ids"] = torch.zeros((len(examples), target, k), dtype=torch.long)
            batch["topk_probs"] = torch.zeros((len(examples), target, k), dtype=torch.float32)
        for row, example in enumerate(examples):
            n, t = len(example["input_ids"]), len(example["labels"])
            batch["input_ids"][row, :n] = torch.tensor(example["input_ids"])
            batch["attention_mask"][row, :n] = 1
            batch["labels"][row, :t] = torch.tensor(example["labels"])
            if "topk_ids" in example:
                batch["topk_ids"][row, :t] = torch.from_numpy(example["topk_ids"])
                batch["topk_probs"][row, :t] = torch.from_numpy(example["topk_probs"])
        return batch

    def target_lengths(self, items: list[Item], keys: Iterable[tuple[int, bool]]) -> dict[tuple[int, bool], int]:
        """Target tokens (before the cut, without EOS) of each ``(item index, chain of thought?)`` in ``keys``."""
        lengths: dict[tuple[int, bool], int] = {}
        aligned = None
        if self.targets is not None:
            import pyarrow.compute as pc

            aligned = pc.list_value_length(self.targets.data.column("input_ids")).to_numpy()
        texts: list[str] = []
        pending: list[tuple[int, bool]] = []
        for index, cot in keys:
            item = items[index]
            if cot and aligned is not None and item.target_row is not None:
                lengths[(index, cot)] = int(aligned[item.target_row])
                continue
            fmt = "zero_shot_cot" if cot else "zero_shot_answer_only"
            texts.append(self.builder.build(item.example, fmt, item.rationale if cot else None).target)
            pending.append((index, cot))
        if texts:
            encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
            lengths.update({key: len(ids) for key, ids in zip(pending, encoded)})
        return lengths


class FormattedDataset(Dataset):
    """Unit i = ``(item index, format id)``; returns its encoding (`Encoder.encode`) and ``unit``: i."""

    def __init__(self, encoder: Encoder, items: list[Item], units: list[tuple[int, int]]) -> None:
        self.encoder = encoder
        self.items = items
        self.units = units

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, index: int) -> dict:
        item_index, format_id = self.units[index]
        return {**self.encoder.encode(self.items[item_index], FORMATS[format_id], draw=item_index), "unit": index}

    def length_proxy(self, index: int) -> int:
        """A cheap stand-in for unit ``index``'s length in tokens (characters, demonstrations counted), by which
        the batch sampler groups units of like length."""
        item_index, format_id = self.units[index]
        item, fmt = self.items[item_index], FORMATS[format_id]
        demos = self.encoder.builder.num_demonstrations if fmt.startswith("in_context") else 0
        target = len(item.rationale or item.example.rationale or "") if is_cot(fmt) else 20
        return len(item.example.question) * (1 + demos) + target


def batch_examples(batch: dict[str, torch.Tensor]) -> int:
    """Examples in a collated batch (``ThroughputMonitor``'s ``batch_size_fn``)."""
    return int(batch["input_ids"].shape[0])


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens the student reads in a collated batch, padding left out (``ThroughputMonitor``'s ``length_fn``)."""
    return int(batch["num_tokens"].sum())
