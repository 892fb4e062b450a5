"""The units of each epoch (which source item appears in which format, how often) and the data table.

As the authors built their tuning data: a chain-of-thought format takes one example per teacher sample
(every correct sample of a question), an answer-only format one example per question (its target is the
question's answer, the same whichever sample it came with). A format's weight repeats it per epoch; a
fractional weight's remainder takes a subset of the format's pool, drawn afresh each epoch from the
format's own generator (seeded by the seed, the format and the epoch), so over epochs the whole pool is
seen, and one format's weight never changes another format's draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specialight.data.formats import FORMATS, check_format, is_cot
from specialight.data.jsonl import DataError

TABLE_SAMPLE = 32  # examples per format whose tokens the data table averages


@dataclass(frozen=True)
class _Draw:
    """A fractional weight's remainder: ``size`` of the units ``start .. start + pool - 1``, drawn per epoch."""

    format_id: int
    start: int
    pool: int
    size: int


class EpochMix:
    """Every unit any epoch may take (`units`: ``(item index, format id)``, each format's pool repeated
    ``ceil(weight)`` times), and which of them epoch e takes (`active`): all, but of a fractional weight's
    last repetition only that epoch's draw. ``question_ids[i]`` is item i's question."""

    def __init__(self, question_ids: list[str], formats: dict[str, float], seed: int) -> None:
        every = list(range(len(question_ids)))
        first: dict[str, int] = {}
        for index, question in enumerate(question_ids):
            first.setdefault(question, index)
        once_per_question = sorted(first.values())
        self.seed = seed
        self.units: list[tuple[int, int]] = []
        self.draws: list[_Draw] = []
        for fmt, weight in formats.items():
            pool = every if is_cot(fmt) else once_per_question
            whole, fraction = int(weight), weight - int(weight)
            format_id = FORMATS.index(fmt)
            self.units += [(i, format_id) for i in pool * whole]
            if fraction:
                self.draws.append(_Draw(format_id, len(self.units), len(pool), round(fraction * len(pool))))
                self.units += [(i, format_id) for i in pool]

    def active(self, epoch: int) -> np.ndarray:
        """Indices into `units` of epoch ``epoch``'s examples, ascending (a pure function of seed and epoch,
        so a resumed run takes the same ones)."""
        keep = np.ones(len(self.units), dtype=bool)
        for draw in self.draws:
            rng = np.random.default_rng([self.seed, draw.format_id, epoch])
            keep[draw.start : draw.start + draw.pool] = False
            keep[draw.start + rng.choice(draw.pool, size=draw.size, replace=False)] = True
        return np.nonzero(keep)[0]

    @property
    def per_epoch(self) -> int:
        """Examples in every epoch."""
        return len(self.units) - sum(d.pool - d.size for d in self.draws)


def epoch_units(question_ids: list[str], formats: dict[str, float], seed: int, epoch: int = 0) -> list[tuple[int, int]]:
    """``(item index, format id)`` of every example of epoch ``epoch``; ``question_ids[i]`` is item i's question."""
    mix = EpochMix(question_ids, formats, seed)
    return [mix.units[i] for i in mix.active(epoch)]


def check_sizes(option: str, sizes: int | dict[str, int] | None, one_format_per_batch: bool):
    """A batch size or token budget option checked: positive integers, known formats, and per-format values
    only with one format per batch."""
    if sizes is None:
        return None
    checked = {check_format(f): int(n) for f, n in sizes.items()} if isinstance(sizes, dict) else int(sizes)
    if any(n < 1 for n in (checked.values() if isinstance(checked, dict) else [checked])):
        raise DataError(f"{option}: every size must be a positive integer, got {sizes}")
    if isinstance(checked, dict) and checked and not one_format_per_batch:
        raise DataError(f"{option}: per-format values need one_format_per_batch=true")
    return checked


@dataclass(frozen=True)
class FormatRow:
    """One format's line of the data table."""

    format: str
    examples: int
    batch_size: int | str
    batches: int
    mean_tokens: float
    targets_cut: int


def format_rows(
    dataset, active: np.ndarray, batches: np.ndarray, sizes: dict[str, int | str], seed: int, max_target_length: int
) -> list[FormatRow]:
    """Per format of ``sizes`` (its batch size or token budget): examples among the ``active`` units of a
    `specialight.data.encoding.FormattedDataset`, ``batches[format id]`` batches, mean tokens of a seeded
    sample of `TABLE_SAMPLE` examples, and the number of targets cut at ``max_target_length``."""
    units = dataset.units
    formats = np.asarray([f for _, f in units])
    lengths = dataset.encoder.target_lengths(dataset.items, sorted({(i, is_cot(FORMATS[f])) for i, f in units}))
    rng = np.random.default_rng(seed)
    rows = []
    for fmt, size in sizes.items():
        members = active[formats[active] == FORMATS.index(fmt)]
        sample = rng.choice(members, size=min(TABLE_SAMPLE, members.shape[0]), replace=False)
        tokens = [len(e["input_ids"]) + len(e["labels"]) for e in (dataset[int(u)] for u in sample)]
        cut = sum(lengths[(units[u][0], is_cot(fmt))] > max_target_length - 1 for u in members)
        count = int(batches[FORMATS.index(fmt)])
        shown = f"{size} (~{members.shape[0] / max(count, 1):.1f})" if isinstance(size, str) else size
        rows.append(FormatRow(fmt, int(members.shape[0]), shown, count, float(np.mean(tokens or [0])), int(cut)))
    return rows


def data_table(rows: list[FormatRow], sampled: int) -> str:
    """The rows as an aligned text table; mean tokens (prompt + target) are over up to ``sampled`` examples
    of each format."""
    header = ("format", "examples/epoch", "batch size", "batches/epoch", f"mean tokens (of {sampled})", "targets cut")
    lines = [header] + [
        (r.format, f"{r.examples:,}", str(r.batch_size), f"{r.batches:,}", f"{r.mean_tokens:.0f}", f"{r.targets_cut:,}")
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in lines)
