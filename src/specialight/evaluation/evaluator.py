"""`Evaluator`: generate for every suite in one length-sorted pass, score (`specialight.evaluation.results`),
and write what it saw.

Every run writes ``<out>/<suite>.jsonl`` (one line per example: id, prompt id, completion, extracted
answer, gold, correct, whether the prompt was shortened) and ``<out>/summary.json`` (``scores``, ``n``,
``ci95``, ``shortened`` per suite), so each number traces back to its completions. Scores are accuracies in
percent with n and a 95% interval (`specialight.evaluation.intervals`). BBH suites report the unweighted
mean over tasks (``bbh_cot``) and each task (``bbh_cot/<task>``); ``mas_*`` is the mean of its three parts.
Prompts longer than the model's context are shortened first (`specialight.evaluation.context`) and
counted per suite. Likelihood suites (``nll_*``, `specialight.evaluation.likelihood`) run beside the
generation suites: their mean per-token NLL, n and bootstrap interval go to ``nll`` and their per-example
values to ``<out>/nll.jsonl``.

Under a process group every rank evaluates its share of the examples (``rank::world``); the counts behind
every score are summed over ranks with torchmetrics and the records gathered, so all ranks return the same
results and rank zero writes the files (`specialight.evaluation.distributed`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from specialight.core.checkpoints import load_checkpoint_student
from specialight.core.memory import heap_allocation
from specialight.data.formats import newline_separator
from specialight.evaluation.context import FittedPrompt, context_length, fit_prompt
from specialight.evaluation.distributed import gather, rank_and_world, sum_counts
from specialight.evaluation.generation import cut_left, generate
from specialight.evaluation.likelihood import LIKELIHOOD_SUITES, ReferenceText, build_texts, token_nlls
from specialight.evaluation.results import Results, count, results_from_counts, score_records, write_results
from specialight.evaluation.settings import EvalSettings
from specialight.evaluation.suites import COMPOSITES, EvalItem, build_items, expand

logger = logging.getLogger(__name__)


class Completer(Protocol):
    """Where completions come from instead of in-process generation (`specialight.evaluation.server`)."""

    def __call__(self, items: list[EvalItem], prompts: list[str], progress: bool = True) -> list[str]: ...


class Evaluator:
    """Runs suites on a model; `run` returns the `Results` of every suite, composites included.

    With a ``completer`` (e.g. a `specialight.evaluation.server.ServerCompleter`) completions come from it
    and ``model`` may be None: ``config`` then gives the context prompts are fitted to (None: no limit).
    """

    def __init__(
        self, model, tokenizer, settings: EvalSettings, completer: Completer | None = None, config=None
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.completer = completer
        self.config = config if config is not None else getattr(model, "config", None)
        self.newline = newline_separator(tokenizer)
        self._items: list[EvalItem] | None = None
        self._texts: list[ReferenceText] | None = None
        self._fitted: list[FittedPrompt] | None = None

    def items(self) -> list[EvalItem]:
        """Every prompt of every leaf generation suite (built once)."""
        if self._items is None:
            s = self.settings
            limits = s.limits or {}
            generation = [name for name in s.suites if name not in LIKELIHOOD_SUITES]
            self._items = [
                item
                for suite in expand(generation)
                for item in build_items(
                    suite,
                    s.data_dir,
                    self.newline,
                    limits.get(suite, s.limit),
                    s.prompt_file,
                    s.bbh_tasks,
                    s.max_new_tokens,
                    s.answer_only_max_new_tokens,
                )
            ]
        return self._items

    def texts(self) -> list[ReferenceText]:
        """Every reference text of the likelihood suites (built once)."""
        if self._texts is None:
            s = self.settings
            limits = s.limits or {}
            self._texts = [
                text
                for suite in s.suites
                if suite in LIKELIHOOD_SUITES
                for text in build_texts(
                    suite, s.data_dir, self.newline, limits.get(suite, s.limit), s.bbh_tasks, s.prompt_file
                )
            ]
        return self._texts

    def fitted(self) -> list[FittedPrompt]:
        """Every item's prompt fitted to the model's context (built once)."""
        if self._fitted is None:
            config = self.config
            context = context_length(config) if config is not None else None
            encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
            self._fitted = [fit_prompt(item, self.tokenizer, context, encoder_decoder) for item in self.items()]
            if any(f.shortened for f in self._fitted):
                logger.info(
                    "%d of %d prompts shortened to fit the model's %s positions",
                    sum(f.shortened for f in self._fitted),
                    len(self._fitted),
                    context,
                )
        return self._fitted

    def run(
        self,
        out_dir: str | os.PathLike | None = None,
        progress: bool = True,
        context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        kinds: tuple[str, ...] = ("generation", "likelihood"),
    ) -> Results:
        """Generate and score this rank's share, combine every rank's, write files under ``out_dir`` (rank
        zero, when given) and return the results. ``kinds`` picks generation and/or likelihood suites."""
        with heap_allocation():  # no page fault per token's tensors; freed memory returned afterwards
            return self._run(out_dir, progress, context, kinds)

    def _run(
        self,
        out_dir: str | os.PathLike | None,
        progress: bool,
        context: Callable[[], contextlib.AbstractContextManager],
        kinds: tuple[str, ...],
    ) -> Results:
        rank, world = rank_and_world()
        records: list[dict] = []
        results = Results()
        if "generation" in kinds and self.items():
            results, records = self._generation(rank, world, progress, context)
            if out_dir is not None and rank == 0:  # on disk before the likelihood suites start
                write_results(Path(out_dir), results, records)
        if "likelihood" in kinds and self.texts():
            self._likelihood(results, rank, world, progress, context)
        if out_dir is not None and rank == 0:
            write_results(Path(out_dir), results, records)
        return results

    def _generation(self, rank: int, world: int, progress: bool, context) -> tuple[Results, list[dict]]:
        """Every rank's scores of the generation suites (composites included) and the records, in order."""
        items, fitted = self.items(), self.fitted()
        mine = range(rank, len(items), world)
        if self.completer is not None:
            prompts = [self._prompt_text(fitted[i]) for i in mine]
            completions = self.completer([items[i] for i in mine], prompts, progress)
        else:
            completions = generate(
                self.model,
                self.tokenizer,
                [fitted[i].text for i in mine],
                [items[i].max_new_tokens for i in mine],
                self.settings.batch_size,
                progress=progress,
                context=context,
                description="evaluate",
                max_prompt_tokens=[fitted[i].max_tokens for i in mine],
            )
        local = score_records([items[i] for i in mine], completions, [fitted[i].shortened for i in mine])
        leaves = list(dict.fromkeys(item.suite for item in items))
        device = next(self.model.parameters()).device if self.model is not None else "cpu"
        results = results_from_counts(sum_counts(leaves, count(local), device))
        records = [r for _, r in sorted(gather([(i, r) for i, r in zip(mine, local)]), key=lambda p: p[0])]
        for name in self.settings.suites:
            if name in COMPOSITES:
                results.add_mean(name, list(COMPOSITES[name]))
        return results, records

    def _likelihood(self, results: Results, rank: int, world: int, progress: bool, context) -> None:
        """Add every likelihood suite's per-example NLLs, gathered from all ranks, to ``results``."""
        if self.model is None:
            raise ValueError("likelihood suites (nll_*) need the model in process, not a server")
        texts = self.texts()
        mine = range(rank, len(texts), world)
        values = token_nlls(
            self.model, self.tokenizer, [texts[i] for i in mine], self.settings.batch_size, progress, context
        )
        everything = gather([(i, v) for i, v in zip(mine, values)])
        by_suite: dict[str, dict[str, float]] = defaultdict(dict)
        for index, value in sorted(everything, key=lambda p: p[0]):
            by_suite[texts[index].suite.split("/", 1)[0]][texts[index].id] = value
        for suite, suite_values in by_suite.items():
            results.add_likelihood(suite, suite_values)

    def _prompt_text(self, fitted: FittedPrompt) -> str:
        """A fitted prompt as text, its left edge cut to ``max_tokens`` as `generate` cuts token ids."""
        if fitted.max_tokens is None:
            return fitted.text
        ids = self.tokenizer.encode(fitted.text, add_special_tokens=True)
        bos = self.tokenizer.bos_token_id
        return self.tokenizer.decode(cut_left(ids, fitted.max_tokens, bos), skip_special_tokens=True)


def load_for_evaluation(model: str, device: str = "cpu"):
    """A model and its tokenizer from a folder, hub id or alias, or a specialight ``.ckpt`` (a file, or a
    sharded checkpoint's folder)."""
    from specialight.core.models import load_student, load_tokenizer

    if model.endswith(".ckpt"):
        loaded = load_checkpoint_student(model, device)
        return loaded.model, loaded.tokenizer
    return load_student(model).to(device).eval(), load_tokenizer(model)
