"""`AlignSettings`: the options of ``specialight align`` (no heavy imports, so the CLI's help stays instant)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class AlignSettings:
    """What `align_sample` needs besides the sample; picklable for worker processes.

    Args:
        student_tokenizer: student tokenizer: a local folder or a hub id.
        method: auto: exact offsets where both spell the same text, the paper's DP elsewhere.
        teacher_scheme: how the teacher's token strings are written (API samples: text).
        top_k: teacher alternatives kept per position.
        tail: mass outside the top-k: zero (the paper) or renormalize.
        max_length: drop samples with more student tokens (255: the data module's max_target_length of 256
            less EOS).
        only_correct: keep only samples whose answer is correct.
        data_dir: benchmark folder whose GSM8K questions the samples answer (default: $SPECIALIGHT_DATA_DIR
            or ./data).
    """

    student_tokenizer: str
    method: Literal["auto", "dp", "offsets"] = "auto"
    teacher_scheme: Literal["text", "byte_level", "sentencepiece", "auto"] = "text"
    top_k: int = 5
    tail: Literal["zero", "renormalize"] = "zero"
    max_length: int = 255
    only_correct: bool = False
    data_dir: str | None = None
