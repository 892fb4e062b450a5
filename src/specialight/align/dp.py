"""The paper's token-alignment dynamic program, compiled with numba.

    f(i, j) = c(s_i, t_j) + min(f(i-1, j), f(i, j-1), f(i-1, j-1)),   f(0, 0) = c(s_0, t_0)

with c the Levenshtein distance between the two tokens' surface strings (`specialight.align.markers`).
Costs are integers, so ties are exact. The backtrace starts at (n-1, m-1) and, where predecessors tie,
prefers the diagonal (i-1, j-1), then (i-1, j), then (i, j-1); on the first row or column it can only
move along it. The result is the whole path from (0, 0) to (n-1, m-1): monotone in both indices, every
token of both sides on it, a token aligned to several on the other side where the path runs straight.
"""

from __future__ import annotations

import numba
import numpy as np


def encode(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Code points of all strings concatenated, and the ``n + 1`` offsets where each begins."""
    joined = "".join(strings)
    codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32) if joined else np.zeros(0, np.uint32)
    offsets = np.zeros(len(strings) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in strings], out=offsets[1:])
    return codes, offsets


@numba.njit(cache=True, nogil=True)
def _levenshtein(a: np.ndarray, b: np.ndarray, row: np.ndarray) -> int:
    """Edit distance of two code-point arrays; ``row`` is scratch of length >= len(b) + 1."""
    n, m = a.shape[0], b.shape[0]
    for j in range(m + 1):
        row[j] = j
    for i in range(1, n + 1):
        diagonal = row[0]
        row[0] = i
        for j in range(1, m + 1):
            above = row[j]
            best = diagonal + (0 if a[i - 1] == b[j - 1] else 1)
            if above + 1 < best:
                best = above + 1
            if row[j - 1] + 1 < best:
                best = row[j - 1] + 1
            row[j] = best
            diagonal = above
    return row[m]


@numba.njit(cache=True, nogil=True)
def _pair_costs(
    source_codes: np.ndarray, source_offsets: np.ndarray, target_codes: np.ndarray, target_offsets: np.ndarray
) -> np.ndarray:
    """Edit distance of every (source string, target string) pair, ``[n_strings, m_strings]``."""
    n, m = source_offsets.shape[0] - 1, target_offsets.shape[0] - 1
    longest = 1
    for j in range(m):
        longest = max(longest, target_offsets[j + 1] - target_offsets[j] + 1)
    row = np.empty(longest, dtype=np.int64)
    costs = np.empty((n, m), dtype=np.int64)
    for i in range(n):
        a = source_codes[source_offsets[i] : source_offsets[i + 1]]
        for j in range(m):
            costs[i, j] = _levenshtein(a, target_codes[target_offsets[j] : target_offsets[j + 1]], row)
    return costs


@numba.njit(cache=True, nogil=True)
def _totals(costs: np.ndarray, source_kind: np.ndarray, target_kind: np.ndarray) -> np.ndarray:
    """``f(i, j)`` of the recurrence for every cell, ``[n, m]``."""
    n, m = source_kind.shape[0], target_kind.shape[0]
    total = np.empty((n, m), dtype=np.int64)
    for i in range(n):
        for j in range(m):
            cost = costs[source_kind[i], target_kind[j]]
            if i == 0 and j == 0:
                total[i, j] = cost
            elif i == 0:
                total[i, j] = cost + total[i, j - 1]
            elif j == 0:
                total[i, j] = cost + total[i - 1, j]
            else:
                best = total[i - 1, j - 1]
                if total[i - 1, j] < best:
                    best = total[i - 1, j]
                if total[i, j - 1] < best:
                    best = total[i, j - 1]
                total[i, j] = cost + best
    return total


@numba.njit(cache=True, nogil=True)
def _backtrace(total: np.ndarray) -> np.ndarray:
    """The path from ``(n-1, m-1)`` back to ``(0, 0)`` through ``total``, in forward order, ``[length, 2]``."""
    n, m = total.shape
    path = np.empty((n + m, 2), dtype=np.int64)
    i, j, k = n - 1, m - 1, 0
    while True:
        path[k, 0] = i
        path[k, 1] = j
        k += 1
        if i == 0 and j == 0:
            break
        if i == 0:
            j -= 1
        elif j == 0:
            i -= 1
        else:
            diagonal, up, left = total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]
            if diagonal <= up and diagonal <= left:
                i -= 1
                j -= 1
            elif up <= left:
                i -= 1
            else:
                j -= 1
    return path[:k][::-1].copy()


@numba.njit(cache=True, nogil=True)
def dp_path(costs: np.ndarray, source_kind: np.ndarray, target_kind: np.ndarray) -> np.ndarray:
    """The aligned ``(i, j)`` pairs, shape ``[path_length, 2]``.

    Token i of the source is distinct string ``source_kind[i]`` (likewise the target), and
    ``costs[a, b]`` is the edit distance of distinct strings a and b: repeated tokens are costed once.
    """
    return _backtrace(_totals(costs, source_kind, target_kind))


def _distinct(strings: list[str]) -> tuple[list[str], np.ndarray]:
    """The distinct strings in first-seen order, and each string's index among them."""
    seen: dict[str, int] = {}
    kinds = np.fromiter((seen.setdefault(s, len(seen)) for s in strings), dtype=np.int64, count=len(strings))
    return list(seen), kinds


def align_surfaces(source: list[str], target: list[str]) -> np.ndarray:
    """The dynamic program on two lists of surface strings; shape ``[path_length, 2]``."""
    if not source or not target:
        raise ValueError(f"cannot align an empty token sequence (source has {len(source)}, target {len(target)})")
    source_distinct, source_kind = _distinct(source)
    target_distinct, target_kind = _distinct(target)
    costs = _pair_costs(*encode(source_distinct), *encode(target_distinct))
    return dp_path(costs, source_kind, target_kind)
