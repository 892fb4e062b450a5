"""Test-only Lightning callbacks (importable by class_path from subprocess runs)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import lightning as L

from specialight.training.losses import SampleMatching


class RecordSteps(L.Callback):
    """Append ``{"rank", "step", "units", "loss"}`` per training batch to ``<out>/rank<r>.jsonl``."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        record = {
            "rank": trainer.global_rank,
            "step": trainer.global_step,
            "units": batch["units"].tolist(),
            "loss": float(outputs["loss"]),
        }
        with (self.out / f"rank{trainer.global_rank}.jsonl").open("a") as handle:
            handle.write(json.dumps(record) + "\n")


class StopAt(L.Callback):
    """At the end of optimizer step ``step``: SIGKILL this very process (``how="kill"``, a crash nothing can
    catch) or raise ``RuntimeError`` (``how="raise"``)."""

    def __init__(self, step: int, how: str = "kill") -> None:
        self.step = step
        self.how = how

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"stopped at step {self.step}")


def tiny_llama(vocabulary: int, attention: str = "sdpa"):
    """A seeded 2-layer Llama with grouped key/value heads (4 query, 2 key/value), in eval mode; large
    initial weights, so that rows differing in their prompt's end differ in their completion."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocabulary,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        initializer_range=0.5,
    )
    config._attn_implementation = attention
    return LlamaForCausalLM(config).eval()


def read_steps(out: str | Path, rank: int = 0) -> list[dict]:
    path = Path(out) / f"rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def quiet_trainer(max_steps: int, callbacks=(), **overrides) -> L.Trainer:
    """A CPU trainer for tests: no logger, checkpoints, progress bar, summary or validation."""
    options = dict(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
        callbacks=list(callbacks),
    )
    return L.Trainer(**(options | overrides))


def align_and_fit(samples: Path, out: Path, student_dir: Path, data_dir: Path, steps: int = 3):
    """Teacher samples -> `specialight align` (T5 tokenizer) -> `steps` of distribution matching on a tiny T5.

    Returns the alignment summary and the trainer."""
    from specialight.align.run import run_align
    from specialight.align.settings import AlignSettings
    from specialight.data.datamodule import SpecializationDataModule
    from specialight.training.losses import DistributionMatching
    from specialight.training.module import SpecializationModule
    from tests.conftest import TOKENIZERS

    summary = run_align(samples, out, AlignSettings(str(TOKENIZERS / "t5")))
    datamodule = SpecializationDataModule(
        str(student_dir),
        teacher_data=str(out),
        data_dir=str(data_dir),
        only_correct=False,
        batch_size=2,
        num_demonstrations=1,
    )
    trainer = quiet_trainer(steps)
    trainer.fit(SpecializationModule(str(student_dir), loss=DistributionMatching()), datamodule)
    return summary, trainer


class ScaledSampleMatching(SampleMatching):
    """A loss plugin with init args of its own (to test that checkpoints keep them all)."""

    def __init__(self, scale: float = 1.0, note: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.scale = scale
        self.note = note

    def per_token(self, logits, batch, labels):
        return self.scale * super().per_token(logits, batch, labels)
