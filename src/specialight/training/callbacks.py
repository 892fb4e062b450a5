"""Callbacks that measure the specialization while it happens, and pick the checkpoint to keep.

`PeriodicEvaluation` runs evaluation suites (`EvalSettings`, as ``specialight evaluate`` takes them) before
training and every N training examples, logs ``eval/<suite>``, appends each evaluation to
``<log_dir>/evaluations.jsonl`` (what `specialight plot` and the notebook read) and keeps the completions
under ``<log_dir>/evaluations/step-<N>/``; under ``specialight validate`` it evaluates once, the checkpoint's
step. A record holds ``examples`` (training examples seen, summed over ranks: with a token budget, the rows
the batches held), ``scores`` (suite -> accuracy %) and, per suite, ``n`` (examples), ``ci95`` (95%
interval, percent) and ``shortened`` (prompts cut to fit the context); likelihood suites (``nll_*``) add
``nll`` (mean per-token NLL, n, interval) and, from the second evaluation on, ``nll_change``: the
paired-bootstrap change since the first evaluation on the same examples; they may run at their own cadence
(``likelihood_every_n_examples``). Every rank evaluates its share and gets the same results (torchmetrics
counts), so every rank takes the same selection decisions; a sharded model is whole while it generates.

With ``cache_initial``, the step-0 evaluation of the untouched base model is cached on disk
(`specialight.evaluation.result_cache`, keyed by the weights, the settings and the scorer's version): a
second run with the same model and suites copies its files and scores instead of generating again, says so
in the log, and marks the record ``"cache": "hit"`` with its ``cache_key`` (a first run: ``"miss"``).

`ModelSelection` (`specialight.training.selection`, importable from here as the configs name it) keeps the
best checkpoint and writes the selection table; `TimeBudget` (`specialight.training.progress`, importable
from here too) stops training after a number of minutes that counts the step-0 evaluation, and with one an
evaluation between the first and the last that would outlast it is skipped.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from specialight.core.constants import EVALUATIONS_FILE
from specialight.evaluation import result_cache
from specialight.evaluation.evaluator import Evaluator
from specialight.evaluation.results import Results
from specialight.evaluation.settings import EvalSettings
from specialight.evaluation.tables import format_table
from specialight.training.progress import (
    RunClock,
    TimeBudget,
    budget_left,
    leave_out_of_throughput,
    log_dir,
)
from specialight.training.selection import ModelSelection

__all__ = ["ModelSelection", "PeriodicEvaluation", "TimeBudget", "log_dir"]
logger = logging.getLogger(__name__)


class PeriodicEvaluation(L.Callback):
    """Evaluate suites at step 0 and every ``every_n_examples`` training examples (and at the end); under
    ``specialight validate``, once on the loaded checkpoint.

    Args:
        settings: which suites and how (`EvalSettings`, the options of ``specialight evaluate``).
        every_n_examples: cadence in examples seen, summed over ranks (the paper: 10,000).
        before_training: evaluate once before the first step.
        at_end: evaluate after the last step unless that step was just evaluated.
        likelihood_every_n_examples: cadence of the likelihood suites alone (None: with the others).
        interim_suites: some of ``settings.suites``, the only ones evaluated between the first evaluation and
            the last (None: every suite). The first and the last run every suite, so claims compare the same
            suites at both ends, while the evaluations between them cost only what they measure; such a
            record says ``"interim": true``. A `ModelSelection`'s metrics must be among them.
        cache_initial: keep the step-0 evaluation of the untouched model on disk and reuse it when a run
            evaluates the same weights with the same settings (`specialight.evaluation.result_cache`; off
            unless a config turns it on, as the reproduce and demo configs do).
    """

    def __init__(
        self,
        settings: EvalSettings,
        every_n_examples: int = 10_000,
        before_training: bool = True,
        at_end: bool = True,
        likelihood_every_n_examples: int | None = None,
        cache_initial: bool = False,
        interim_suites: list[str] | None = None,
    ) -> None:
        if interim_suites is not None and not set(interim_suites) <= set(settings.suites):
            raise ValueError(f"interim_suites {interim_suites} must be among settings.suites {settings.suites}")
        self.settings, self.every_n_examples, self.interim_suites = settings, every_n_examples, interim_suites
        self.likelihood_every_n_examples = likelihood_every_n_examples
        self.before_training, self.at_end, self.cache_initial = before_training, at_end, cache_initial
        self.history: list[dict[str, Any]] = []
        self.examples_seen = 0
        self.clock = RunClock()  # the expected time left, in the log line of each evaluation
        self.nll_baseline: dict[str, dict[str, float]] | None = None
        self.checkpoint_step: int | None = None
        self._evaluators: dict[bool, Evaluator] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"examples_seen": self.examples_seen, "history": self.history, "nll_baseline": self.nll_baseline}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.examples_seen = state_dict["examples_seen"]
        self.history = state_dict["history"]
        self.nll_baseline = state_dict.get("nll_baseline")

    def _evaluator_for(self, pl_module: L.LightningModule, interim: bool = False) -> Evaluator:
        """The evaluator of every suite, or of the interim suites (each built once)."""
        if interim not in self._evaluators:
            from dataclasses import replace

            from specialight.core.models import load_tokenizer

            tokenizer = load_tokenizer(pl_module.hparams.model_name_or_path)
            settings = replace(self.settings, suites=list(self.interim_suites)) if interim else self.settings
            self._evaluators[interim] = Evaluator(pl_module.model, tokenizer, settings)
            self._evaluators[interim].items()
        return self._evaluators[interim]

    def evaluate(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        kinds: tuple[str, ...] = ("generation", "likelihood"),
        interim: bool = False,
    ) -> dict[str, Any]:
        """Run the suites now on every rank's share and append the record to ``evaluations.jsonl``. When
        fitting, log it and tell `ModelSelection`; otherwise (``validate``) log it through ``pl_module.log``,
        into Lightning's results, at the checkpoint's step, with the table of counts and intervals."""
        fitting = trainer.state.fn == TrainerFn.FITTING
        step = trainer.global_step if fitting or self.checkpoint_step is None else self.checkpoint_step
        folder = log_dir(trainer)
        started = time.perf_counter()
        if fitting and pl_module.automatic_optimization and trainer.accumulate_grad_batches == 1:
            pl_module.zero_grad(set_to_none=True)  # the next step would drop them: their memory goes to evaluation
        out = folder / "evaluations" / f"step-{step}"
        results, fields = self._run_suites(trainer, pl_module, out, kinds, interim)
        fields |= {"interim": True} if interim else {}
        record = self._record(pl_module, step, results, time.perf_counter() - started, fields)
        if trainer.is_global_zero:
            with (folder / EVALUATIONS_FILE).open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        self.history.append(record)
        metrics = {f"eval/{name}": value for name, value in record["scores"].items()}
        metrics |= {f"eval/{name}": stats["mean"] for name, stats in record.get("nll", {}).items()}
        scores = ", ".join(f"{k.removeprefix('eval/')} {v:.3g}" for k, v in metrics.items() if "/" not in k[5:])
        clock = self.clock.line(record, trainer.max_steps, self.every_n_examples, budget_left(trainer))
        logger.info("%s (%d examples): %s", clock, record["examples"], scores)
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
        leave_out_of_throughput(trainer, started, time.perf_counter() - started)
        return record

    def _run_suites(
        self, trainer: L.Trainer, pl_module: L.LightningModule, out: Path, kinds: tuple[str, ...], interim: bool
    ) -> tuple[Results, dict[str, str]]:
        """The `Results` of the suites, and the cache fields of the record (none where no cache applies)."""
        from specialight.training.sharding import full_parameters, is_sharded

        untouched = trainer.state.fn == TrainerFn.FITTING and trainer.global_step == 0 and not self.history
        with full_parameters(pl_module.model):
            run = functools.partial(
                self._evaluator_for(pl_module, interim).run,
                out,
                progress=trainer.progress_bar_callback is not None,
                context=trainer.precision_plugin.forward_context,
                kinds=kinds,
            )
            if not (self.cache_initial and untouched and not is_sharded(pl_module.model)):
                return run(), {}
            context = {
                "kinds": sorted(kinds),
                "precision": str(trainer.precision),
                "ranks": trainer.world_size,
                "tokenizer": pl_module.hparams.model_name_or_path,
            }
            key = result_cache.evaluation_key(pl_module.model, self.settings, context)
            cached = result_cache.load(key, out) if trainer.is_global_zero else None
            cached = trainer.strategy.broadcast(cached, src=0)  # every rank takes the same path
            if cached is not None:
                logger.info("step-0 evaluation: cache hit %s (%s)", key, result_cache.cache_root() / key)
                return cached, {"cache": "hit", "cache_key": key}
            results = run()
            if trainer.is_global_zero:
                result_cache.store(key, results, out)
            return results, {"cache": "miss", "cache_key": key}

    def _record(
        self, pl_module: L.LightningModule, step: int, results: Results, seconds: float, fields: dict[str, Any]
    ) -> dict[str, Any]:
        """The ``evaluations.jsonl`` record; likelihoods also change against the first evaluation's."""
        from specialight.evaluation.likelihood import paired_difference

        record = {
            "step": step,
            "examples": self.examples_seen,
            "seconds": round(seconds, 1),
            "num_parameters": sum(p.numel() for p in pl_module.model.parameters()),
            "model": pl_module.hparams.model_name_or_path,
            **fields,
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
        return record

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != TrainerFn.FITTING:  # validate restores no step: the record names the checkpoint's
            self.checkpoint_step = checkpoint.get("global_step")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self.evaluate(trainer, pl_module)
            self.checkpoint_step = None  # a later validate without a checkpoint is at the trainer's step

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.interim_suites is None:
            return
        for callback in trainer.callbacks:
            if isinstance(callback, ModelSelection):
                metrics = [callback.monitor, *callback.compare]
                missing = [m for m in metrics if m.removeprefix("eval/") not in self.interim_suites]
                if missing:
                    raise ValueError(f"ModelSelection reads {missing}: add them to interim_suites")

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
            # a callback listed before this one (TimeBudget) may have ended training at this step: the last
            last = trainer.should_stop or 0 < trainer.max_steps <= trainer.global_step
            between = bool(self.history) and not last
            if not between or self._fits_budget(trainer):
                self.evaluate(trainer, pl_module, interim=self.interim_suites is not None and between)
        elif (every := self.likelihood_every_n_examples) and self.examples_seen // every > seen // every:
            self.evaluate(trainer, pl_module, kinds=("likelihood",))

    def _fits_budget(self, trainer: L.Trainer) -> bool:
        """Whether an evaluation between the first and the last ends within a `TimeBudget`'s time left (as
        long as the last such evaluation took, else the last one that generated and was not read from the
        cache: an overestimate, as the first runs every suite): one that would not is skipped and logged, so
        that the last evaluation, after training stops, does not start late. The same on every rank."""
        left = budget_left(trainer)
        timed = [r for r in self.history if r.get("scores") and r.get("cache") != "hit"]
        if left is None or not timed:
            return True
        needed = ([r for r in timed if r.get("interim")] or timed)[-1]["seconds"]
        fits = bool(trainer.strategy.broadcast(left >= needed, src=0))
        if not fits:
            logger.info(
                "step %d: evaluation skipped, %.1f min left of the time budget and it takes ~%.1f",
                trainer.global_step,
                left / 60,
                needed / 60,
            )
        return fits

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.at_end:
            return
        last = self.history[-1] if self.history else None
        if last is None or last["step"] != trainer.global_step or last.get("interim"):
            self.evaluate(trainer, pl_module)
        elif not last["scores"] and self._evaluator_for(pl_module).items():  # the likelihood ran at this step
            self.evaluate(trainer, pl_module, kinds=("generation",))
