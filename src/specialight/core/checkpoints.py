"""Reading a specialight training checkpoint without Lightning's module: the student's weights, its
hyper-parameters and what the run recorded, for evaluation and export (which never import `training`).

A checkpoint is a file written by ``specialight fit`` (``best.ckpt``, ``last.ckpt``) or the folder of a
sharded one (a ``.distcp`` file per rank and ``meta.pt``), which `consolidated` gathers once into one file.
Files are read with ``weights_only=True``: a checkpoint that needs arbitrary pickled objects is refused with
one line, never run.
"""

from __future__ import annotations

import logging
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from specialight.core.errors import DataError

logger = logging.getLogger(__name__)
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
MODEL_PREFIX = "model."  # `SpecializationModule` holds the student as ``self.model``


@dataclass
class StudentCheckpoint:
    """A loaded checkpoint: the student (eval mode, LoRA adapter applied where the run trained one), its
    tokenizer, the module's hyper-parameters and the whole stored dictionary (step, run config, data hashes)."""

    model: torch.nn.Module
    tokenizer: Any
    hparams: dict[str, Any]
    stored: dict[str, Any]

    @property
    def encoder_decoder(self) -> bool:
        return bool(getattr(self.model.config, "is_encoder_decoder", False))


def read_checkpoint(ckpt: str | Path) -> dict[str, Any]:
    """The stored dictionary of a checkpoint file or sharded folder; `DataError` (one line) for a missing
    file or one that is no safe torch checkpoint."""
    ckpt = Path(ckpt)
    if not ckpt.exists():
        raise FileNotFoundError(f"{ckpt}: no such checkpoint file")
    path = consolidated(ckpt)
    try:
        with warnings.catch_warnings():  # torch warns of a pickle protocol before refusing the file
            warnings.simplefilter("ignore", UserWarning)
            return _load_weights_only(path)
    except pickle.UnpicklingError as err:
        raise DataError(f"{ckpt}: refused: {_refusal(str(err))}; re-save it with `specialight fit`") from None
    except (RuntimeError, EOFError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{ckpt}: not a torch checkpoint file ({first[:160]})") from None


def _load_weights_only(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as err:  # the legacy (non-zip) format cannot be memory-mapped
        if "zipfile" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def _refusal(message: str) -> str:
    """Why torch's weights-only load refused a file, in a clause (its own message is a page of advice)."""
    found = _UNSAFE_GLOBAL.search(message)
    if found:
        return f"it holds a pickled {found.group(1)}, which a weights-only load does not run"
    return "it is no weights-only torch checkpoint (a plain pickle, or objects a weights-only load does not run)"


def load_checkpoint_student(ckpt: str | Path, device: str = "cpu") -> StudentCheckpoint:
    """The student of a specialight checkpoint: the base model the run named, its LoRA adapter where the run
    trained one, and the checkpoint's weights on top (strict: every weight must match)."""
    from specialight.core.lora import apply_lora
    from specialight.core.models import load_student, load_tokenizer

    stored = read_checkpoint(ckpt)
    hparams = dict(stored.get("hyper_parameters") or {})
    if "model_name_or_path" not in hparams or "state_dict" not in stored:
        raise DataError(f"{ckpt}: not a specialight checkpoint (no model_name_or_path or state_dict)")
    model = load_student(hparams["model_name_or_path"])
    if hparams.get("peft"):
        model = apply_lora(model, dict(hparams["peft"]))
    state = {k[len(MODEL_PREFIX) :]: v for k, v in stored["state_dict"].items() if k.startswith(MODEL_PREFIX)}
    model.load_state_dict(state, strict=True)
    tokenizer = load_tokenizer(hparams["model_name_or_path"])
    return StudentCheckpoint(model.to(device).eval(), tokenizer, hparams, stored)


def consolidated(ckpt: str | Path) -> Path:
    """A checkpoint as one file for loading weights (export, evaluation): a sharded checkpoint folder (a
    ``.distcp`` file per rank and ``meta.pt``) is gathered once into ``<folder>.consolidated`` beside it,
    without the optimizer state (resume from the folder itself); a checkpoint file comes back as it is."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        return ckpt
    meta = ckpt / "meta.pt"
    if not meta.is_file():
        raise FileNotFoundError(f"{ckpt} is a folder but not a sharded checkpoint (it has no meta.pt)")
    out = ckpt.with_name(ckpt.name + ".consolidated")
    if not out.is_file() or out.stat().st_mtime < meta.stat().st_mtime:
        from lightning.fabric.utilities.load import _load_distributed_checkpoint

        logger.info("consolidating the sharded checkpoint %s into %s", ckpt, out)
        checkpoint = _load_distributed_checkpoint(ckpt)
        if "model" in checkpoint:  # FSDPStrategy's layout names the weights "model"
            checkpoint["state_dict"] = checkpoint.pop("model")
        checkpoint = {key: value for key, value in checkpoint.items() if not key.startswith("optimizer_")}
        partial = out.with_name(out.name + ".partial")
        torch.save(checkpoint, partial)
        partial.replace(out)
    return out
