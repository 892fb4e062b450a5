"""Aligning two surface sequences: which method a pair takes (the DP or exact offsets), and the path."""

from __future__ import annotations

import numpy as np

from specialight.align.dp import align_surfaces
from specialight.align.markers import surfaces
from specialight.align.offsets import common_text, offsets_path

METHODS = ("dp", "offsets", "auto")


def choose_method(source: list[str], target: list[str], method: str = "dp", separator: str | None = None) -> str:
    """The aligner ``method`` takes for these two surface sequences: ``dp`` or ``offsets``.

    ``auto`` takes the offsets aligner where both spell the same text (the source's newlines read as
    ``separator``, the student's newline stand-in) and the dynamic program elsewhere.
    """
    if method not in METHODS:
        raise ValueError(f"unknown alignment method {method!r}; known: {', '.join(METHODS)}")
    if method == "auto":
        return "offsets" if common_text(source, target, separator) else "dp"
    return method


def align_path(source: list[str], target: list[str], method: str = "dp", separator: str | None = None) -> np.ndarray:
    """Aligned ``(i, j)`` pairs of two *surface* sequences, shape ``[path_length, 2]`` (see `choose_method`)."""
    if choose_method(source, target, method, separator) == "dp":
        return align_surfaces(source, target)
    return offsets_path(source, target, separator)


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
