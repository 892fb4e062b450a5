"""The oracle: a plain pure-Python implementation of the paper's alignment recurrence.

Same recurrence, cost and tie-breaking as `specialight.align.dp` (see its docstring), written the way the
paper's code was (nested lists, an edit distance per cell); the tests and benchmarks/align.py compare
the compiled version against it.
"""

from __future__ import annotations


def edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j - 1] + (ca != cb), previous[j] + 1, current[j - 1] + 1))
        previous = current
    return previous[-1]


def reference_path(source: list[str], target: list[str]) -> list[tuple[int, int]]:
    n, m = len(source), len(target)
    f = [[0] * m for _ in range(n)]
    for i in range(n):
        for j in range(m):
            cost = edit_distance(source[i], target[j])
            if i == 0 and j == 0:
                f[i][j] = cost
            elif i == 0:
                f[i][j] = cost + f[i][j - 1]
            elif j == 0:
                f[i][j] = cost + f[i - 1][j]
            else:
                f[i][j] = cost + min(f[i - 1][j - 1], f[i - 1][j], f[i][j - 1])
    i, j = n - 1, m - 1
    path = [(i, j)]
    while (i, j) != (0, 0):
        if i == 0:
            j -= 1
        elif j == 0:
            i -= 1
        else:
            diagonal, up, left = f[i - 1][j - 1], f[i - 1][j], f[i][j - 1]
            if diagonal <= up and diagonal <= left:
                i, j = i - 1, j - 1
            elif up <= left:
                i -= 1
            else:
                j -= 1
        path.append((i, j))
    return path[::-1]
