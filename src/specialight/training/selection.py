"""`ModelSelection`: keep the checkpoint that scores best on one metric and write the selection table.

It watches one metric (``eval/mas_dev``: held-out out-of-distribution math, the paper's choice;
``eval/gsm8k_dev`` possible) among the training checkpoints (the step-0 evaluation of the untrained model
only with ``include_initial``), saves the best checkpoint (the earlier one on ties) and, when training
ends, writes ``selection.json`` and ``selection.md`` (`specialight.evaluation.tables`). It hears of each
evaluation from `specialight.training.callbacks.PeriodicEvaluation` (``on_evaluation``); configs name it
``specialight.training.callbacks.ModelSelection``, which is this class.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import lightning as L

from specialight.evaluation.tables import selection_table
from specialight.training.progress import log_dir

logger = logging.getLogger(__name__)


class ModelSelection(L.Callback):
    """Keep the checkpoint that scores best on ``monitor`` and write the selection table at the end.

    Args:
        monitor: the metric that picks the checkpoint (``eval/mas_dev`` or ``eval/gsm8k_dev``).
        mode: ``max`` (accuracy) or ``min``.
        compare: further metrics to report a selection by in the table (the paper: ``eval/gsm8k_dev``).
        filename: checkpoint file name, written in the run's folder.
        include_initial: also consider the step-0 evaluation of the untrained model (the paper selects
            among training checkpoints only).
    """

    def __init__(
        self,
        monitor: str = "eval/mas_dev",
        mode: str = "max",
        compare: list[str] | None = None,
        filename: str = "best.ckpt",
        include_initial: bool = False,
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.monitor = monitor
        self.mode = mode
        self.compare = list(compare) if compare is not None else ["eval/gsm8k_dev"]
        self.filename = filename
        self.include_initial = include_initial
        self.best: dict[str, Any] | None = None
        self.records: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "records": self.records}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict["best"]
        self.records = state_dict["records"]

    def _better(self, value: float, than: float) -> bool:
        return value > than if self.mode == "max" else value < than

    def _candidate(self, record: dict[str, Any]) -> bool:
        return self.include_initial or record["step"] > 0

    def on_evaluation(self, trainer: L.Trainer, pl_module: L.LightningModule, record: dict[str, Any]) -> None:
        """Called by `PeriodicEvaluation` after each evaluation (on every rank)."""
        self.records.append(record)
        name = self.monitor.removeprefix("eval/")
        if name not in record["scores"]:
            raise ValueError(f"ModelSelection monitors {self.monitor}; the evaluation has {sorted(record['scores'])}")
        value = record["scores"][name]
        if not self._candidate(record):
            return
        if self.best is None or self._better(value, self.best["value"]):
            path = log_dir(trainer) / self.filename
            # chosen before the save: the file is a resume point whose own state names it the best
            self.best = {"step": record["step"], "examples": record["examples"], "value": value, "path": str(path)}
            trainer.save_checkpoint(path)

    def choose(self, metric: str) -> dict[str, Any] | None:
        """The evaluation record that ``metric`` selects among the candidates (first best on ties)."""
        name = metric.removeprefix("eval/")
        best = None
        for record in (r for r in self.records if name in r["scores"] and self._candidate(r)):
            if best is None or self._better(record["scores"][name], best["scores"][name]):
                best = record
        return best

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # on_fit_end, not on_train_end: PeriodicEvaluation's closing evaluation (its on_train_end) is in,
        # whichever order the callbacks are listed in
        folder = log_dir(trainer)
        if not trainer.is_global_zero or not self.records:
            return
        criteria = [self.monitor] + [m for m in self.compare if m != self.monitor]
        selections = {m: self.choose(m) for m in criteria}
        summary = {
            "monitor": self.monitor,
            "include_initial": self.include_initial,
            "best_checkpoint": self.best,
            "selections": {m: r for m, r in selections.items() if r is not None},
            "first": self.records[0],
            "last": self.records[-1],
        }
        (folder / "selection.json").write_text(json.dumps(summary, indent=2))
        (folder / "selection.md").write_text(selection_table(summary))
        logger.info(
            "selected step %s by %s: %s", self.best and self.best["step"], self.monitor, folder / "selection.md"
        )
