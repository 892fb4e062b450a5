"""``specialight fit|validate|test|predict``: LightningCLI over `SpecializationModule` and its data module.

The data module's student is linked to the module's (``model.model_name_or_path``), the trainer logs to
TensorBoard under ``runs/`` by default, and the parsed config travels inside every checkpoint.

``validate --config C --ckpt_path P`` reports the teacher-forced loss on GSM8K dev and, through the config's
`PeriodicEvaluation`, runs its suites once on the checkpoint: ``eval/<suite>`` in Lightning's results, a
record in the run folder's ``evaluations.jsonl`` (counts and 95% intervals, the checkpoint's step) and the
completions under ``evaluations/step-<N>/``. A config's ``trainer.limit_val_batches: 0`` (the loss kept out
of ``fit``) is read as every batch here.

Resuming after a crash: unless a config turns checkpointing off (``trainer.enable_checkpointing: false``)
or brings its own ``ModelCheckpoint``, ``fit`` keeps ``<run>/checkpoints/last.ckpt``, written every
``checkpoint_every_n_steps`` optimizer steps, when training raises and when it ends. ``fit --ckpt_path
last`` picks the newest ``last.ckpt`` or ``best.ckpt`` (`ModelSelection`'s, written after an evaluation,
possibly after the last ``last.ckpt``) under ``trainer.default_root_dir`` or the logger's ``save_dir`` (a
fresh start, with a warning, when there is none), and a resumed run goes on writing in the checkpoint's
own run folder (TensorBoard or CSV logger), so its ``evaluations.jsonl``, ``best.ckpt`` and
``selection.md`` continue where they were.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import Namespace
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from specialight.core.memory import return_freed_memory
from specialight.data.datamodule import SpecializationDataModule
from specialight.training.module import SpecializationModule

logger = logging.getLogger(__name__)

CHECKPOINT_EVERY_N_STEPS = 100
_TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"


class LastCheckpoint(ModelCheckpoint):
    """Lightning's `ModelCheckpoint` keeping only ``<run>/checkpoints/last.ckpt``, overwritten in place: every
    ``every_n_train_steps`` optimizer steps, when training raises, and when it ends (best.ckpt is
    `ModelSelection`'s)."""

    def __init__(self, every_n_train_steps: int) -> None:
        super().__init__(
            save_last=True,
            save_top_k=0,
            every_n_train_steps=every_n_train_steps,
            save_on_exception=True,
            enable_version_counter=False,
        )
        self.every = every_n_train_steps

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step % self.every or not self.last_model_path:
            trainer.save_checkpoint(self.last_model_path or Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}.ckpt")


class StreamingCheckpointIO(TorchCheckpointIO):
    """Lightning's `TorchCheckpointIO`, but a local checkpoint is written by `torch.save` straight into a
    temporary file beside it, renamed over it once whole: as atomic as Lightning's, without its in-memory copy
    of the whole checkpoint (``_atomic_save`` serializes into a ``BytesIO`` first: weights and optimizer state
    again, +1.6 GB for SmolLM2-135M, which was `make demo`'s peak). Other filesystems go Lightning's way."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        where = str(path)
        if storage_options is not None or ("://" in where and not where.startswith("file://")):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(where.removeprefix("file://"))
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        try:
            torch.save(checkpoint, partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)


def find_resumable(root: str | Path, names: Sequence[str] = ("last.ckpt", "best.ckpt")) -> Path | None:
    """The newest checkpoint named one of ``names`` under ``root`` (a file, or a sharded checkpoint's folder),
    or ``None``.

    ``best.ckpt`` (`ModelSelection`'s) is a whole trainer checkpoint too, written right after its evaluation:
    after a crash it can be newer than ``last.ckpt``, and resuming from the older one would redo that
    evaluation with ``best.ckpt`` already holding its weights."""
    found = [
        path for name in names for path in Path(root).rglob(name) if path.is_file() or (path / "meta.pt").is_file()
    ]
    return max(found, key=lambda path: path.stat().st_mtime) if found else None


def search_roots(trainer: Namespace) -> list[str]:
    """Where a trainer config's runs live: ``default_root_dir`` and each logger's ``save_dir``."""
    roots = [str(trainer.get("default_root_dir") or ".")]
    given = trainer.get("logger")
    for spec in given if isinstance(given, list) else [given]:
        if isinstance(spec, Namespace) and spec.get("init_args") and spec.init_args.get("save_dir"):
            roots.append(str(spec.init_args.save_dir))
    return list(dict.fromkeys(roots))


def _keeps_folders(class_path: str | None) -> bool:
    """Whether a logger class writes to ``<save_dir>/<name>/<version>`` (TensorBoard, CSV, their subclasses)."""
    if not class_path:
        return False
    module_name, _, class_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    return isinstance(cls, type) and issubclass(cls, (TensorBoardLogger, CSVLogger))


def run_folder(ckpt: Path) -> Path:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/last.ckpt`` or ``<run>/best.ckpt``)."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


class SpecializationCLI(LightningCLI):
    """LightningCLI with the links and defaults a specialization run needs."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.model_name_or_path", "data.model_name_or_path")
        # the data module shards batches across ranks itself (FormatBatchSampler)
        parser.set_defaults({"trainer.use_distributed_sampler": False, "trainer.default_root_dir": "runs"})
        parser.add_argument(
            "--checkpoint_every_n_steps",
            type=int,
            default=CHECKPOINT_EVERY_N_STEPS,
            help="fit keeps <run>/checkpoints/last.ckpt every N optimizer steps, on exception and at the end "
            "(0: Lightning's default checkpointing instead; trainer.enable_checkpointing: false: none)",
        )
        parser.add_argument(
            "--auto_precision",
            type=bool,
            default=False,
            help="true: trainer.precision becomes bf16-mixed where the device multiplies bf16 natively (a CUDA "
            "GPU with bf16, a CPU with avx512_bf16 or AMX), else 32-true (the run's config.yaml keeps the choice)",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        # before LightningCLI reads the checkpoint's hyperparameters, which it does for a path only
        config = self.config.get(self.config.get("subcommand") or "", self.config)
        if config.get("ckpt_path") == "last":
            roots = search_roots(config["trainer"])
            found = max(filter(None, map(find_resumable, roots)), key=lambda p: p.stat().st_mtime, default=None)
            if found is None:
                logger.warning(
                    "--ckpt_path last: no last.ckpt or best.ckpt under %s; starting from scratch", " or ".join(roots)
                )
            else:
                logger.info("--ckpt_path last: resuming from %s", found)
            config["ckpt_path"] = str(found) if found else None

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("auto_precision"):
            config["trainer"]["precision"] = native_precision(config["trainer"].get("accelerator"))
            logger.info("auto_precision: trainer.precision %s", config["trainer"]["precision"])
        if self.subcommand == "fit" and self.config["fit"].get("ckpt_path"):
            self._continue_in(run_folder(Path(self.config["fit"]["ckpt_path"])))
        if self.subcommand == "validate" and self.config["validate"]["trainer"].get("limit_val_batches") == 0:
            # the configs' 0 keeps the loss out of fit; validate asked for it (and for PeriodicEvaluation's suites)
            logger.info("validate: trainer.limit_val_batches 0 is fit's setting; validating on every batch")
            self.config["validate"]["trainer"]["limit_val_batches"] = None
        self._run_config = (
            self.parser.dump(self.config, skip_none=False)
            if self.subcommand is None
            else (
                self.parser._subcommands_action._name_parser_map[self.subcommand].dump(
                    self.config[self.subcommand], skip_none=False
                )
            )
        )

    def _continue_in(self, run: Path) -> None:
        """Point a TensorBoard or CSV logger (or Lightning's default one) at the resumed run's folder."""
        trainer = self.config["fit"]["trainer"]
        root_dir = Path(trainer.get("default_root_dir") or ".")
        given = trainer.get("logger")
        if given is False:  # no logger: the run's files are in default_root_dir already
            return
        if given is None or given is True:
            spec = {"class_path": _TENSORBOARD, "init_args": {"save_dir": str(root_dir), "name": "lightning_logs"}}
        elif isinstance(given, Namespace) and _keeps_folders(given.get("class_path")):
            spec = given.as_dict()
        else:
            logger.warning("resuming with logger %s: its files go to a new folder, not %s", given, run)
            return
        init = spec["init_args"]
        parent = Path(init.get("save_dir") or root_dir) / (init.get("name") or "")
        if parent.resolve() != run.parent.resolve():
            logger.warning("the checkpoint's run folder %s is not under the logger's %s: a new folder", run, parent)
            return
        init["version"] = run.name
        self.config = self.parser.parse_object({"fit": {"trainer": {"logger": spec}}}, self.config)

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        self.model.run_config = {"yaml": self._run_config}
        trainer = self.trainer
        if trainer.strategy.root_device.type == "cpu" and "bf16" in str(trainer.precision) and not cpu_has_bf16():
            logger.warning(
                "precision %s on a CPU without bf16 instructions (avx512_bf16, AMX): bf16 matrix products are "
                "emulated, and a training step measured 2.8x slower than fp32 (benchmarks/cpu_precision.py); "
                "--trainer.precision=32-true is faster here",
                trainer.precision,
            )

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The trainer, writing checkpoints with `StreamingCheckpointIO` unless the config brings plugins; when
        fitting, with `LastCheckpoint` unless the config brings a ``ModelCheckpoint``."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer = config["trainer"]
        if trainer.get("plugins") is None and "plugins" not in kwargs:
            kwargs["plugins"] = [StreamingCheckpointIO()]
        if self.subcommand == "fit" and trainer.get("enable_checkpointing") is not False:
            callbacks = list(kwargs.get("callbacks", trainer.get("callbacks") or []))
            every = config.get("checkpoint_every_n_steps") or 0
            if every > 0 and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
                callbacks.append(LastCheckpoint(every))
            kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)


def cpu_has_bf16() -> bool:
    """Whether this CPU reports bf16 instructions (Linux ``/proc/cpuinfo``; True where it cannot tell)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return True
    flags = cpuinfo.read_text().split()
    return any("bf16" in flag or flag.startswith("amx") for flag in flags)


def native_precision(accelerator: str | None) -> str:
    """``bf16-mixed`` where ``accelerator`` (``auto``, ``cpu``, ``gpu``/``cuda``) multiplies bf16 natively
    (measured on an AVX-512 bf16 CPU: a training step 1.43x faster than fp32, generation 1.37x), else ``32-true``."""
    import torch

    on_gpu = accelerator in ("gpu", "cuda") or (accelerator in (None, "auto") and torch.cuda.is_available())
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    known = Path("/proc/cpuinfo").is_file()  # elsewhere (macOS, an MPS device) fp32: nothing says bf16 is native
    return "bf16-mixed" if accelerator in (None, "auto", "cpu") and known and cpu_has_bf16() else "32-true"


def run_lightning_cli(args: Sequence[str] | None = None) -> SpecializationCLI:
    """Run one LightningCLI command (``fit``, ``validate``, ...) and return the CLI object."""
    return_freed_memory()
    return SpecializationCLI(
        SpecializationModule,
        SpecializationDataModule,
        args=list(args) if args is not None else None,
        save_config_kwargs={"overwrite": True},
    )
