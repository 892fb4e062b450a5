"""Callbacks that measure the specialization while it happens, and pick the checkpoint to keep.

`PeriodicEvaluation` runs evaluation suites (`EvalSettings`, as ``specialight evaluate`` takes them) before
training and every N training examples, logs ``eval/<suite>``, appends each evaluation to
``<log_dir>/evaluations.jsonl`` (what `specialight plot` and the notebook read) and keeps the completions
under ``<log_dir>/evaluations/step-<N>/``; under ``specialight validate`` it evaluates once, the checkpoint's
step. A record holds ``scores`` (suite -> accuracy %) and, per suite, ``n`` (examples), ``ci95`` (95%
interval, percent) and ``shortened`` (prompts cut to fit the context); likelihood suites (``nll_*``) add
``nll`` (mean per-token NLL, n, interval) and, from the second evaluation on, ``nll_change``: the
paired-bootstrap change since the first evaluation on the same examples; they may run at their own cadence
(``likelihood_every_n_examples``). Every rank evaluates its share and gets the same results (torchmetrics
counts), so every rank takes the same selection decisions; a sharded model is whole while it generates.

`ModelSelection` watches one metric (``eval/mas_dev``: held-out out-of-distribution math, the paper's
choice; ``eval/gsm8k_dev`` possible) among the training checkpoints (the step-0 evaluation of the
untrained model only with ``include_initial``), saves the best checkpoint (the earlier one on ties) and,
when training ends, writes ``selection.json`` and ``selection.md`` (`specialight.evaluation.tables`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.trainer.states import RunningStage, TrainerFn

from specialight.core.constants import EVALUATIONS_FILE
from specialight.evaluation.evaluator import Evaluator
from specialight.evaluation.settings import EvalSettings
from specialight.evaluation.tables import format_table, selection_table
from specialight.training.progress import RunClock

logger = logging.getLogger(__name__)


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


def _leave_out_of_throughput(trainer: L.Trainer, started: float, seconds: float) -> None:
    """Move each `ThroughputMonitor`'s training clock on by an evaluation's ``seconds`` (begun at
    ``started``, ``perf_counter``), so that its ``train/*`` rates measure training alone, as Lightning does for
    its own validation loop; a clock started after ``started`` did not count the evaluation."""
    for callback in trainer.callbacks:
        if isinstance(callback, ThroughputMonitor):
            clock = callback._t0s.get(RunningStage.TRAINING)
            if clock is not None and clock <= started:
                callback._t0s[RunningStage.TRAINING] = clock + seconds


class PeriodicEvaluation(L.Callback):
    """Evaluate suites at step 0 and every ``every_n_examples`` training examples (and at the end); under
    ``specialight validate``, once on the loaded checkpoint.

    Args:
        settings: which suites and how (`EvalSettings`, the options of ``specialight evaluate``).
        every_n_examples: cadence in examples seen, summed over ranks (the paper: 10,000).
        before_training: evaluate once before the first step.
        at_end: evaluate after the last step unless that step was just evaluated.
        likelihood_every_n_examples: cadence of the likelihood suites alone (None: with the others).
    """

    def __init__(
        self,
        settings: EvalSettings,
        every_n_examples: int = 10_000,
        before_training: bool = True,
        at_end: bool = True,
        likelihood_every_n_examples: int | None = None,
    ) -> None:
        self.settings, self.every_n_examples = settings, every_n_examples
        self.likelihood_every_n_examples = likelihood_every_n_examples
        self.before_training, self.at_end = before_training, at_end
        self.history: list[dict[str, Any]] = []
        self.examples_seen = 0
        self.clock = RunClock()  # the expected time left, in the log line of each evaluation
        self.nll_baseline: dict[str, dict[str, float]] | None = None
        self.checkpoint_step: int | None = None
        self._evaluator: Evaluator | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"examples_seen": self.examples_seen, "history": self.history, "nll_baseline": self.nll_baseline}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.examples_seen = state_dict["examples_seen"]
        self.history = state_dict["history"]
        self.nll_baseline = state_dict.get("nll_baseline")

    def _evaluator_for(self, pl_module: L.LightningModule) -> Evaluator:
        if self._evaluator is None:
            from specialight.core.models import load_tokenizer

            tokenizer = load_tokenizer(pl_module.hparams.model_name_or_path)
            self._evaluator = Evaluator(pl_module.model, tokenizer, self.settings)
            self._evaluator.items()
        return self._evaluator

    def evaluate(
        self, trainer: L.Trainer, pl_module: L.LightningModule, kinds: tuple[str, ...] = ("generation", "likelihood")
    ) -> dict[str, Any]:
        """Run the suites now on every rank's share and append the record to ``evaluations.jsonl``. When
        fitting, log it and tell `ModelSelection`; otherwise (``validate``) log it through ``pl_module.log``,
        into Lightning's results, at the checkpoint's step, with the table of counts and intervals."""
        from specialight.evaluation.likelihood import paired_difference
        from specialight.training.sharding import full_parameters

        fitting = trainer.state.fn == TrainerFn.FITTING
        step = trainer.global_step if fitting or self.checkpoint_step is None else self.checkpoint_step
        folder = log_dir(trainer)
        started = time.perf_counter()
        with full_parameters(pl_module.model):
            results = self._evaluator_for(pl_module).run(
                folder / "evaluations" / f"step-{step}",
                progress=trainer.progress_bar_callback is not None,
                context=trainer.precision_plugin.forward_context,
                kinds=kinds,
            )
        record = {
            "step": step,
            "examples": self.examples_seen,
            "seconds": round(time.perf_counter() - started, 1),
            "num_parameters": sum(p.numel() for p in pl_module.model.parameters()),
            "model": pl_module.hparams.model_name_or_path,
            **results.summary(),
        }
        if results.nll_values:
            if self.nll_baseline is None:
                self.nll_baseline = results.nll_values
            else:
                record["nll_change"] = {
                    suite: paired_difference(self.nll_baseline[suite], values)
                    for suite, values in results.nll_values.items()
                    if suite in self.nll_baseline
                }
        if trainer.is_global_zero:
            with (folder / EVALUATIONS_FILE).open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        self.history.append(record)
        metrics = {f"eval/{name}": value for name, value in record["scores"].items()}
        metrics |= {f"eval/{name}": stats["mean"] for name, stats in record.get("nll", {}).items()}
        scores = ", ".join(f"{k.removeprefix('eval/')} {v:.3g}" for k, v in metrics.items() if "/" not in k[5:])
        logger.info(
            "%s (%d examples): %s",
            self.clock.line(record, trainer.max_steps, self.every_n_examples),
            record["examples"],
            scores,
        )
        if not fitting:
            pl_module.log_dict(metrics, sync_dist=True)  # the same on every rank: the mean changes nothing
            logger.info("evaluation of step %d in %s:\n%s", step, folder / EVALUATIONS_FILE, format_table(results))
            return record
        if trainer.logger is not None and trainer.is_global_zero:
            trainer.logger.log_metrics({**metrics, "eval/examples_seen": record["examples"]}, step=step)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        if "generation" in kinds and record["scores"]:
            for callback in trainer.callbacks:
                if isinstance(callback, ModelSelection):
                    callback.on_evaluation(trainer, pl_module, record)
        _leave_out_of_throughput(trainer, started, time.perf_counter() - started)
        return record

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != TrainerFn.FITTING:  # validate restores no step: the record names the checkpoint's
            self.checkpoint_step = checkpoint.get("global_step")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self.evaluate(trainer, pl_module)
            self.checkpoint_step = None  # a later validate without a checkpoint is at the trainer's step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.clock = RunClock(first_step=trainer.global_step)
        folder = log_dir(trainer)
        if trainer.is_global_zero:
            # the file holds what the (restored) history holds: a run resumed from a checkpoint older than its
            # last evaluations would otherwise write those evaluations twice
            lines = "".join(json.dumps(record) + "\n" for record in self.history)
            if lines or (folder / EVALUATIONS_FILE).exists():
                (folder / EVALUATIONS_FILE).write_text(lines)
        if self.before_training and trainer.global_step == 0 and not self.history:
            self.evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        seen = self.examples_seen
        # summed over ranks: batches of one step differ in size across ranks (per-format batch sizes, an
        # epoch's last batch of a format), and every rank must decide to evaluate at the same step
        size = torch.tensor(float(batch["input_ids"].shape[0]), device=pl_module.device)
        self.examples_seen += int(trainer.strategy.reduce(size, reduce_op="sum").item())
        if self.examples_seen // self.every_n_examples > seen // self.every_n_examples:
            self.evaluate(trainer, pl_module)
        elif (every := self.likelihood_every_n_examples) and self.examples_seen // every > seen // every:
            self.evaluate(trainer, pl_module, kinds=("likelihood",))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.at_end:
            return
        last = self.history[-1] if self.history else None
        if last is None or last["step"] != trainer.global_step:
            self.evaluate(trainer, pl_module)
        elif not last["scores"] and self._evaluator_for(pl_module).items():  # the likelihood ran at this step
            self.evaluate(trainer, pl_module, kinds=("generation",))


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
