"""`SpecializationDataModule`: tuning data in the four formats, tokenized for the student, in batches.

Sources (``teacher_data``):

- ``None``: the gold GSM8K rationales of the tuning split (human-written CoT; no teacher needed);
- a ``.jsonl`` file or folder of teacher samples (sample matching only; ``only_correct`` filters);
- a folder from ``specialight align`` (``targets.arrow``): the student's tokens of each teacher sample
  with the teacher's top-k on them, for distribution matching in CoT formats.

Every source item appears in each format ``weight`` times per epoch (``formats``: format -> weight; a
fractional weight takes a seeded subset). Batches hold one format each (the paper) or are mixed, are
grouped by length within windows of ``50 * batch_size`` to cut padding, and follow a seeded order
per epoch. Under DDP every rank takes a disjoint, equally long share of the batches.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from specialight.data.formats import FORMATS, FormatBuilder, check_format, is_cot, newline_separator
from specialight.data.records import sample_files
from specialight.data.tasks import DataError, Example, load_examples, resolve_data_dir
from specialight.losses import IGNORE_INDEX

logger = logging.getLogger(__name__)
DEFAULT_FORMATS = {fmt: 1.0 for fmt in FORMATS}
LENGTH_WINDOW = 50


def file_sha256(path: str | Path) -> str:
    """sha256 of a file (data provenance stored with checkpoints)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Item:
    """One source item: a question, its target rationale, and its row in the aligned targets if any."""

    example: Example
    rationale: str | None
    target_row: int | None = None


class _EpochHook:
    """Lightning calls ``set_epoch`` on ``loader.batch_sampler.sampler``; this forwards it to the batch sampler."""

    def __init__(self, target: FormatBatchSampler) -> None:
        self.target = target

    def set_epoch(self, epoch: int) -> None:
        self.target.set_epoch(epoch)


