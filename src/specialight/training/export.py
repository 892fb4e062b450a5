"""``specialight export``: a training checkpoint as a standard transformers model folder, with a model card.

The folder holds the student's weights (safetensors), its config, tokenizer and generation config, so
``AutoModelForSeq2SeqLM`` / ``AutoModelForCausalLM.from_pretrained(DIR)``, ``specialight evaluate --model
DIR`` and any server that reads transformers folders load it. ``README.md`` is a model card: the base model,
the loss, the checkpoint's step, the selection table (``selection.md`` beside the checkpoint), the sha256 of
the data files the run read and the run's whole config, all as the checkpoint recorded them.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from specialight.core.models import ALIASES

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def export_checkpoint(ckpt: str | Path, out: str | Path, dtype: str | None = None, overwrite: bool = False) -> Path:
    """Write the student of ``ckpt`` (a specialight ``.ckpt``) as a transformers folder at ``out``.

    Args:
        ckpt: checkpoint written by ``specialight fit`` (``best.ckpt``, ``last.ckpt``, ...).
        out: the folder to write; it must not exist or be empty unless ``overwrite``.
        dtype: ``float32``, ``bfloat16`` or ``float16``; ``None`` keeps the trained weights' dtype.
        overwrite: replace an existing folder.

    The folder is written beside ``out`` first and moved into place whole, so a crash never leaves a
    half-written model where a loader would find it.
    """
    from specialight.core.checkpoints import load_checkpoint_student
    from specialight.core.lora import merged

    source, out = Path(ckpt), Path(out)
    if not source.exists():
        raise FileNotFoundError(f"no checkpoint at {source}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass --overwrite to replace it)")
    loaded = load_checkpoint_student(source)  # a sharded checkpoint folder is gathered into one file first
    stored, tokenizer = loaded.stored, loaded.tokenizer
    model = merged(loaded.model)  # a LoRA adapter goes into the base weights
    if dtype is not None:
        model = model.to(DTYPES[dtype])
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    card = model_card(stored, source, loaded.hparams, encoder_decoder=loaded.encoder_decoder)
    (partial / "README.md").write_text(card, encoding="utf-8")
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    partial.rename(out)
    logger.info("exported %s (step %s) to %s", source, stored.get("global_step"), out)
    return out


def base_model_id(name_or_path: str) -> str | None:
    """The hub id a run started from, or ``None`` for a local folder (not a hub id a card can link)."""
    name = ALIASES.get(name_or_path.lower(), name_or_path)
    if Path(name).expanduser().exists() or name.count("/") != 1:
        return None
    return name


def data_sha256(stored: dict[str, Any]) -> dict[str, str]:
    """The sha256 of each data file the run read: the data module's state in the checkpoint (Lightning keys
    it by the class name), or the module's own record in checkpoints written before that."""
    from specialight.data.datamodule import SpecializationDataModule

    state = stored.get(SpecializationDataModule.__qualname__) or {}
    return state.get("data_sha256") or (stored.get("specialight") or {}).get("data_sha256") or {}


def model_card(stored: dict[str, Any], ckpt: Path, hparams: dict[str, Any], encoder_decoder: bool) -> str:
    """The model card (``README.md``): metadata header, provenance, selection table, data hashes, config."""
    record = stored.get("specialight") or {}
    base = str(hparams["model_name_or_path"])
    hub_id = base_model_id(base)
    loss = hparams.get("loss") or {}
    header = ["---", "library_name: transformers"]
    if hub_id:
        header.append(f"base_model: {hub_id}")
    header += [
        f"pipeline_tag: {'text2text-generation' if encoder_decoder else 'text-generation'}",
        "tags: [specialight, chain-of-thought, distillation, math-reasoning]",
        "---",
    ]
    auto = "AutoModelForSeq2SeqLM" if encoder_decoder else "AutoModelForCausalLM"
    lines = [
        *header,
        "",
        f"# specialight student ({ckpt.parent.name}/{ckpt.name})",
        "",
        "Specialized toward multi-step math reasoning with specialight (chain-of-thought distillation in four",
        'formats, after Fu et al., "Specializing Smaller Language Models towards Multi-Step Reasoning", ICML 2023).',
        "",
        f"- base model: `{hub_id or base}`" + ("" if hub_id else " (a local folder when the run was trained)"),
        f"- loss: `{loss.get('class_path', '?')}` with `{loss.get('init_args', {})}`",
        *([f"- LoRA adapter `{hparams['peft']}`, merged into the base weights"] if hparams.get("peft") else []),
        f"- checkpoint: `{ckpt.name}`, optimizer step {stored.get('global_step', '?')}, "
        f"epoch {stored.get('epoch', '?')}",
        "",
        "```python",
        f"from transformers import {auto}, AutoTokenizer",
        f'model = {auto}.from_pretrained("PATH")',
        'tokenizer = AutoTokenizer.from_pretrained("PATH")',
        "```",
        "",
        "The prompts it was tuned on: `Q: <question>\\nLet's think step by step\\n` (chain of thought) and",
        "`Q: <question>\\n` (answer only), ` | ` for each newline where the tokenizer has none (T5); it answers",
        "with `The answer is X.`",
        "",
        "## Selection",
        "",
    ]
    from specialight.training.cli import run_folder

    selection = run_folder(ckpt) / "selection.md"  # beside best.ckpt, or above checkpoints/last.ckpt
    if selection.is_file():
        lines += [f"`{selection.name}` of the run (scores in %):", "", selection.read_text(encoding="utf-8").strip()]
    else:
        lines.append(f"No `selection.md` beside `{ckpt.name}`: the run had no ModelSelection, or had not finished.")
    lines += ["", "## Training data (sha256)", ""]
    hashes = data_sha256(stored)
    if hashes:
        lines += ["| file | sha256 |", "|---|---|"] + [f"| `{path}` | `{digest}` |" for path, digest in hashes.items()]
    else:
        lines.append("The checkpoint records no data files (it was not saved by a run with the data module).")
    lines += ["", "## Run config", ""]
    config = (record.get("config") or {}).get("yaml")
    if config:
        lines += ["```yaml", config.strip(), "```"]
    else:
        lines.append("The checkpoint records no config (the run was not started by `specialight fit`).")
    return "\n".join(lines) + "\n"
