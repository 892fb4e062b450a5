"""``specialight fit|validate|test|predict``: LightningCLI over `SpecializationModule` and its data module.

The data module's student is linked to the module's (``model.model_name_or_path``), the trainer logs to
TensorBoard under ``runs/`` by default, and the parsed config travels inside every checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from specialight.data.datamodule import SpecializationDataModule
from specialight.memory import return_freed_memory
from specialight.module import SpecializationModule


class SpecializationCLI(LightningCLI):
    """LightningCLI with the links and defaults a specialization run needs."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.model_name_or_path", "data.model_name_or_path")
        # the data module shards batches across ranks itself (FormatBatchSampler)
        parser.set_defaults({"trainer.use_distributed_sampler": False, "trainer.default_root_dir": "runs"})

    def before_instantiate_classes(self) -> None:
        self._run_config = (
            self.parser.dump(self.config, skip_none=False)
            if self.subcommand is None
            else (
                self.parser._subcommands_action._name_parser_map[self.subcommand].dump(
                    self.config[self.subcommand], skip_none=False
                )
            )
        )

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        self.model.run_config = {"yaml": self._run_config}


def run_lightning_cli(args: Sequence[str] | None = None) -> SpecializationCLI:
    """Run one LightningCLI command (``fit``, ``validate``, ...) and return the CLI object."""
    return_freed_memory()
    return SpecializationCLI(
        SpecializationModule,
        SpecializationDataModule,
        args=list(args) if args is not None else None,
        save_config_kwargs={"overwrite": True},
    )
