"""Teacher top-k distributions expressed on the student's tokens.

For each student position: if the alignment pairs it one-to-one with a teacher position, its target is
that position's teacher top-k, each teacher token mapped to the student token with the same surface
string (teacher tokens with no student counterpart are dropped; two mapping to one id add up), with
probabilities ``exp(logprob)``. Anywhere else, and where no top-k token maps, the target is one-hot on the
student's own token. Tail policy: ``zero`` keeps the top-k probabilities as they are (mass outside the
top-k is zero, unnormalized: the paper), ``renormalize`` rescales them to sum to one.

Targets are sparse and fixed-width: ``k`` ids and ``k`` probabilities per position, padded with the
student's own id at probability 0, so a loss gathers ``k`` log-probs and never builds a dense vocabulary.
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


@dataclass
class StudentTargets:
    """Sparse targets of one sample on the student side.

    ``ids``/``probs``: ``[length, k]``; ``one_to_one``: ``[length]`` (True where the teacher's top-k was
    projected); ``input_ids``: ``[length]``, the student's tokens of the sample text.
    """

    input_ids: np.ndarray
    ids: np.ndarray
    probs: np.ndarray
    one_to_one: np.ndarray


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
    path: np.ndarray,
    teacher_top_tokens: list[list[str]],
    teacher_top_logprobs: list[list[float]],
    vocabulary: VocabularyMap,
    k: int,
    tail: str = "zero",
) -> StudentTargets:
    """Build `StudentTargets` from an alignment ``path`` of ``(teacher, student)`` pairs."""
    if tail not in TAIL_POLICIES:
        raise ValueError(f"unknown tail policy {tail!r}; known: {', '.join(TAIL_POLICIES)}")
    length = len(student_ids)
    own = np.asarray(student_ids, dtype=np.int64)
    ids = np.repeat(own[:, None], k, axis=1)
    probs = np.zeros((length, k), dtype=np.float32)
    probs[:, 0] = 1.0
    projected = np.zeros(length, dtype=bool)
    teacher, student = _one_to_one(path, len(teacher_top_tokens), length)
    if teacher.shape[0] == 0:
        return StudentTargets(input_ids=own, ids=ids, probs=probs, one_to_one=projected)
    width = max(k, max(len(teacher_top_tokens[t]) for t in teacher.tolist()))
    mapped = np.full((teacher.shape[0], width), -1, dtype=np.int64)
    mass = np.zeros((teacher.shape[0], width), dtype=np.float64)
    lookup = vocabulary.lookup
    for row, t in enumerate(teacher.tolist()):
        names, values = teacher_top_tokens[t], teacher_top_logprobs[t]
        mapped[row, : len(names)] = [lookup(name) for name in names]
        mass[row, : len(values)] = np.exp(values)
    mass[mapped < 0] = 0.0
    # two teacher tokens with one student counterpart: the later one's mass joins the first
    for column in range(1, width):
        earlier = mapped[:, :column] == mapped[:, column : column + 1]
        has_earlier = earlier.any(axis=1) & (mapped[:, column] >= 0)
        first = earlier.argmax(axis=1)
        rows = np.nonzero(has_earlier)[0]
        mass[rows, first[rows]] += mass[rows, column]
        mass[rows, column] = 0.0
    order = np.argsort(-mass, axis=1, kind="stable")[:, :k]
    top_mass = np.take_along_axis(mass, order, axis=1)
    top_ids = np.take_along_axis(mapped, order, axis=1)
    usable = top_mass[:, 0] > 0
    top_ids = np.where(top_mass > 0, top_ids, own[student][:, None])
    if tail == "renormalize":
        top_mass = top_mass / np.where(usable, top_mass.sum(axis=1), 1.0)[:, None]
    ids[student[usable]] = top_ids[usable]
    probs[student[usable]] = top_mass[usable]
    projected[student[usable]] = True
    return StudentTargets(input_ids=own, ids=ids, probs=probs, one_to_one=projected)
