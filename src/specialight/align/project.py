"""Teacher top-k distributions expressed on the student's tokens, where the two tokens are the same token.

A student position carries the teacher's distribution only where the alignment pairs it one-to-one with a
teacher position *and* the two tokens spell the same surface (`same_token`); there its target is the
teacher's top-k, each teacher token mapped to the student token with the same surface (teacher tokens with
no student counterpart are dropped; two mapping to one id add up), with probabilities ``exp(logprob)``, and
the student's own token (the teacher's sampled token) is always in it: where the mapped top-k lacks it, it
joins with the teacher's own probability of it (``token_logprobs``), as in the authors' targets, where the
sampled token and its probability come first in every step's list. Everywhere else the target is one-hot on
the student's own token: positions that are not one-to-one, positions whose tokens differ (``"12"`` against
``"▁$12"``, a newline against T5's ``" |"``), and positions whose sampled token lies outside the top-k when
the sample does not carry its log-probability. Tail policy: ``zero`` keeps the probabilities as they are
(mass outside them is zero, unnormalized: the paper), ``renormalize`` rescales them to sum to one.

Targets are sparse and fixed-width: ``k + 1`` ids and probabilities per position (the top-k and a slot
for the sampled token), padded with the student's own id at probability 0, so a loss gathers ``k + 1``
log-probs and never builds a dense vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specialight.align.markers import surface, tokenizer_scheme

TAIL_POLICIES = ("zero", "renormalize")


class VocabularyMap:
    """Surface string -> student id, built once per student tokenizer.

    Where several student ids share a surface (rare: duplicates across special tokens), the lowest id
    wins. `ids_for` maps a list of teacher token strings (surface text, or raw pieces with ``scheme``).
    """

    def __init__(self, student_tokenizer) -> None:
        scheme = tokenizer_scheme(student_tokenizer)
        vocabulary = student_tokenizer.get_vocab()
        special = set(student_tokenizer.all_special_tokens)
        self.by_surface: dict[str, int] = {}
        for piece, index in sorted(vocabulary.items(), key=lambda item: item[1]):
            if piece in special:
                continue
            self.by_surface.setdefault(surface(piece, scheme), index)
        self.scheme = scheme

    def lookup(self, text: str) -> int:
        """The student id whose surface is ``text``, or -1."""
        return self.by_surface.get(text, -1)

    def teacher_table(self, teacher_tokenizer) -> np.ndarray:
        """teacher id -> student id (-1 where none), for a teacher that hands out ids."""
        scheme = tokenizer_scheme(teacher_tokenizer)
        vocabulary = teacher_tokenizer.get_vocab()
        table = np.full(max(vocabulary.values()) + 1, -1, dtype=np.int64)
        for piece, index in vocabulary.items():
            table[index] = self.lookup(surface(piece, scheme))
        return table


# what each student position's target is (``StudentTargets.kind``)
TEACHER, DIFFERENT, NOT_ONE_TO_ONE, UNKNOWN_SAMPLED = 0, 1, 2, 3
KINDS = ("teacher_distribution", "one_to_one_different_tokens", "not_one_to_one", "sampled_token_log_prob_unknown")


@dataclass
class StudentTargets:
    """Sparse targets of one sample on the student side.

    ``ids``/``probs``: ``[length, k + 1]``; ``kind``: ``[length]`` (one of `KINDS` by index);
    ``input_ids``: ``[length]``, the student's tokens of the sample text; ``added``: ``[length]``, True
    where the sampled token was outside the mapped top-k and joined it.
    """

    input_ids: np.ndarray
    ids: np.ndarray
    probs: np.ndarray
    kind: np.ndarray
    added: np.ndarray

    @property
    def teacher_mass(self) -> np.ndarray:
        """``[length]``: True where the target is the teacher's distribution."""
        return self.kind == TEACHER


