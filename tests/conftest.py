"""Shared fixtures: the real offline data and tokenizers from ../shared, tiny random models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA_DIR = Path(os.environ.get("SPECIALIGHT_DATA_DIR", SHARED / "data"))
TOKENIZERS = Path(os.environ.get("SPECIALIGHT_TOKENIZERS", SHARED / "tokenizers"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The benchmark folder (shared/data, or $SPECIALIGHT_DATA_DIR)."""
    return DATA_DIR


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """The real GPT-2 byte-level BPE tokenizer (teacher side)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZERS / "gpt2")


@pytest.fixture(scope="session")
def t5_tokenizer():
    """The real T5 / Flan-T5 SentencePiece tokenizer (student side)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZERS / "t5")
