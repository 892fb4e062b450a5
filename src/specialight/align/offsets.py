"""Exact alignment by character offsets, for two tokenizations of the same text: O(n + m + characters).

Each character of the text is owned by one token on each side; the pairs of owners, in text order, are
the alignment. Tokens with no characters (a bare ``▁``, special tokens) own nothing and are stepped over
one at a time, paired with the token before them on the other side (with an empty token pending on
both sides, the two pair with each other), so the result is a path of the same
shape as the dynamic program's: from (0, 0) to (n-1, m-1), each step advancing one side, the other, or
both by one.
"""

from __future__ import annotations

import numpy as np


def _owners(lengths: np.ndarray) -> np.ndarray:
    """For every character, the index of the token that holds it."""
    return np.repeat(np.arange(lengths.shape[0]), lengths)


def common_text(source: list[str], target: list[str]) -> bool:
    """Whether both surface sequences spell the same text (leading whitespace aside)."""
    return "".join(source).lstrip() == "".join(target).lstrip()


def _trim_leading(surfaces: list[str]) -> np.ndarray:
    """Token lengths once the text's leading whitespace is dropped (T5 adds a space GPT-2 lacks)."""
    lengths = np.array([len(s) for s in surfaces], dtype=np.int64)
    joined = "".join(surfaces)
    drop = len(joined) - len(joined.lstrip())
    for index in range(lengths.shape[0]):
        if drop == 0:
            break
        taken = min(drop, lengths[index])
        lengths[index] -= taken
        drop -= taken
    return lengths


def offsets_path(source: list[str], target: list[str]) -> np.ndarray:
    """The aligned ``(i, j)`` pairs, shape ``[path_length, 2]``, of two surface sequences of one text."""
    if not source or not target:
        raise ValueError(f"cannot align an empty token sequence (source has {len(source)}, target {len(target)})")
    if not common_text(source, target):
        raise ValueError("the offsets aligner needs both token sequences to spell the same text; use method='dp'")
    owners = np.stack([_owners(_trim_leading(source)), _owners(_trim_leading(target))], axis=1)
    if owners.shape[0]:
        keep = np.ones(owners.shape[0], dtype=bool)
        keep[1:] = np.any(owners[1:] != owners[:-1], axis=1)
        points = owners[keep].tolist()
    else:
        points = []
    points.append([len(source) - 1, len(target) - 1])
    path = [(0, 0)]
    i = j = 0
    for a, b in points:
        while i < a or j < b:
            if i + 1 < a and j + 1 < b:
                i, j = i + 1, j + 1
            elif i + 1 < a:
                i += 1
            elif j + 1 < b:
                j += 1
            else:
                i, j = (i + 1 if i < a else i), (j + 1 if j < b else j)
            path.append((i, j))
    return np.asarray(path, dtype=np.int64)
