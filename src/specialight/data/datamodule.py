"""`SpecializationDataModule`: tuning data in the four formats, tokenized for the student, in batches.

Sources (``teacher_data``):

- ``None``: the gold GSM8K rationales of the tuning split (human-written CoT; no teacher needed);
- a ``.jsonl`` file or folder of teacher samples (sample matching only; ``only_correct`` filters);
- a folder from ``specialight align`` (``targets.arrow``): the student's tokens of each teacher sample
  with the teacher's top-k on them, for distribution matching in CoT formats.

Chain-of-thought formats take one example per source item (teacher sample), answer-only formats one per
question, as the authors built them (`specialight.data.mixing`); a format's ``weight`` repeats it per epoch
(a fractional weight takes a subset drawn afresh each epoch). Batches hold one format each (the authors'
batching; each format may have its own batch size, ``batch_sizes``) or are mixed, hold a fixed count of
examples or fill a token budget (``max_tokens_per_batch``, padding counted: short answer-only examples
pack many to a step), are grouped by length within windows of 50 batches to cut padding, and follow a
seeded order per epoch. Under DDP every rank takes a disjoint, equally long share of the batches
(`specialight.data.batching`; encoding: `specialight.data.encoding`). At setup the module logs a table:
per format, examples and batches per epoch, mean tokens, and targets cut at ``max_target_length``. Its
``state_dict`` is the data's provenance (files and sha256).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from specialight.core.targets import has_targets, load_targets
from specialight.data.batching import FormatBatchSampler, ResumableDataLoader, token_lengths
from specialight.data.encoding import Encoder, FormattedDataset, Item
from specialight.data.formats import FORMATS, FormatBuilder, check_format, newline_separator
from specialight.data.jsonl import DataError
from specialight.data.mixing import TABLE_SAMPLE, EpochMix, FormatRow, check_sizes, data_table, format_rows
from specialight.data.records import sample_files
from specialight.data.tasks import Example, load_examples, resolve_data_dir

logger = logging.getLogger(__name__)
DEFAULT_FORMATS = {fmt: 1.0 for fmt in FORMATS}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file (data provenance stored with checkpoints)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class SpecializationDataModule(L.LightningDataModule):
    """Tuning data for `SpecializationModule` (see the module docstring for sources and mixing).

    Args:
        model_name_or_path: the student (its tokenizer and architecture decide the encoding).
        teacher_data: ``None`` (gold rationales), a teacher-samples JSONL file/folder, or an aligned folder.
        data_dir: benchmark folder (default ``$SPECIALIGHT_DATA_DIR``).
        formats: format -> weight (repetitions per epoch).
        one_format_per_batch: the paper's batching; False mixes formats within batches.
        num_demonstrations: demonstrations in in-context formats.
        batch_size: examples per batch (per device).
        batch_sizes: format -> examples per batch, for formats whose batches differ from ``batch_size``
            (one format per batch only).
        max_source_length: prompt tokens kept (the start of long in-context prompts is cut).
        max_target_length: target tokens kept, EOS included (longer targets are cut and counted in the
            data table; `specialight align` drops samples longer than this less one).
        limit: use only the first ``limit`` source items (GSM8K tune's ``heldout`` rows left out are not
            drawn as demonstrations either).
        only_correct: with teacher samples, keep those whose answer was correct.
        seed: data order and demonstrations.
        num_workers: DataLoader worker processes.
        pad_to_multiple_of: pad every batch's lengths up to a multiple of this, so that batch shapes repeat
            and the allocator reuses its blocks instead of growing with each new shape (1: no rounding).
        max_tokens_per_batch: size batches by tokens instead of ``batch_size``: rows x the longest row
            (rounded up to ``pad_to_multiple_of``; a seq2seq row counts prompt and target) stays within
            it; one number, or format -> number (formats not named keep their count; one format per batch).
    """

    def __init__(
        self,
        model_name_or_path: str,
        teacher_data: str | None = None,
        data_dir: str | None = None,
        formats: dict[str, float] | None = None,
        one_format_per_batch: bool = True,
        num_demonstrations: int = 4,
        batch_size: int = 8,
        batch_sizes: dict[str, int] | None = None,
        max_source_length: int = 1024,
        max_target_length: int = 256,
        limit: int | None = None,
        only_correct: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        pad_to_multiple_of: int = 64,
        max_tokens_per_batch: int | dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.formats = {check_format(f): float(w) for f, w in (formats or DEFAULT_FORMATS).items() if w > 0}
        if not self.formats:
            raise DataError("formats: give at least one format a positive weight")
        self.batch_sizes = check_sizes("batch_sizes", batch_sizes or {}, one_format_per_batch)
        self.max_tokens = check_sizes("max_tokens_per_batch", max_tokens_per_batch, one_format_per_batch)
        self.mix: EpochMix | None = None
        self._lengths: list[int] | None = None
        self.targets = None
        self.encoder: Encoder | None = None
        self.dataset: FormattedDataset | None = None
        self._data_sha256: dict[str, str] | None = None
        self._resumed_sha256: dict[str, str] | None = None
        self._outside_pool = 0

    @property
    def has_teacher_distributions(self) -> bool:
        """Whether batches carry ``topk_ids``/``topk_probs`` (aligned targets)."""
        return self.targets is not None

    def _items(self, pool: list[Example]) -> list[Item]:
        """Source items from the tuning pool; teacher samples of dev questions are left out (they would leak
        into selection on GSM8K dev)."""
        hp = self.hparams
        source = hp.teacher_data
        if source is None:
            items = [Item(e, None) for e in pool]  # the gold rationale, then its answer line
        else:
            by_id = {e.id: e for e in pool}
            path = Path(source)
            if has_targets(path):
                self.targets = load_targets(path)
                rows = self.targets.select_columns(["question_id", "text", "correct"])
                items = [
                    Item(example, r["text"], index)
                    for index, r in enumerate(rows)
                    if (r["correct"] or not hp.only_correct)
                    and (example := self._example(by_id, r["question_id"], path)) is not None
                ]
            else:
                from specialight.data.records import read_samples

                items = [
                    Item(example, s.text)
                    for s in read_samples(path, only_correct=hp.only_correct)
                    if (example := self._example(by_id, s.question_id, path)) is not None
                ]
            if not items:
                raise DataError(f"{source}: no usable teacher samples (only_correct={hp.only_correct})")
            if self._outside_pool:
                logger.warning(
                    "%s: left out %d samples of questions outside GSM8K tune (dev or test rows)",
                    source,
                    self._outside_pool,
                )
        return items[: hp.limit] if hp.limit else items

    def _example(self, by_id: dict[str, Example], question_id: str, path: Path) -> Example | None:
        if question_id in by_id:
            return by_id[question_id]
        if not question_id.startswith("gsm8k/"):
            raise DataError(f"{path}: question id {question_id!r} is not a GSM8K row (expected gsm8k/train/N)")
        self._outside_pool += 1
        return None

    def setup(self, stage: str | None = None) -> None:
        """Load the tokenizer and the source items, and lay out the units of one epoch."""
        if self.dataset is not None:
            return
        from specialight.core.models import is_encoder_decoder, load_tokenizer

        hp = self.hparams
        tokenizer = load_tokenizer(hp.model_name_or_path)
        pool = load_examples("gsm8k", "tune", hp.data_dir)
        items = self._items(pool)
        kept = {item.example.id for item in items}
        unseen = frozenset({e.id for e in load_examples("gsm8k", "heldout", hp.data_dir)} - kept)
        builder = FormatBuilder(pool, hp.num_demonstrations, hp.seed, newline_separator(tokenizer), unseen)
        self.encoder = Encoder(
            tokenizer,
            builder,
            encoder_decoder=is_encoder_decoder(hp.model_name_or_path),
            max_source_length=hp.max_source_length,
            max_target_length=hp.max_target_length,
            pad_to_multiple_of=hp.pad_to_multiple_of,
            targets=self.targets,
        )
        self.mix = EpochMix([item.example.id for item in items], self.formats, hp.seed)
        self.dataset = FormattedDataset(self.encoder, items, self.mix.units)
        questions, table = len(kept), data_table(self.format_rows(), TABLE_SAMPLE)
        line = "%d source items (%d questions) -> %d training examples per epoch:\n%s"
        logger.info(line, len(items), questions, self.mix.per_epoch, table)

    def unit_lengths(self) -> list[int]:
        """Tokens of each unit, as the student reads them (prompt and target; computed once per distinct
        item and format): what a token budget counts. Without one, a cheap stand-in (characters) that only
        groups units of like length."""
        if self.max_tokens is None:
            return [self.dataset.length_proxy(unit) for unit in range(len(self.dataset))]
        if self._lengths is None:
            self._lengths = token_lengths(self.dataset, self.encoder.encoder_decoder)
        return self._lengths

    def size_of(self, fmt: str) -> int:
        """The batch size of a format's batches."""
        return self.batch_sizes.get(fmt, self.hparams.batch_size)

    def _sampler(self, rank: int = 0, world_size: int = 1) -> FormatBatchSampler:
        hp, budget = self.hparams, self.max_tokens
        sizes = {FORMATS.index(f): self.size_of(f) for f in self.formats} if self.batch_sizes else hp.batch_size
        budgets = {FORMATS.index(f): n for f, n in budget.items()} if isinstance(budget, dict) else budget
        formats = [f for _, f in self.dataset.units]
        return FormatBatchSampler(
            formats,
            self.unit_lengths(),
            sizes,
            one_format_per_batch=hp.one_format_per_batch,
            seed=hp.seed,
            rank=rank,
            world_size=world_size,
            max_tokens=budgets,
            pad_to_multiple_of=hp.pad_to_multiple_of,
            active=self.mix.active,
        )

    def format_rows(self) -> list[FormatRow]:
        """The data table's rows of the first epoch (`specialight.data.mixing.format_rows`), all ranks'."""
        formats = [f for _, f in self.dataset.units]
        batches = np.bincount([formats[b[0]] for b in self._sampler()._all_batches() if b], minlength=len(FORMATS))
        sizes = {f: self.size_of(f) if (n := self.budget_of(f)) is None else f"{n} tokens" for f in self.formats}
        seed, cut_at = self.hparams.seed, self.hparams.max_target_length
        return format_rows(self.dataset, self.mix.active(0), batches, sizes, seed, cut_at)

    def budget_of(self, fmt: str) -> int | None:
        """A format's token budget per batch (None: a fixed count of examples)."""
        return self.max_tokens.get(fmt) if isinstance(self.max_tokens, dict) else self.max_tokens

    def data_files(self) -> list[Path]:
        """The files this data module reads (hashed into every checkpoint, `state_dict`)."""
        root = resolve_data_dir(self.hparams.data_dir)
        files = [root / "gsm8k" / "train.jsonl", root / "gsm8k" / "validation_index.npy"]
        if self.hparams.teacher_data is not None:
            path = Path(self.hparams.teacher_data)
            files += [path / "targets.arrow"] if (path / "targets.arrow").is_file() else sample_files(path)
        return files

    def state_dict(self) -> dict[str, Any]:
        """The data's provenance, which Lightning stores in every checkpoint: ``{"data_sha256": {file: sha256}}``
        for every file in `data_files`, hashed once per run."""
        if self._data_sha256 is None:
            self._data_sha256 = {str(path): file_sha256(path) for path in self.data_files()}
            resumed = self._resumed_sha256 or {}
            changed = [path for path, digest in resumed.items() if self._data_sha256.get(path, digest) != digest]
            if changed:
                logger.warning("changed since the checkpoint this run resumed from: %s", ", ".join(changed))
        return {"data_sha256": self._data_sha256}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the provenance of the checkpoint resumed from: the next save warns about files that changed."""
        self._resumed_sha256 = state_dict.get("data_sha256")

    def _gold_loader(self, split: str) -> DataLoader:
        items = [Item(e, None) for e in load_examples("gsm8k", split, self.hparams.data_dir)]
        dataset = FormattedDataset(
            self.encoder, items, [(i, FORMATS.index("zero_shot_cot")) for i in range(len(items))]
        )
        return DataLoader(dataset, batch_size=self.hparams.batch_size, collate_fn=self.encoder.collate)

    def val_dataloader(self) -> DataLoader:
        """GSM8K dev (gold rationales) in zero-shot CoT: the teacher-forced loss of held-out questions.
        Accuracy comes from `specialight.training.callbacks.PeriodicEvaluation` and ``specialight evaluate``."""
        self.setup("validate")
        return self._gold_loader("dev")

    def test_dataloader(self) -> DataLoader:
        """GSM8K test (gold rationales) in zero-shot CoT, teacher-forced (``specialight test``)."""
        self.setup("test")
        return self._gold_loader("test")

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        trainer = self.trainer
        sampler = self._sampler(
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
        )
        if sampler.world_size > 1 and len(sampler) == 0:
            raise DataError(f"{len(self.dataset)} examples make no batch for each of {sampler.world_size} ranks")
        return ResumableDataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=self.encoder.collate,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            datamodule=self,
        )
