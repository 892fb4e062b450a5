"""Evaluation spread over every rank: each rank runs its share of the examples, and the counts meet through a
torchmetrics metric, so no rank waits on another's generation (and no collective timeout bounds its length).

With one process (no process group) every function is the identity. Per-example records and likelihoods
travel with ``all_gather_object`` (text, small); the correct / total / shortened counts behind every score
are summed by `SuiteCounts`, whose ``compute`` is torchmetrics' synchronised reduction.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric

FIELDS = ("correct", "total", "shortened")


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of ranks (``(0, 1)`` outside a process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class SuiteCounts(Metric):
    """Per suite, ``correct``, ``total`` and ``shortened`` counts, summed over ranks on ``compute``.

    ``update(counts)``: ``counts`` ``[num_suites, 3]``; ``compute()`` returns the global ``[num_suites, 3]``.
    """

    full_state_update = False

    def __init__(self, num_suites: int) -> None:
        super().__init__()
        self.add_state("counts", default=torch.zeros(num_suites, len(FIELDS), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, counts: torch.Tensor) -> None:
        self.counts += counts.to(self.counts)

    def compute(self) -> torch.Tensor:
        return self.counts


def sum_counts(
    suites: list[str], local: dict[str, tuple[int, int, int]], device: torch.device | str = "cpu"
) -> dict[str, tuple[int, int, int]]:
    """``suite -> (correct, total, shortened)`` summed over ranks; ``suites`` is the same list on every rank.

    ``device``: where the counts meet, the model's device (NCCL reduces CUDA tensors only)."""
    metric = SuiteCounts(len(suites)).to(device)
    metric.update(torch.tensor([local.get(s, (0, 0, 0)) for s in suites], dtype=torch.long))
    summed = metric.compute()
    return {s: tuple(int(v) for v in summed[i].tolist()) for i, s in enumerate(suites)}


def gather(values: list[Any]) -> list[Any]:
    """Every rank's ``values`` concatenated in rank order (on every rank)."""
    rank, world = rank_and_world()
    if world == 1:
        return list(values)
    everything: list[list[Any]] = [[] for _ in range(world)]
    torch.distributed.all_gather_object(everything, list(values))
    return [value for part in everything for value in part]
