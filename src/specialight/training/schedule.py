"""The optimizer and its learning-rate schedule: AdamW (torch's fused kernel where it applies), then a linear
warm-up from 0 and a cosine to a floor, over the run's optimizer steps (the authors'
``get_cosine_schedule_with_warmup``) or, where a `TimeBudget` may stop training first, over the budget's time,
so that a run stopped by its budget on a slower machine still anneals."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch


def adamw(groups: list[dict[str, Any]], learning_rate: float) -> torch.optim.AdamW:
    """AdamW over parameter ``groups``, in torch's fused kernel where every parameter is on a CPU or CUDA.

    The same algorithm as torch's per-parameter loop (its default on a CPU), in one kernel that allocates
    nothing the size of a parameter: several times faster a step, and a lower peak where the loop's
    temporaries made the optimizer step a checkpointed training step's peak (``benchmarks/train_step.py
    --optimizer loop`` against its default; figures in docs/benchmarks.md). It leaves unscaling to a
    GradScaler (``16-mixed``), as the loop does, which is what lets Lightning clip its gradients under a mixed
    precision (it refuses an optimizer that unscales inside its step); a resumed run steps fused whichever
    kind saved the state. Other devices (MPS, XLA) keep torch's default.
    """
    devices = {p.device.type for group in groups for p in group["params"]}
    if not devices <= {"cpu", "cuda"}:
        return torch.optim.AdamW(groups, lr=learning_rate)
    optimizer = torch.optim.AdamW(groups, lr=learning_rate, fused=True)
    optimizer._step_supports_amp_scaling = False  # the attribute GradScaler and Lightning's clipping read
    optimizer.register_load_state_dict_pre_hook(_keep_fused)
    return optimizer


def _keep_fused(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any] | None:
    """The saved state with this optimizer's ``fused`` per group (torch would take the saved one, and cast the
    steps for it); None, so that torch refuses it, where the groups do not pair up."""
    saved = state["param_groups"]
    if len(saved) != len(optimizer.param_groups):
        return None
    groups = [{**group, "fused": ours["fused"]} for group, ours in zip(saved, optimizer.param_groups, strict=True)]
    return {**state, "param_groups": groups}


class WarmupCosine(torch.optim.lr_scheduler.LRScheduler):
    """Multiplies each group's base rate by `factor` of the optimizer steps taken (``last_epoch``).

    Args:
        optimizer: the optimizer whose rates it sets.
        warmup: steps of the linear warm-up from 0 (the first step runs at rate 0, as transformers').
        total: the step at which the cosine reaches ``min_lr_ratio`` of the peak.
        min_lr_ratio: the floor, a share of the peak rate.
        spent: a clock, the share of a time budget spent so far (the same on every rank), or None. After the
            warm-up the cosine's progress is the larger of the steps' and the time's, the time counted from
            the warm-up's end to the budget's, so that the floor comes at ``total`` or at the budget's end,
            whichever is first (without a warm-up, from the first step's end: the time before training, a step-0
            evaluation, is not progress). The share spent when the warm-up ended is kept in the state dict;
            the clock is not (a resumed run passes it anew), nor the schedule's settings (a resumed run's config
            sets them). The clock is a collective under DDP: every rank steps the scheduler alike.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup: int,
        total: int,
        min_lr_ratio: float = 0.0,
        spent: Callable[[], float] | None = None,
    ) -> None:
        self.warmup, self.total, self.min_lr_ratio = warmup, max(total, warmup + 1), min_lr_ratio
        self.spent = spent
        self.spent_at_warmup: float | None = None
        super().__init__(optimizer)

    def progress(self, step: int) -> float:
        """The cosine's progress in [0, 1] at ``step`` (after the warm-up)."""
        progress = (step - self.warmup) / (self.total - self.warmup)
        if self.spent is not None and self.spent_at_warmup is not None:
            start = self.spent_at_warmup
            progress = max(progress, (self.spent() - start) / (1 - start) if start < 1 else 1.0)
        return min(max(progress, 0.0), 1.0)

    def factor(self, step: int) -> float:
        """The share of the peak rate at ``step``."""
        if step < self.warmup:
            return step / self.warmup
        cosine = 0.5 * (1 + math.cos(math.pi * self.progress(step)))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine

    def get_lr(self) -> list[float]:
        if self.spent is not None and self.spent_at_warmup is None and self.last_epoch >= max(self.warmup, 1):
            self.spent_at_warmup = self.spent()
        factor = self.factor(self.last_epoch)
        return [base * factor for base in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state without its clock (which holds the trainer) or its settings."""
        settings = {"spent", "warmup", "total", "min_lr_ratio"}
        return {key: value for key, value in super().state_dict().items() if key not in settings}
