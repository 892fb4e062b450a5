"""The whole run's expected remaining time, evaluations included (Lightning's bar counts training only)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


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

    def line(self, record: dict, max_steps: int, every_n_examples: int) -> str:
        """`describe` for an evaluation record just made (its ``seconds`` are counted as evaluation)."""
        self.evaluating += record["seconds"]
        self.longest = max(self.longest, record["seconds"])
        steps = record["step"] - self.first_step
        per_step = (time.perf_counter() - self.started - self.evaluating) / steps if steps > 0 else 0.0
        left = remaining(record["step"], max_steps, record["examples"], every_n_examples, per_step, self.longest)
        return describe(record["step"], max_steps, left)