def same_token(teacher: str, student: str, layout_space: bool = False) -> bool:
    """Whether two surfaces are the same token. ``layout_space``: the student's leading blank is layout the
    teacher's text does not have there (the text's start, or the blank after a newline stand-in), so
    ``"She"`` and ``" She"`` match."""
    return teacher == student or (layout_space and student.startswith(" ") and teacher == student[1:])


def _mark_different(kind: np.ndarray, position: int, teacher: str, student: str, layout_space: bool) -> bool:
    """`same_token`, recording `DIFFERENT` in ``kind`` where the tokens differ."""
    if same_token(teacher, student, layout_space):
        return True
    kind[position] = DIFFERENT
    return False


def layout_spaces(student_surfaces: list[str], separator: str | None) -> np.ndarray:
    """``[length]``: True at the first student token and, with a newline stand-in, at the token after it."""
    flags = np.zeros(len(student_surfaces), dtype=bool)
    if student_surfaces:
        flags[0] = True
    if separator is not None:
        mark = separator.strip()
        last = ""  # the text so far up to its last non-blank piece, trailing blanks dropped
        for position, piece in enumerate(student_surfaces):
            if position and last.endswith(mark):
                flags[position] = True
            if piece.strip():
                last = (last + piece).rstrip()[-len(mark) :]
    return flags


def one_to_one_pairs(path: np.ndarray, n: int, m: int) -> dict[int, int]:
    """student position -> teacher position, for pairs where each side appears exactly once on the path.

    ``path`` holds ``(teacher, student)`` pairs; ``n``/``m`` are the two lengths.
    """
    teacher, student = _one_to_one(path, n, m)
    return dict(zip(student.tolist(), teacher.tolist()))


