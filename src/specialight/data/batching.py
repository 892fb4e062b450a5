"""Batches of one epoch: the seeded, length-grouped, rank-sharded batch sampler (a fixed count of examples
or a token budget per batch) and the DataLoader that Lightning saves and restores, so ``fit --ckpt_path``
resumes mid-epoch with the same batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Sampler

LENGTH_WINDOW = 50


class _EpochHook:
    """Lightning calls ``set_epoch`` on ``loader.batch_sampler.sampler``; this forwards it to the batch sampler."""

    def __init__(self, target: FormatBatchSampler) -> None:
        self.target = target

    def set_epoch(self, epoch: int) -> None:
        self.target.set_epoch(epoch)


class FormatBatchSampler(Sampler[list[int]]):
    """Seeded, length-grouped batches of unit indices, one format per batch or mixed, sharded by rank.

    ``batch_size``: one size for every batch, or format id -> size (one format per batch only: the
    authors gave each format its own batch size). ``max_tokens``: instead of a count, fill each batch up to
    this many tokens, padding counted (rows x the longest row rounded up to ``pad_to_multiple_of``; a row
    longer than that makes a batch alone), as fairseq's ``max_tokens``: one number, or format id -> number
    (one format per batch only); ``unit_lengths`` are then token counts. ``active(epoch)``: the unit indices
    an epoch takes (`specialight.data.mixing.EpochMix.active`; None: all). ``resume = (epoch, batches)``
    passes over the first ``batches`` of that epoch once (resuming mid-epoch); a resume into a later epoch
    (the checkpoint closed its epoch) skips nothing.
    """

    def __init__(
        self,
        unit_formats: list[int],
        unit_lengths: list[int],
        batch_size: int | dict[int, int],
        one_format_per_batch: bool = True,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        max_tokens: int | dict[int, int] | None = None,
        pad_to_multiple_of: int = 1,
        active: Callable[[int], np.ndarray] | None = None,
    ) -> None:
        self.unit_formats = np.asarray(unit_formats)
        self.unit_lengths = np.asarray(unit_lengths)
        if (isinstance(batch_size, dict) or isinstance(max_tokens, dict)) and not one_format_per_batch:
            raise ValueError("per-format batch sizes need one format per batch (one_format_per_batch=True)")
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self.multiple = max(pad_to_multiple_of, 1)
        self.one_format_per_batch = one_format_per_batch
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.active = active
        self.epoch = 0
        self.resume: tuple[int, int] | None = None
        self.sampler = _EpochHook(self)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch."""
        self.epoch = epoch

    def size_of(self, format_id: int) -> int:
        """The batch size of a format's batches (without a token budget)."""
        if isinstance(self.batch_size, dict):
            return self.batch_size[format_id]
        return self.batch_size

    def budget_of(self, format_id: int) -> int | None:
        """The token budget of a format's batches (None: a fixed count, `size_of`)."""
        if isinstance(self.max_tokens, dict):
            return self.max_tokens.get(format_id)
        return self.max_tokens

    def _padded(self, length: int) -> int:
        return -(-int(length) // self.multiple) * self.multiple

    def _cut(self, chunk: np.ndarray, budget: int | None, size: int) -> list[list[int]]:
        """``chunk`` (longest first) cut into batches of ``size`` rows, or of at most ``budget`` padded tokens."""
        if budget is None:
            return [chunk[i : i + size].tolist() for i in range(0, chunk.shape[0], size)]
        batches: list[list[int]] = []
        for unit in chunk.tolist():
            if batches and (len(batches[-1]) + 1) * self._padded(self.unit_lengths[batches[-1][0]]) <= budget:
                batches[-1].append(unit)
            else:
                batches.append([unit])
        return batches

    def _all_batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        everything = self.active(self.epoch) if self.active is not None else np.arange(self.unit_formats.shape[0])
        formats = self.unit_formats[everything]
        groups = [everything[formats == f] for f in np.unique(formats)] if self.one_format_per_batch else [everything]
        batches: list[list[int]] = []
        for group in groups:
            format_id = int(self.unit_formats[group[0]]) if group.shape[0] else 0
            budget, size = self.budget_of(format_id), self.size_of(format_id)
            if budget is not None:  # about as many rows as fit the budget at the group's median length
                size = max(1, budget // max(self._padded(np.median(self.unit_lengths[group])), 1))
            window = size * LENGTH_WINDOW
            order = rng.permutation(group) if self.shuffle else group
            for start in range(0, order.shape[0], window):
                chunk = order[start : start + window]
                batches += self._cut(chunk[np.argsort(-self.unit_lengths[chunk], kind="stable")], budget, size)
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


def token_lengths(dataset, seq2seq: bool) -> list[int]:
    """Tokens the student reads of each unit of a `specialight.data.encoding.FormattedDataset` (prompt and
    target; a seq2seq target counted beside its prompt), encoded once per distinct ``(item, format)``."""
    first: dict[tuple[int, int], int] = {}
    for unit, key in enumerate(dataset.units):
        first.setdefault(key, unit)
    read = {}
    for key, unit in first.items():
        encoded = dataset[unit]
        read[key] = len(encoded["input_ids"]) + (len(encoded["labels"]) if seq2seq else 0)
    return [read[key] for key in dataset.units]


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
