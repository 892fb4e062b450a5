"""How `specialight.evaluation.generation` groups prompts: clusters that share a few-shot prefix (its KV
cache is computed once per cluster), and batches of one token budget sorted by length."""

from __future__ import annotations

MIN_SHARED_PREFIX = 32  # tokens; a shorter common prefix is not worth its own prefill


def prefix_clusters(encoded: list[list[int]], minimum: int | None) -> list[tuple[int, list[int]]]:
    """``(prefix tokens, prompt indices)``: prompts sorted by their tokens, cut where neighbours share
    fewer than ``minimum`` leading tokens (None: one cluster without a prefix). Prompts that share a prefix
    with none of the others form one cluster without a prefix, last (batched together, not one by one). A
    prefix leaves every prompt at least one token of its own, whose logits give the first new token."""
    if minimum is None:
        return [(0, list(range(len(encoded))))]
    order = sorted(range(len(encoded)), key=lambda i: encoded[i])
    clusters: list[tuple[int, list[int]]] = []
    prefix, members = len(encoded[order[0]]) - 1, [order[0]]
    for previous, index in zip(order, order[1:]):
        shared = min(_common_length(encoded[previous], encoded[index]), len(encoded[index]) - 1, prefix)
        if shared >= minimum:
            prefix, members = shared, [*members, index]
            continue
        clusters.append((prefix, members))
        prefix, members = len(encoded[index]) - 1, [index]
    clusters.append((prefix, members))
    alone = sorted(members[0] for _, members in clusters if len(members) == 1)
    return [cluster for cluster in clusters if len(cluster[1]) > 1] + ([(0, alone)] if alone else [])


def _common_length(a: list[int], b: list[int]) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def batches(group: list[int], encoded: list[list[int]], limits: list[int], prefix: int, size: int):
    """Batches of at most ``size`` prompts with one budget, longest budget first, each sorted by length."""
    order = sorted(group, key=lambda i: (-limits[i], -(len(encoded[i]) - prefix)))
    for budget in sorted({limits[i] for i in group}, reverse=True):
        same = [i for i in order if limits[i] == budget]
        yield from (same[s : s + size] for s in range(0, len(same), size))
