"""Tokenizer alignment (the paper's dynamic program; exact offsets) and teacher-to-student projection."""

from __future__ import annotations

import numpy as np

from specialight.align.dp import align_surfaces
from specialight.align.markers import surfaces
from specialight.align.offsets import common_text, offsets_path

METHODS = ("dp", "offsets", "auto")


def align_path(source: list[str], target: list[str], method: str = "dp") -> np.ndarray:
    """Aligned ``(i, j)`` pairs of two *surface* sequences, shape ``[path_length, 2]``.

    ``auto`` uses the offsets aligner where both spell the same text and the dynamic program elsewhere.
    """
    if method == "dp" or (method == "auto" and not common_text(source, target)):
        return align_surfaces(source, target)
    if method in ("offsets", "auto"):
        return offsets_path(source, target)
    raise ValueError(f"unknown alignment method {method!r}; known: {', '.join(METHODS)}")


def align_tokens(
    source_tokens: list[str],
    target_tokens: list[str],
    method: str = "dp",
    source_scheme: str = "auto",
    target_scheme: str = "auto",
) -> list[tuple[int, int]]:
    """Align two token sequences; returns the whole path of ``(source, target)`` index pairs in order.

    Token strings may be raw pieces (``Ġ42``, ``▁4``) or surface text; their markers are undone first
    (`specialight.align.markers`, schemes detected unless given).
    """
    path = align_path(surfaces(source_tokens, source_scheme), surfaces(target_tokens, target_scheme), method)
    return [(int(i), int(j)) for i, j in path]


__all__ = ["METHODS", "align_path", "align_tokens"]