def _one_to_one(path: np.ndarray, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    teacher_count = np.bincount(path[:, 0], minlength=n)
    student_count = np.bincount(path[:, 1], minlength=m)
    single = (teacher_count[path[:, 0]] == 1) & (student_count[path[:, 1]] == 1)
    return path[single, 0], path[single, 1]


def project(
    student_ids: list[int],
    student_surfaces: list[str],
    path: np.ndarray,
    teacher_surfaces: list[str],
    teacher_top_tokens: list[list[str]],
    teacher_top_logprobs: list[list[float]],
    vocabulary: VocabularyMap,
    k: int,
    tail: str = "zero",
    token_logprobs: list[float] | None = None,
    layout_space: np.ndarray | None = None,
) -> StudentTargets:
    """Build `StudentTargets` from an alignment ``path`` of ``(teacher, student)`` pairs.

    ``teacher_surfaces``: the teacher's sampled tokens as text; ``token_logprobs``: the teacher's log-prob
    of each (None where the sample does not carry them); ``layout_space``: see `same_token`.
    """
    if tail not in TAIL_POLICIES:
        raise ValueError(f"unknown tail policy {tail!r}; known: {', '.join(TAIL_POLICIES)}")
    length, width = len(student_ids), k + 1
    own = np.asarray(student_ids, dtype=np.int64)
    targets = StudentTargets(
        input_ids=own,
        ids=np.repeat(own[:, None], width, axis=1),
        probs=np.zeros((length, width), dtype=np.float32),
        kind=np.full(length, NOT_ONE_TO_ONE, dtype=np.int8),
        added=np.zeros(length, dtype=bool),
    )
    targets.probs[:, 0] = 1.0
    layout = np.zeros(length, dtype=bool) if layout_space is None else layout_space
    pairs = [
        (t, s)
        for t, s in zip(*(a.tolist() for a in _one_to_one(path, len(teacher_surfaces), length)))
        if _mark_different(targets.kind, s, teacher_surfaces[t], student_surfaces[s], bool(layout[s]))
    ]
    if pairs:
        shifted = [teacher_surfaces[t] != student_surfaces[s] for t, s in pairs]
        mapped, mass = _mapped_top_k(pairs, shifted, teacher_top_tokens, teacher_top_logprobs, vocabulary, k)
        _merge_repeats(mapped, mass)
        _with_sampled(targets, pairs, mapped, mass, token_logprobs, tail)
    return targets


def _mapped_top_k(
    pairs: list[tuple[int, int]],
    shifted: list[bool],
    top_tokens: list[list[str]],
    top_logprobs: list[list[float]],
    vocabulary: VocabularyMap,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Each pair's teacher top-k as student ids (-1: no counterpart) and probabilities, ``[pairs, k]`` each.

    Where the student's leading blank is layout (``shifted``), the teacher's alternatives take it too, as
    the student would write them there ("So" at the start of a line is " So" to T5)."""
    names = {(name, shift) for (t, _), shift in zip(pairs, shifted) for name in top_tokens[t][:k]}
    lookup = {key: vocabulary.lookup(" " + key[0].lstrip(" ") if key[1] else key[0]) for key in names}
    mapped = np.full((len(pairs), k), -1, dtype=np.int64)
    mass = np.zeros((len(pairs), k), dtype=np.float64)
    for row, ((t, _), shift) in enumerate(zip(pairs, shifted)):
        top = top_tokens[t][:k]
        mapped[row, : len(top)] = [lookup[(name, shift)] for name in top]
        mass[row, : len(top)] = top_logprobs[t][: len(top)]
    return mapped, np.where(mapped >= 0, np.exp(mass), 0.0)


def _merge_repeats(mapped: np.ndarray, mass: np.ndarray) -> None:
    """In place: where two teacher tokens have one student counterpart, the later one's mass joins the
    first and its slot is emptied."""
    for column in range(1, mapped.shape[1]):
        earlier = mapped[:, :column] == mapped[:, column : column + 1]
        rows = np.nonzero(earlier.any(axis=1) & (mapped[:, column] >= 0))[0]
        first = earlier.argmax(axis=1)
        mass[rows, first[rows]] += mass[rows, column]
        mass[rows, column] = 0.0
        mapped[rows, column] = -1


def _with_sampled(
    targets: StudentTargets,
    pairs: list[tuple[int, int]],
    mapped: np.ndarray,
    mass: np.ndarray,
    token_logprobs: list[float] | None,
    tail: str,
) -> None:
    """In place: the pairs' rows of ``targets`` get the mapped top-k, most probable first, and the sampled
    token in the last slot where the top-k lacks it (with its own log-prob; without one, the row stays
    one-hot and is marked `UNKNOWN_SAMPLED`); ``tail="renormalize"`` rescales each row to sum to one."""
    teacher, student = (np.asarray(column, dtype=np.int64) for column in zip(*pairs))
    mine = targets.input_ids[student]
    has_own = (mapped == mine[:, None]).any(axis=1)
    if token_logprobs is None:
        targets.kind[student[~has_own]] = UNKNOWN_SAMPLED
        keep = has_own
        own_mass = np.zeros(len(pairs))
    else:
        keep = np.ones(len(pairs), dtype=bool)
        own_mass = np.where(has_own, 0.0, np.exp(np.asarray(token_logprobs, dtype=np.float64)[teacher]))
    order = np.argsort(-mass, axis=1, kind="stable")
    top_mass = np.concatenate([np.take_along_axis(mass, order, axis=1), own_mass[:, None]], axis=1)
    top_ids = np.concatenate([np.take_along_axis(mapped, order, axis=1), mine[:, None]], axis=1)
    top_ids = np.where(top_mass > 0, top_ids, mine[:, None])
    if tail == "renormalize":
        top_mass = top_mass / top_mass.sum(axis=1, keepdims=True)
    rows = student[keep]
    targets.ids[rows] = top_ids[keep]
    targets.probs[rows] = top_mass[keep]
    targets.kind[rows] = TEACHER
    targets.added[rows] = ~has_own[keep]
