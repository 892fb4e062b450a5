"""Where a run is and where it writes: its folder (`log_dir`), its expected remaining time, evaluations
included (Lightning's bar counts training only), evaluations left out of the training throughput, and a time
budget that counts the step-0 evaluation (`TimeBudget`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ThroughputMonitor, Timer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.trainer.states import RunningStage


def remaining(
    step: int, max_steps: int, examples: int, every_n_examples: int, step_seconds: float, eval_seconds: float
) -> tuple[float, int] | None:
    """``(seconds left, evaluations left)`` of a run at ``step`` of ``max_steps`` with ``examples`` seen,
    from the seconds per training step so far (evaluations excluded) and the last evaluation's time; None
    before the first step or without a step limit. Evaluations left are the cadence's points still ahead
    plus the one at the end (`PeriodicEvaluation.at_end`); examples per step are taken as so far."""
    if step <= 0 or max_steps <= 0 or step >= max_steps or step_seconds <= 0:
        return None
    per_step = examples / step
    ahead = math.floor(max_steps * per_step / every_n_examples) - examples // every_n_examples
    at_end = 0 if max_steps * per_step % every_n_examples == 0 else 1
    evaluations = max(ahead, 0) + at_end
    return (max_steps - step) * step_seconds + evaluations * eval_seconds, evaluations


def describe(step: int, max_steps: int, left: tuple[float, int] | None) -> str:
    """``"step 15/30, about 7 min left (1 evaluation ahead)"``, or the step alone."""
    if left is None:
        return f"step {step}/{max_steps}" if max_steps > 0 else f"step {step}"
    seconds, evaluations = left
    plural = "" if evaluations == 1 else "s"
    return f"step {step}/{max_steps}, about {seconds / 60:.0f} min left ({evaluations} evaluation{plural} ahead)"


@dataclass
class RunClock:
    """Training time of this process's part of a run, evaluations left out."""

    started: float = field(default_factory=lambda: time.perf_counter())
    evaluating: float = 0.0
    first_step: int = 0
    longest: float = 0.0  # the longest evaluation so far: a full one, where likelihood-only ones come between

    def line(self, record: dict, max_steps: int, every_n_examples: int, budget_left: float | None = None) -> str:
        """`describe` for an evaluation record just made (its ``seconds`` are counted as evaluation); with
        ``budget_left``, the seconds a `TimeBudget` leaves, the estimate ends where the budget stops training
        first (then one evaluation, as long as the longest so far)."""
        self.evaluating += record["seconds"]
        self.longest = max(self.longest, record["seconds"])
        steps = record["step"] - self.first_step
        per_step = (time.perf_counter() - self.started - self.evaluating) / steps if steps > 0 else 0.0
        left = remaining(record["step"], max_steps, record["examples"], every_n_examples, per_step, self.longest)
        if budget_left is not None and budget_left <= 0:  # training has stopped: the last evaluation
            return describe(record["step"], max_steps, None)
        if left is not None and budget_left is not None and budget_left + self.longest < left[0]:
            minutes = (budget_left + self.longest) / 60
            budget = "the time budget, then 1 evaluation"
            return f"step {record['step']}/{max_steps}, about {minutes:.0f} min left ({budget})"
        return describe(record["step"], max_steps, left)


def log_dir(trainer: L.Trainer) -> Path:
    """Where a run writes its files, the folder of Lightning's own checkpoints: a TensorBoard or CSV logger's
    ``log_dir``; for another logger (W&B, MLflow, ...) ``<save_dir or default_root_dir>/<name>/<version>``;
    without a logger the trainer's ``default_root_dir``.

    A collective under DDP (rank zero's folder is broadcast): call this on every rank."""
    run_logger = trainer.logger
    if run_logger is None:
        folder = Path(trainer.default_root_dir)
    elif isinstance(run_logger, (TensorBoardLogger, CSVLogger)):
        folder = Path(run_logger.log_dir)
    else:
        version = run_logger.version
        version = version if isinstance(version, str) else f"version_{version}"
        folder = Path(run_logger.save_dir or trainer.default_root_dir) / str(run_logger.name) / version
    folder = Path(trainer.strategy.broadcast(str(folder), src=0))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def leave_out_of_throughput(trainer: L.Trainer, started: float, seconds: float) -> None:
    """Move each `ThroughputMonitor`'s training clock on by an evaluation's ``seconds`` (begun at
    ``started``, ``perf_counter``), so that its ``train/*`` rates measure training alone, as Lightning does for
    its own validation loop; a clock started after ``started`` did not count the evaluation."""
    for callback in trainer.callbacks:
        if isinstance(callback, ThroughputMonitor):
            clock = callback._t0s.get(RunningStage.TRAINING)
            if clock is not None and clock <= started:
                callback._t0s[RunningStage.TRAINING] = clock + seconds


class TimeBudget(Timer):
    """Stop training after the step that ends ``minutes`` after training started, the evaluations before and
    between steps included: Lightning's `Timer` counted in minutes. Listed before `PeriodicEvaluation` it
    counts the step-0 evaluation (``trainer.max_time`` starts its clock after every configured callback's
    ``on_train_start``, so that evaluation would go uncounted). The last evaluation runs after training stops
    (``on_train_end``): leave its minutes outside the budget; `PeriodicEvaluation` skips an evaluation between
    the first and the last that would outlast it, and the learning rate's cosine ends with it where that comes
    before the last step (`WarmupCosine`). Its clock is saved in checkpoints and goes on when a run resumes."""

    def __init__(self, minutes: float) -> None:
        if minutes <= 0:
            raise ValueError(f"TimeBudget: minutes must be positive, got {minutes}")
        super().__init__(duration=timedelta(minutes=minutes), interval="step", verbose=True)

    def spent(self, trainer: L.Trainer) -> float:
        """The share of the budget spent so far (0 before training starts), rank zero's on every rank."""
        share = self.time_elapsed(RunningStage.TRAINING) / self._duration
        return float(trainer.strategy.broadcast(share, src=0))


def time_budget(trainer: L.Trainer) -> TimeBudget | None:
    """The trainer's `TimeBudget` callback, if it has one."""
    return next((c for c in getattr(trainer, "callbacks", []) if isinstance(c, TimeBudget)), None)


def budget_left(trainer: L.Trainer) -> float | None:
    """The seconds the trainer's `TimeBudget` leaves, None without one."""
    budget = time_budget(trainer)
    return budget.time_remaining() if budget is not None else None
