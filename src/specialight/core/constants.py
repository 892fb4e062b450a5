"""Names and values every layer shares: the data formats, the label that is never scored, and the file names
that pass between stages. Nothing here imports torch, Lightning or pyarrow."""

from __future__ import annotations

# the paper's four data formats, in the order `format_ids` index them in a batch
FORMATS: tuple[str, ...] = (
    "in_context_answer_only",
    "in_context_cot",
    "zero_shot_answer_only",
    "zero_shot_cot",
)
IGNORE_INDEX = -100  # a label position no loss scores (prompt, padding)
EVALUATIONS_FILE = "evaluations.jsonl"  # one record per evaluation, in a run folder
TARGETS_FILE = "targets.arrow"  # `specialight align`'s aligned targets, in its output folder
