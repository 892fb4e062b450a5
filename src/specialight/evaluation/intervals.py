"""95% intervals for accuracies: Wilson score intervals, and the interval of a mean of proportions.

A leaf suite's accuracy is k of n: its interval is the Wilson score interval (it stays inside [0, 100]
and is not degenerate at 0 or n correct, unlike the normal approximation).

A composite suite (``mas_*``: three data sets; ``bbh_*``: 27 tasks) reports the unweighted mean p̄ of its
K parts' proportions p_i (n_i examples each). If the parts share p̄, that mean has variance
p̄(1-p̄)·Σ(1/n_i)/K², the variance of one proportion over n_eff = K² / Σ(1/n_i) examples; the interval is
the Wilson interval of p̄ at n_eff (n_eff is the total count when the parts are equal in size). Parts
whose accuracies differ have a smaller true variance, so the interval is conservative, never too narrow.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054


def wilson(proportion: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval ``(low, high)`` of a proportion in [0, 1] observed over ``n`` examples."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0.0 <= proportion <= 1.0:
        raise ValueError(f"a proportion lies in [0, 1], got {proportion}")
    denominator = 1 + z * z / n
    centre = (proportion + z * z / (2 * n)) / denominator
    half = z * math.sqrt(proportion * (1 - proportion) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy_interval(correct: int, n: int) -> tuple[float, float]:
    """The 95% Wilson interval, in percent, of ``correct`` out of ``n``."""
    low, high = wilson(correct / n if n else 0.0, n)
    return (100 * low, 100 * high)


def mean_interval(parts: list[tuple[float, int]]) -> tuple[float, float]:
    """The 95% interval, in percent, of the unweighted mean of parts given as ``(accuracy %, n)``."""
    if not parts or any(n <= 0 for _, n in parts):
        raise ValueError(f"every part needs examples, got {parts}")
    mean = sum(p for p, _ in parts) / len(parts) / 100
    effective_n = len(parts) ** 2 / sum(1 / n for _, n in parts)
    low, high = wilson(min(1.0, max(0.0, mean)), effective_n)
    return (100 * low, 100 * high)


def paired_change(
    parts: list[list[tuple[bool, bool]]], samples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """Change of an accuracy between two evaluations of the same examples, in points, with its 95% interval.

    ``parts`` holds one list per part of the suite (one for a leaf suite, K for a composite), each of
    ``(correct before, correct after)`` per example. The change is the unweighted mean over parts of each
    part's accuracy change, as composites are scored; the interval is a percentile bootstrap that resamples
    examples within each part (paired: an example keeps both outcomes). Returns ``(change, low, high)``.
    """
    import numpy as np

    if not parts or any(not part for part in parts):
        raise ValueError("every part needs examples scored in both evaluations")
    rng = np.random.default_rng(seed)
    total = np.zeros(samples)
    point = 0.0
    for part in parts:
        difference = np.array([float(after) - float(before) for before, after in part])
        point += difference.mean()
        total += difference[rng.integers(0, difference.size, size=(samples, difference.size))].mean(axis=1)
    scale = 100 / len(parts)
    low, high = np.percentile(total * scale, [2.5, 97.5])
    return point * scale, float(low), float(high)
