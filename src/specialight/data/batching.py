"""Batches of one epoch: the seeded, length-grouped, rank-sharded batch sampler and the DataLoader that
Lightning saves and restores, so ``fit --ckpt_path`` resumes mid-epoch with the same batches."""

from __future__ import annotations

from collections.abc import Iterator

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
    authors gave each format its own batch size). ``resume = (epoch, batches)`` passes over the first
    ``batches`` of that epoch once (resuming mid-epoch); a resume into a later epoch (the checkpoint closed
    its epoch) skips nothing.
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
    ) -> None:
        self.unit_formats = np.asarray(unit_formats)
        self.unit_lengths = np.asarray(unit_lengths)
        if isinstance(batch_size, dict) and not one_format_per_batch:
            raise ValueError("per-format batch sizes need one format per batch (one_format_per_batch=True)")
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

    def size_of(self, format_id: int) -> int:
        """The batch size of a format's batches."""
        if isinstance(self.batch_size, dict):
            return self.batch_size[format_id]
        return self.batch_size

    def _all_batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        everything = np.arange(self.unit_formats.shape[0])
        groups = (
            [everything[self.unit_formats == f] for f in np.unique(self.unit_formats)]
            if self.one_format_per_batch
            else [everything]
        )
        batches: list[list[int]] = []
        for group in groups:
            size = self.size_of(int(self.unit_formats[group[0]])) if group.shape[0] else 1
            window = size * LENGTH_WINDOW
            order = rng.permutation(group) if self.shuffle else group
            for start in range(0, order.shape[0], window):
                chunk = order[start : start + window]
                chunk = chunk[np.argsort(-self.unit_lengths[chunk], kind="stable")]
                batches += [chunk[i : i + size].tolist() for i in range(0, chunk.shape[0], size)]
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
