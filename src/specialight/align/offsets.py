"""Exact alignment by character offsets, for two tokenizations of the same text: O(n + m + characters).

Each character of the text is owned by one token on each side; the pairs of owners, in text order, are
the alignment. Tokens with no characters (a bare ``▁``, special tokens) own nothing and are stepped over
one at a time, paired with the token before them on the other side (with an empty token pending on
both sides, the two pair with each other), so the result is a path of the same
shape as the dynamic program's: from (0, 0) to (n-1, m-1), each step advancing one side, the other, or
both by one.

Leading and trailing whitespace of the whole text counts only as far as both sides have it (T5 adds a
leading space GPT-2 lacks; a teacher's sample may end in a newline the student's text does not keep).
With ``separator`` (the newline stand-in of a tokenizer that cannot encode a newline,
`specialight.data.formats.render`) the source is compared as the student sees it: each run of newlines
(with the blanks around it) reads as the stand-in, whose text up to its last character belongs to the
token holding the run's first newline and whose trailing blank belongs to the token after the run, so
``"\\n"`` pairs with ``" |"`` and ``"She"`` with ``" She"``.
"""

from __future__ import annotations

import numpy as np

from specialight.data.formats import NEWLINES


def text_owners(surfaces: list[str], separator: str | None = None) -> tuple[str, np.ndarray]:
    """The text a surface sequence spells and, for each of its characters, the token holding it. With
    ``separator`` the text is read as the student sees it: stripped, its newlines rendered."""
    lengths = np.array([len(s) for s in surfaces], dtype=np.int64)
    text = "".join(surfaces)
    owners = np.repeat(np.arange(lengths.shape[0]), lengths)
    if separator is None:
        return text, owners
    start, end = len(text) - len(text.lstrip()), len(text.rstrip())
    text, owners = text[start:end], owners[start:end]
    pieces: list[str] = []
    held: list[np.ndarray] = []
    last = 0
    body = separator.rstrip()
    for match in NEWLINES.finditer(text):
        pieces.append(text[last : match.start()])
        held.append(owners[last : match.start()])
        newline_owner = owners[match.start() + match.group().index("\n")]
        next_owner = owners[match.end()] if match.end() < owners.shape[0] else newline_owner
        pieces.append(separator)
        held.append(np.array([newline_owner] * len(body) + [next_owner] * (len(separator) - len(body)), dtype=np.int64))
        last = match.end()
    pieces.append(text[last:])
    held.append(owners[last:])
    return "".join(pieces), np.concatenate(held)


def _shared_text(
    source: list[str], target: list[str], separator: str | None
) -> tuple[str, np.ndarray, str, np.ndarray]:
    """Both texts with their owners, leading and trailing whitespace evened out: where one side's run is
    the other's with more blanks (T5's added leading blank), the longer loses its extra characters on the
    outside; where the runs differ otherwise, both lose theirs."""
    a, a_owners = text_owners(source, separator)
    b, b_owners = text_owners(target)
    lead_a, lead_b = len(a) - len(a.lstrip()), len(b) - len(b.lstrip())
    if a[:lead_a].endswith(b[:lead_b]):
        start_a, start_b = lead_a - lead_b, 0
    elif b[:lead_b].endswith(a[:lead_a]):
        start_a, start_b = 0, lead_b - lead_a
    else:
        start_a, start_b = lead_a, lead_b
    end_a, end_b = len(a.rstrip()), len(b.rstrip())
    if a[end_a:].startswith(b[end_b:]):
        end_a += len(b) - end_b
        end_b = len(b)
    elif b[end_b:].startswith(a[end_a:]):
        end_b += len(a) - end_a
        end_a = len(a)
    return a[start_a:end_a], a_owners[start_a:end_a], b[start_b:end_b], b_owners[start_b:end_b]


def common_text(source: list[str], target: list[str], separator: str | None = None) -> bool:
    """Whether both surface sequences spell the same text (the source's newlines read as ``separator``;
    leading and trailing whitespace aside)."""
    a, _, b, _ = _shared_text(source, target, separator)
    return a == b


def offsets_path(source: list[str], target: list[str], separator: str | None = None) -> np.ndarray:
    """The aligned ``(i, j)`` pairs, shape ``[path_length, 2]``, of two surface sequences of one text."""
    if not source or not target:
        raise ValueError(f"cannot align an empty token sequence (source has {len(source)}, target {len(target)})")
    source_text, source_owners, target_text, target_owners = _shared_text(source, target, separator)
    if source_text != target_text:
        raise ValueError("the offsets aligner needs both token sequences to spell the same text; use method='dp'")
    owners = np.stack([source_owners, target_owners], axis=1)
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
