"""The aligned-targets file that `specialight align` writes and the data module reads: its Arrow schema and
its reader (``targets.arrow``, an Arrow IPC stream, one row per kept teacher sample).

Columns: ``question_id``, ``sample_index``, ``text`` (the sample as the student sees it), ``answer``,
``correct``, ``top_k`` (the teacher's k), ``target_width`` (``top_k + 1``: the top-k and a slot for the
sampled token), ``input_ids`` ``[L]``, ``topk_ids`` and ``topk_probs`` ``[L * target_width]`` (row-major),
``target_kind`` ``[L]`` (index into `specialight.align.project.KINDS`), ``method`` (the aligner the sample
took).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from specialight.core.constants import TARGETS_FILE

SCHEMA = pa.schema(
    [
        ("question_id", pa.string()),
        ("sample_index", pa.int32()),
        ("text", pa.string()),
        ("answer", pa.string()),
        ("correct", pa.bool_()),
        ("top_k", pa.int32()),
        ("target_width", pa.int32()),
        ("input_ids", pa.list_(pa.int32())),
        ("topk_ids", pa.list_(pa.int32())),
        ("topk_probs", pa.list_(pa.float32())),
        ("target_kind", pa.list_(pa.int8())),
        ("method", pa.string()),
    ]
)


def has_targets(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds aligned targets."""
    return (Path(folder) / TARGETS_FILE).is_file()


def load_targets(folder: str | os.PathLike):
    """The aligned targets as a memory-mapped `datasets.Dataset`."""
    from datasets import Dataset

    path = Path(folder) / TARGETS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no aligned targets at {path} (run `specialight align ... --out {folder}` first)")
    return Dataset.from_file(str(path))
