"""The units of one epoch (which source item appears in which format, how often) and the data table.

As the authors built their tuning data: a chain-of-thought format takes one example per teacher sample
(every correct sample of a question), an answer-only format one example per question (its target is the
question's answer, the same whichever sample it came with). A format's weight repeats it per epoch; a
fractional weight takes a seeded subset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specialight.data.formats import FORMATS, is_cot


def epoch_units(question_ids: list[str], formats: dict[str, float], seed: int) -> list[tuple[int, int]]:
    """``(item index, format id)`` of every example of one epoch; ``question_ids[i]`` is item i's question."""
    every = list(range(len(question_ids)))
    first: dict[str, int] = {}
    for index, question in enumerate(question_ids):
        first.setdefault(question, index)
    once_per_question = sorted(first.values())
    rng = np.random.default_rng(seed)
    units: list[tuple[int, int]] = []
    for fmt, weight in formats.items():
        pool = every if is_cot(fmt) else once_per_question
        whole, fraction = int(weight), weight - int(weight)
        chosen = pool * whole
        if fraction:
            picked = rng.choice(len(pool), size=round(fraction * len(pool)), replace=False)
            chosen += [pool[i] for i in sorted(picked.tolist())]
        units += [(i, FORMATS.index(fmt)) for i in chosen]
    return units


@dataclass(frozen=True)
class FormatRow:
    """One format's line of the data table."""

    format: str
    examples: int
    batch_size: int
    batches: int
    mean_tokens: float
    targets_cut: int


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