class FormatBatchSampler(Sampler[list[int]]):
    """Seeded, length-grouped batches of unit indices, one format per batch or mixed, sharded by rank.

    ``resume = (epoch, batches)`` passes over the first ``batches`` of that epoch once (resuming
    mid-epoch); a resume into a later epoch (the checkpoint closed its epoch) skips nothing.
    """

    def __init__(
        self,
        unit_formats: list[int],
        unit_lengths: list[int],
        batch_size: int,
        one_format_per_batch: bool = True,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.unit_formats = np.asarray(unit_formats)
        self.unit_lengths = np.asarray(unit_lengths)
        self.batch_size = batch_size
        self.one_format_per_batch = one_format_per_batch
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.resume: tuple[int, int] | None = None
        self.sampler = _EpochHook(self)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch."""
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        everything = np.arange(self.unit_formats.shape[0])
        groups = (
            [everything[self.unit_formats == f] for f in np.unique(self.unit_formats)]
            if self.one_format_per_batch
            else [everything]
        )
        batches: list[list[int]] = []
        window = self.batch_size * LENGTH_WINDOW
        for group in groups:
            order = rng.permutation(group) if self.shuffle else group
            for start in range(0, order.shape[0], window):
                chunk = order[start : start + window]
                chunk = chunk[np.argsort(-self.unit_lengths[chunk], kind="stable")]
                batches += [chunk[i : i + self.batch_size].tolist() for i in range(0, chunk.shape[0], self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def rank_batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch (all ranks get the same count)."""
        batches = self._all_batches()
        per_rank = len(batches) // self.world_size
        return batches[self.rank :: self.world_size][:per_rank]

    def _skip(self) -> int:
        return self.resume[1] if self.resume is not None and self.resume[0] == self.epoch else 0

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.rank_batches()[self._skip() :]
        self.resume = None
        return iter(batches)

    def __len__(self) -> int:
        # the whole epoch: on resume, Lightning counts the skipped batches as done already
        return len(self.rank_batches())


class ResumableDataLoader(DataLoader):
    """A DataLoader Lightning saves and restores (``state_dict``), so ``fit --ckpt_path`` resumes
    mid-epoch with the same data order: it records how many batches of the epoch the trainer finished."""

    def __init__(self, *args, datamodule: L.LightningDataModule, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.datamodule = datamodule

    def state_dict(self) -> dict[str, int]:
        trainer = self.datamodule.trainer
        # "processed", not "completed": a checkpoint saved in on_train_batch_end sees the batch processed
        # but not yet counted as completed
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer is not None else 0
        return {"epoch": self.batch_sampler.epoch, "batches_done": int(done)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.set_epoch(state["epoch"])
        self.batch_sampler.resume = (state["epoch"], state["batches_done"])


class FormattedDataset(Dataset):
    """Unit i = (item, format); returns token ids, labels and (with aligned targets) sparse top-k."""

    def __init__(self, module: SpecializationDataModule, items: list[Item], units: list[tuple[int, int]]) -> None:
        self.module = module
        self.items = items
        self.units = units

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, index: int) -> dict:
        item_index, format_id = self.units[index]
        return {**self.module.encode(self.items[item_index], FORMATS[format_id], draw=item_index), "unit": index}


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
        max_source_length: prompt tokens kept (the start of long in-context prompts is cut).
        max_target_length: target tokens kept.
        limit: use only the first ``limit`` source items.
        only_correct: with teacher samples, keep those whose answer was correct.
        seed: data order and demonstrations.
        num_workers: DataLoader worker processes.
        pad_to_multiple_of: pad every batch's lengths up to a multiple of this, so that batch shapes repeat
            and the allocator reuses its blocks instead of growing with each new shape (1: no rounding).
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
        max_source_length: int = 1024,
        max_target_length: int = 256,
        limit: int | None = None,
        only_correct: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        pad_to_multiple_of: int = 64,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.formats = {check_format(f): float(w) for f, w in (formats or DEFAULT_FORMATS).items() if w > 0}
        if not self.formats:
            raise DataError("formats: give at least one format a positive weight")
        self.tokenizer = None
        self.encoder_decoder = False
        self.targets = None
        self.top_k = 0
        self.dataset: FormattedDataset | None = None
        self._data_sha256: dict[str, str] | None = None
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
            items = [Item(e, e.rationale) for e in pool]
        else:
            by_id = {e.id: e for e in pool}
            path = Path(source)
            if (path / "targets.arrow").is_file():
                from specialight.align.run import load_targets

                self.targets = load_targets(path)
                self.top_k = int(self.targets[0]["top_k"]) if len(self.targets) else 0
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
        from specialight.models import is_encoder_decoder, load_tokenizer

        hp = self.hparams
        self.tokenizer = load_tokenizer(hp.model_name_or_path)
        self.encoder_decoder = is_encoder_decoder(hp.model_name_or_path)
        pool = load_examples("gsm8k", "tune", hp.data_dir)
        self.builder = FormatBuilder(
            pool,
            num_demonstrations=hp.num_demonstrations,
            seed=hp.seed,
            newline=newline_separator(self.tokenizer),
        )
        items = self._items(pool)
        rng = np.random.default_rng(hp.seed)
        units: list[tuple[int, int]] = []
        for fmt, weight in self.formats.items():
            whole, fraction = int(weight), weight - int(weight)
            chosen = list(range(len(items))) * whole
            chosen += sorted(rng.choice(len(items), size=round(fraction * len(items)), replace=False).tolist())
            units += [(i, FORMATS.index(fmt)) for i in chosen]
        self.dataset = FormattedDataset(self, items, units)
        logger.info("%d source items -> %d training examples in %s", len(items), len(units), dict(self.formats))

    def _length_proxy(self, item_index: int, format_id: int) -> int:
        item = self.dataset.items[item_index]
        demos = self.hparams.num_demonstrations if FORMATS[format_id].startswith("in_context") else 0
        return len(item.example.question) * (1 + demos) + (
            len(item.rationale or "") if is_cot(FORMATS[format_id]) else 20
        )

    def encode(self, item: Item, fmt: str, draw: int = 0) -> dict:
        """One training example as token ids: ``input_ids``, ``labels`` and, with aligned targets,
        ``topk_ids``/``topk_probs`` ``[len(labels), k]`` (one-hot outside the aligned CoT text)."""
        tokenizer, hp = self.tokenizer, self.hparams
        cot = is_cot(fmt)
        formatted = self.builder.build(item.example, fmt, item.rationale if cot else None, draw)
        row = self.targets[item.target_row] if self.targets is not None and cot else None
        if row is not None:
            target = list(row["input_ids"])  # the exact tokens the teacher's top-k were projected onto
        else:
            target = tokenizer.encode(formatted.target, add_special_tokens=False)
        target = target[: hp.max_target_length - 1] + [tokenizer.eos_token_id]
        if self.encoder_decoder:
            prompt = tokenizer.encode(formatted.prompt, add_special_tokens=True)[-hp.max_source_length :]
            input_ids, labels, offset = prompt, target, 0
        else:
            prompt = tokenizer.encode(formatted.prompt, add_special_tokens=True)[-hp.max_source_length :]
            input_ids, labels, offset = prompt + target, [IGNORE_INDEX] * len(prompt) + target, len(prompt)
        encoded = {"input_ids": input_ids, "labels": labels, "format_id": FORMATS.index(fmt)}
        if self.targets is not None:
            k = self.top_k
            ids = np.zeros((len(labels), k), dtype=np.int64)
            probs = np.zeros((len(labels), k), dtype=np.float32)
            ids[offset:, 0] = target
            probs[offset:, 0] = 1.0
            if row is not None:
                n = len(target) - 1
                ids[offset : offset + n] = np.asarray(row["topk_ids"], dtype=np.int64).reshape(-1, k)[:n]
                probs[offset : offset + n] = np.asarray(row["topk_probs"], dtype=np.float32).reshape(-1, k)[:n]
            encoded |= {"topk_ids": ids, "topk_probs": probs}
        return encoded

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Pad to the longest in the batch, rounded up to ``pad_to_multiple_of``: ``input_ids``/``attention_mask``
        ``[B, S]``, ``labels`` ``[B, T]``, ``format_ids`` and ``units`` (dataset indices) ``[B]``, and
        ``topk_ids``/``topk_probs`` ``[B, T, k]`` where present."""
        pad = self.tokenizer.pad_token_id
        multiple = max(self.hparams.pad_to_multiple_of, 1)
        source = -(-max(len(e["input_ids"]) for e in examples) // multiple) * multiple
        target = -(-max(len(e["labels"]) for e in examples) // multiple) * multiple
        batch = {
            "input_ids": torch.full((len(examples), source), pad, dtype=torch.long),
            "attention_mask": torch.zeros((len(examples), source), dtype=torch.long),
            "labels": torch.full((len(examples), target), IGNORE_INDEX, dtype=torch.long),
            "format_ids": torch.tensor([e["format_id"] for e in examples], dtype=torch.long),
            "units": torch.tensor([e.get("unit", -1) for e in examples], dtype=torch.long),
        }
        if "topk_ids" in examples[0]:
            k = examples[0]["topk_ids"].shape[1]
            batch["topk_ids"] = torch.zeros((len(examples), target, k), dtype=torch.long)
            batch["topk_probs"] = torch.zeros((len(examples), target, k), dtype=torch.float32)
        for row, example in enumerate(examples):
            n, t = len(example["input_ids"]), len(example["labels"])
            batch["input_ids"][row, :n] = torch.tensor(example["input_ids"])
            batch["attention_mask"][row, :n] = 1
            batch["labels"][row, :t] = torch.tensor(example["labels"])
            if "topk_ids" in example:
                batch["topk_ids"][row, :t] = torch.from_numpy(example["topk_ids"])
                batch["topk_probs"][row, :t] = torch.from_numpy(example["topk_probs"])
        return batch

    def data_files(self) -> list[Path]:
        """The files this data module reads (hashed into every checkpoint)."""
        root = resolve_data_dir(self.hparams.data_dir)
        files = [root / "gsm8k" / "train.jsonl", root / "gsm8k" / "validation_index.npy"]
        if self.hparams.teacher_data is not None:
            path = Path(self.hparams.teacher_data)
            files += [path / "targets.arrow"] if (path / "targets.arrow").is_file() else sample_files(path)
        return files

    def data_sha256(self) -> dict[str, str]:
        """sha256 of every file in `data_files`, computed once."""
        if self._data_sha256 is None:
            self._data_sha256 = {str(path): file_sha256(path) for path in self.data_files()}
        return self._data_sha256

    def _gold_loader(self, split: str) -> DataLoader:
        items = [Item(e, e.rationale) for e in load_examples("gsm8k", split, self.hparams.data_dir)]
        dataset = FormattedDataset(self, items, [(i, FORMATS.index("zero_shot_cot")) for i in range(len(items))])
        return DataLoader(dataset, batch_size=self.hparams.batch_size, collate_fn=self.collate)

    def val_dataloader(self) -> DataLoader:
        """GSM8K dev (gold rationales) in zero-shot CoT: the teacher-forced loss of held-out questions.
        Accuracy comes from `specialight.callbacks.PeriodicEvaluation` and ``specialight evaluate``."""
        self.setup("validate")
        return self._gold_loader("dev")

    def test_dataloader(self) -> DataLoader:
        """GSM8K test (gold rationales) in zero-shot CoT, teacher-forced (``specialight test``)."""
        self.setup("test")
        return self._gold_loader("test")

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        trainer = self.trainer
        sampler = FormatBatchSampler(
            [f for _, f in self.dataset.units],
            [self._length_proxy(i, f) for i, f in self.dataset.units],
            batch_size=self.hparams.batch_size,
            one_format_per_batch=self.hparams.one_format_per_batch,
            seed=self.hparams.seed,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
        )
        if sampler.world_size > 1 and len(sampler) == 0:
            raise DataError(f"{len(self.dataset)} examples make no batch for each of {sampler.world_size} ranks")
        return ResumableDataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=self.collate,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            datamodule=self,
        )
