"""Teacher samples: the JSONL records that pass from ``distill`` to ``align`` and ``fit``.

One line per sample::

    {"question_id": "gsm8k/train/0", "sample_index": 3, "prompt_hash": "…", "teacher": "…",
     "text": "…", "tokens": ["Nat", "alia", …], "top_tokens": [["Nat", "The", …], …],
     "top_logprobs": [[-0.01, -4.7, …], …], "finish_reason": "stop", "answer": "72", "correct": true}

``tokens[i]`` is the teacher's i-th sampled token as text, ``top_tokens[i]``/``top_logprobs[i]`` its top-k
alternatives at that position, and the optional ``token_logprobs[i]`` the teacher's log-prob of the sampled
token itself (`specialight align` adds the sampled token to its target with it where it lies outside the
top-k). Files are read strictly: a malformed line names its file and line.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from specialight.data.jsonl import DataError, parse_row, read_jsonl

SAMPLE_FIELDS = ("question_id", "sample_index", "text", "tokens", "top_tokens", "top_logprobs")
MASS_TOLERANCE = 1e-2  # rounding of servers' log-probs: a top-k may sum a little over 1, never 368


def prompt_hash(prompt: str) -> str:
    """A short stable hash of a prompt (the ``prompt_hash`` of the samples it produced)."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class TeacherSample:
    """One chain of thought sampled from a teacher, with its per-position top-k log-probs."""

    question_id: str
    sample_index: int
    text: str
    tokens: list[str]
    top_tokens: list[list[str]]
    top_logprobs: list[list[float]]
    prompt_hash: str = ""
    teacher: str = ""
    finish_reason: str = ""
    answer: str | None = None
    correct: bool | None = None
    token_logprobs: list[float] | None = None

    @property
    def key(self) -> tuple[str, int]:
        """``(question_id, sample_index)``: unique within a run."""
        return self.question_id, self.sample_index

    def validate(self, where: str) -> TeacherSample:
        """Raise `DataError` naming ``where`` if a field has the wrong type, the top-k lists do not fit the
        tokens, repeat a token, or are no distribution (log-probs finite, <= 0, probabilities summing to at
        most 1 + `MASS_TOLERANCE`)."""
        self._check_types(where)
        if not self.tokens:
            raise DataError(f"{where}: sample {self.key} has no tokens")
        if len(self.top_tokens) != len(self.tokens) or len(self.top_logprobs) != len(self.tokens):
            raise DataError(
                f"{where}: sample {self.key} has {len(self.tokens)} tokens but "
                f"{len(self.top_tokens)} top-k token lists and {len(self.top_logprobs)} log-prob lists"
            )
        for position, (names, values) in enumerate(zip(self.top_tokens, self.top_logprobs)):
            _check_top_k(names, values, f"{where}: sample {self.key} position {position}")
        if self.token_logprobs is not None:
            if len(self.token_logprobs) != len(self.tokens):
                raise DataError(
                    f"{where}: sample {self.key} has {len(self.tokens)} tokens but "
                    f"{len(self.token_logprobs)} token log-probs"
                )
            if not all(_is_logprob(v) for v in self.token_logprobs):
                raise DataError(f"{where}: sample {self.key}: token log-probs must be finite numbers <= 0")
        return self

    def _check_types(self, where: str) -> None:
        """`DataError` naming the first field whose JSON type is not the schema's."""
        checks = [
            ("question_id", isinstance(self.question_id, str), "a string"),
            ("sample_index", _is_int(self.sample_index) and self.sample_index >= 0, "an integer >= 0"),
            ("text", isinstance(self.text, str), "a string"),
            ("tokens", _is_list(self.tokens, str), "a list of strings"),
            (
                "top_tokens",
                _is_list(self.top_tokens, list) and all(_is_list(t, str) for t in self.top_tokens),
                "a list of lists of strings",
            ),
            ("top_logprobs", _is_list(self.top_logprobs, list), "a list of lists of numbers"),
            (
                "token_logprobs",
                self.token_logprobs is None or _is_list(self.token_logprobs, object),
                "a list of numbers or null",
            ),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise DataError(f"{where}: field {name} must be {expected}, got {getattr(self, name)!r:.80}")

    def to_json(self) -> str:
        """One JSONL line (no newline)."""
        return json.dumps(asdict(self), ensure_ascii=False)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_list(value: object, item: type) -> bool:
    return isinstance(value, list) and all(isinstance(v, item) for v in value)


def _is_logprob(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value <= 1e-6


def _check_top_k(names: list[str], values: list, where: str) -> None:
    """One position's top-k: as many log-probs as tokens, no token twice, a distribution's share of mass."""
    if len(names) != len(values):
        raise DataError(f"{where}: {len(names)} tokens, {len(values)} log-probs")
    if not all(_is_logprob(v) for v in values):
        raise DataError(f"{where}: log-probs must be finite numbers <= 0, got {values!r:.120}")
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise DataError(f"{where}: the top-k lists token(s) {twice!r:.80} more than once")
    mass = math.fsum(math.exp(v) for v in values)
    if mass > 1 + MASS_TOLERANCE:
        raise DataError(f"{where}: the top-k probabilities sum to {mass:.3f}, more than 1")


def sample_from_row(row: dict, where: str) -> TeacherSample:
    """A validated `TeacherSample` from one JSON object (unknown keys ignored); ``where`` is ``file:line``."""
    known = {k: v for k, v in row.items() if k in TeacherSample.__dataclass_fields__}
    return TeacherSample(**known).validate(where)


def parse_sample(line: str, where: str) -> TeacherSample:
    """Parse and validate one JSONL line; ``where`` is ``file:line`` for error messages."""
    return sample_from_row(parse_row(line, where, SAMPLE_FIELDS), where)


def sample_files(path: str | os.PathLike) -> list[Path]:
    """The JSONL shards of a samples folder (sorted), or the file itself."""
    root = Path(path)
    if root.is_file():
        return [root]
    files = sorted(root.glob("*.jsonl"))
    if not files:
        raise DataError(f"no teacher samples at {root} (expected a .jsonl file or a folder of .jsonl shards)")
    return files


def read_samples(path: str | os.PathLike, only_correct: bool = False) -> Iterator[TeacherSample]:
    """Every sample of a file or folder of shards, in file then line order."""
    for file in sample_files(path):
        for where, row in read_jsonl(file, SAMPLE_FIELDS):
            sample = sample_from_row(row, where)
            if not only_correct or sample.correct:
                yield sample
