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
        """Raise `DataError` naming ``where`` if the top-k lists do not fit the tokens or are not finite."""
        if not self.tokens:
            raise DataError(f"{where}: sample {self.key} has no tokens")
        if len(self.top_tokens) != len(self.tokens) or len(self.top_logprobs) != len(self.tokens):
            raise DataError(
                f"{where}: sample {self.key} has {len(self.tokens)} tokens but "
                f"{len(self.top_tokens)} top-k token lists and {len(self.top_logprobs)} log-prob lists"
            )
        for position, (names, values) in enumerate(zip(self.top_tokens, self.top_logprobs)):
            if len(names) != len(values):
                raise DataError(
                    f"{where}: sample {self.key} position {position}: {len(names)} tokens, {len(values)} log-probs"
                )
            if not all(math.isfinite(v) and v <= 1e-6 for v in values):
                raise DataError(
                    f"{where}: sample {self.key} position {position}: log-probs must be finite and <= 0, got {values}"
                )
        if self.token_logprobs is not None:
            if len(self.token_logprobs) != len(self.tokens):
                raise DataError(
                    f"{where}: sample {self.key} has {len(self.tokens)} tokens but "
                    f"{len(self.token_logprobs)} token log-probs"
                )
            if not all(math.isfinite(v) and v <= 1e-6 for v in self.token_logprobs):
                raise DataError(f"{where}: sample {self.key}: token log-probs must be finite and <= 0")
        return self

    def to_json(self) -> str:
        """One JSONL line (no newline)."""
        return json.dumps(asdict(self), ensure_ascii=False)


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
