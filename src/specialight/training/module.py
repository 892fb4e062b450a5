"""`SpecializationModule`: the one LightningModule; every experiment is a config of it.

The student is an encoder-decoder (T5/FlanT5) or a decoder-only model (`specialight.core.models`). The loss is
a plugin (`specialight.training.losses`) chosen by ``class_path``; checkpoints store its ``{"class_path",
"init_args"}`` so ``load_from_checkpoint`` rebuilds it. AdamW, a linear warm-up from 0 (the first step at rate 0),
a cosine over the run's steps or ``cosine_horizon`` epochs' batches: the authors' ``get_cosine_schedule_with_warmup``
(`specialight.training.schedule`); with a `TimeBudget` among the callbacks the cosine also ends when the budget does.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any

import lightning as L
import torch
from jsonargparse import lazy_instance
from torch import Tensor

from specialight.core.constants import FORMATS, IGNORE_INDEX
from specialight.core.models import is_encoder_decoder, load_student
from specialight.training.losses import OutputHead, SampleMatching, SpecializationLoss
from specialight.training.progress import time_budget
from specialight.training.schedule import WarmupCosine, adamw

_LEGACY_LOSSES = "specialight.losses."


def loss_spec(loss: SpecializationLoss) -> dict[str, Any]:
    """A loss plugin as ``{"class_path", "init_args"}`` with every argument it was built with (what a
    checkpoint stores; `build_loss` rebuilds the same plugin from it)."""
    if hasattr(loss, "lazy_get_init_data"):  # a jsonargparse lazy_instance default: its own record
        data = loss.lazy_get_init_data().as_dict()
        return {"class_path": data["class_path"], "init_args": _plain(data.get("init_args", {}))}
    cls = type(loss)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": _plain(loss.init_args)}


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively, so a spec reads back the same from YAML (hparams.yaml, configs)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def build_loss(spec: SpecializationLoss | dict[str, Any]) -> SpecializationLoss:
    """The plugin itself, from an instance or a ``class_path`` spec."""
    if isinstance(spec, SpecializationLoss):
        return spec
    class_path = spec["class_path"]
    if class_path.startswith(_LEGACY_LOSSES):  # checkpoints written before the losses moved into training/
        class_path = "specialight.training.losses." + class_path.removeprefix(_LEGACY_LOSSES)
    module_name, _, class_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not issubclass(cls, SpecializationLoss):
        raise TypeError(f"{spec['class_path']} is not a SpecializationLoss")
    return cls(**spec.get("init_args", {}))


class SpecializationModule(L.LightningModule):
    """Tunes a student on `SpecializationDataModule` batches with a loss plugin.

    Args:
        model_name_or_path: student folder, hub id or alias (`specialight.core.models.resolve_model`).
        loss: `SampleMatching` (cross-entropy) or a divergence to the teacher's top-k (`DistributionMatching`...).
        learning_rate: peak AdamW learning rate (the paper: 5e-4).
        weight_decay: AdamW weight decay.
        warmup: warm-up steps (>= 1) or a fraction of all optimizer steps (< 1).
        min_lr_ratio: the cosine decays to ``learning_rate * min_lr_ratio``.
        cosine_horizon: None: the cosine reaches its floor at the run's last optimizer step; a number n: it
            reaches it after n times one epoch's training batches, counted in optimizer steps (the authors'
            ``get_cosine_schedule_with_warmup(num_training_steps=10 * len(train_batches))`` with
            ``len(train_batches)`` the micro-batches of one epoch: n = 10, so over 2-3 epochs the rate stays
            near its peak). Either way a `TimeBudget` callback that runs out first ends the cosine
            (`WarmupCosine`).
        gradient_checkpointing: trade compute for activation memory (per transformer block).
        shard_param_dtype: under `ModelParallelStrategy`, the dtype sharded blocks compute in (``bfloat16``;
            gradients are reduced in fp32; ``null`` keeps fp32). Ignored without a device mesh.
        peft: train a LoRA adapter instead of the whole student: ``{r, alpha, dropout, target_modules}``
            (`specialight.core.lora`; not combined with sharding yet).

    The student is built in `configure_model` (called by the trainer and by ``load_from_checkpoint``), so under
    a sharding strategy each rank only ever holds its shards (`specialight.training.sharding`).
    """

    def __init__(
        self,
        model_name_or_path: str,
        loss: SpecializationLoss = lazy_instance(SampleMatching),
        learning_rate: float = 5e-4,
        weight_decay: float = 0.0,
        warmup: float = 0.0,
        min_lr_ratio: float = 0.0,
        cosine_horizon: float | None = None,
        gradient_checkpointing: bool = False,
        shard_param_dtype: str | None = "bfloat16",
        peft: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if cosine_horizon is not None and cosine_horizon <= 0:
            raise ValueError(f"model.cosine_horizon must be positive (epochs of batches), got {cosine_horizon}")
        spec = loss if isinstance(loss, dict) else loss_spec(loss)
        self.loss = build_loss(spec)  # a fresh plugin per module, never a shared default instance
        self.save_hyperparameters(ignore=["loss"])
        self.hparams["loss"] = spec
        self.model: torch.nn.Module | None = None
        self.encoder_decoder = is_encoder_decoder(model_name_or_path)
        self._chunked = True
        self._keeps_logits = False
        self.run_config: dict[str, Any] | None = None
        # read by Lightning's ThroughputMonitor (the configs' tokens per second); None: FLOPs not measured
        self.flops_per_batch: int | None = None

    def configure_model(self) -> None:
        """Build the student (once): sharded over the strategy's device mesh if it has one, else whole."""
        if self.model is not None:
            return
        hp = self.hparams
        mesh = self._device_mesh
        if mesh is not None and hp.peft:
            raise ValueError("model.peft (LoRA) is not supported under a sharding strategy yet; use DDP or one device")
        if mesh is not None:
            from specialight.training.sharding import load_sharded_student

            model = load_sharded_student(
                hp.model_name_or_path,
                mesh["data_parallel"] if mesh.mesh_dim_names and "data_parallel" in mesh.mesh_dim_names else mesh,
                self.device,
                hp.shard_param_dtype,
                hp.gradient_checkpointing,
            )
        else:
            model = load_student(hp.model_name_or_path)
            if hp.gradient_checkpointing:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hp.peft:
                from specialight.core.lora import apply_lora

                model = apply_lora(model, dict(hp.peft))
        self.model = model.train()  # from_pretrained returns eval mode
        # the chunked losses read the trunk's hidden states and the output layer directly; a sharded student
        # must run its forward through FSDP's root and a LoRA one through peft's wrapper: whole logits there
        self._chunked = mesh is None and not hp.peft
        if self._chunked:
            self._check_output_head()
        base = self.model.get_base_model() if hp.peft else self.model
        self._keeps_logits = "logits_to_keep" in inspect.signature(base.forward).parameters

    def setup(self, stage: str) -> None:
        # without a data module (plain dataloaders) the loss itself checks each batch; on-policy rows carry their own
        sources = [getattr(self.trainer, "datamodule", None), *self.trainer.callbacks]
        if self.loss.needs_teacher_distributions and sources[0] is not None:
            flags = ("has_teacher_distributions", "supplies_teacher_distributions")
            if not any(getattr(source, flag, False) for source in sources for flag in flags):
                raise ValueError(
                    f"{type(self.loss).__name__} needs teacher top-k targets: set data.teacher_data to a folder "
                    "written by `specialight align`, add on-policy training, or use SampleMatching"
                )

    def _first_prediction(self, batch: dict[str, Tensor]) -> int:
        """Decoder-only: the first position whose hidden state predicts a label (the shortest prompt's last
        token). Positions before it are never scored, so `forward` drops them before the loss."""
        scored = (batch["labels"] != IGNORE_INDEX).any(dim=0).nonzero()
        return max(int(scored[0]) - 1, 0) if scored.numel() else 0

    def output_head(self) -> OutputHead:
        """The student's output layer (weight, bias, final logit soft-capping) for the chunked losses."""
        layer = self.model.get_output_embeddings()
        softcap = getattr(self.model.config, "final_logit_softcapping", None)
        return OutputHead(layer.weight, getattr(layer, "bias", None), softcap)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, OutputHead]:
        """Final hidden states aligned with `targets`, ``[B, T, D]`` (decoder-only: shifted by one, from the
        first scored position on), and the output layer that turns them into logits.

        The logits ``[B, T, V]`` are never built here: the loss projects its positions chunk by chunk."""
        if self.encoder_decoder:
            encoded = self.model.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            hidden = self.model.get_decoder()(
                input_ids=self.model.prepare_decoder_input_ids_from_labels(labels=batch["labels"]),
                encoder_hidden_states=encoded.last_hidden_state,
                encoder_attention_mask=batch["attention_mask"],
                use_cache=False,
            ).last_hidden_state
            config = self.model.config
            # T5 with tied embeddings rescales before its lm_head (transformers 5: scale_decoder_outputs)
            if getattr(config, "scale_decoder_outputs", getattr(config, "tie_word_embeddings", False)):
                hidden = hidden * config.d_model**-0.5
            return hidden, self.output_head()
        start = self._first_prediction(batch)
        hidden = self.model.base_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state
        return hidden[:, start:-1], self.output_head()

    def targets(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The batch's label-side tensors aligned with `forward`'s hidden states."""
        if self.encoder_decoder:
            return batch
        start = self._first_prediction(batch) + 1
        shifted = {key: batch[key][:, start:] for key in ("labels", "topk_ids", "topk_probs") if key in batch}
        return {**batch, **shifted}

    def logits(self, batch: dict[str, Tensor]) -> Tensor:
        """Whole logits aligned with `targets`, ``[B, T, V]``, from the student's own forward (the path of
        sharded and LoRA students; decoder-only: from the first scored position on, ``logits_to_keep`` where
        the model takes it)."""
        if self.encoder_decoder:
            decoder_input_ids = self.model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
            return self.model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                decoder_input_ids=decoder_input_ids,
            ).logits
        length = batch["input_ids"].shape[1] - self._first_prediction(batch)
        keep = {"logits_to_keep": length} if self._keeps_logits else {}
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **keep).logits
        return logits[:, -length:-1]

    def batch_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """The loss plugin's value on ``batch`` (train, validation and test alike); scalar."""
        if not self._chunked:
            return self.loss.from_logits(self.logits(batch), self.targets(batch))
        hidden, head = self(batch)
        return self.loss(hidden, head, self.targets(batch))

    def _check_output_head(self) -> None:
        """Refuse a student whose logits are not `output_head` of `forward`'s hidden states (an output
        scale or offset this module does not know), on a 3-token input."""
        ids = torch.arange(1, 4).remainder(self.model.config.vocab_size).unsqueeze(0)  # [1, 3]
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
        training = self.model.training
        self.model.eval()
        with torch.no_grad():
            hidden, head = self(batch)
            ours = head.logits(hidden)
            if self.encoder_decoder:
                decoder_ids = self.model.prepare_decoder_input_ids_from_labels(labels=ids)
                reference = self.model(input_ids=ids, decoder_input_ids=decoder_ids).logits
            else:
                reference = self.model(input_ids=ids).logits[:, :-1]
        self.model.train(training)
        scale = float(reference.abs().max().clamp_min(1e-6))
        if ours.shape != reference.shape or not torch.allclose(ours, reference, rtol=1e-2, atol=1e-2 * scale):
            raise ValueError(
                f"{type(self.model).__name__}: its logits are not its output layer applied to its final hidden "
                "states (an output scale or offset specialight does not know), so the chunked losses cannot "
                "train it; supported: T5/FlanT5 and decoder-only models with a plain lm_head (bias and final "
                "logit soft-capping included)"
            )

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.batch_loss(batch)
        size = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        if (mass := self.loss.teacher_topk_mass(self.targets(batch))) is not None:  # the top-k's share of the teacher
            self.log("train/teacher_topk_mass", mass, batch_size=size)
        formats = batch["format_ids"].unique()
        if formats.numel() == 1:
            self.log(f"train/loss_{FORMATS[int(formats)]}", loss, batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.batch_loss(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0], sync_dist=True)
        return loss

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.batch_loss(batch)
        self.log("test/loss", loss, batch_size=batch["input_ids"].shape[0], sync_dist=True)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        decay = [p for n, p in self.model.named_parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.requires_grad and p.ndim < 2]
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = adamw(groups, hp.learning_rate)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(hp.warmup) if hp.warmup >= 1 else int(hp.warmup * total)
        if hp.cosine_horizon is not None:
            # estimated_stepping_batches has set up the training data: num_training_batches is one epoch's
            total = max(int(hp.cosine_horizon * self.trainer.num_training_batches), warmup + 1)
        budget = time_budget(self.trainer)
        spent = functools.partial(budget.spent, self.trainer) if budget is not None else None
        scheduler = WarmupCosine(optimizer, warmup, total, hp.min_lr_ratio, spent)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the run's config beside the weights (the data module stores the data's sha256 itself)."""
        checkpoint["specialight"] = {"config": self.run_config}
