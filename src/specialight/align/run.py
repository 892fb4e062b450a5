"""``specialight align``: teacher samples (JSONL) -> student targets (a memory-mappable Arrow file).

The output folder holds ``targets.arrow`` (its schema and reader: `specialight.core.targets`) and
``summary.json``.

Every sample is checked before it is aligned: its ``question_id`` must be a GSM8K question of the data
folder (``gsm8k/train/N`` or ``gsm8k/test/N``), its tokens must spell its text, and each position's top-k
must list a token once with probabilities summing to at most 1 (`specialight.data.records`). A bad sample
stops the run with one line naming its file and line, and no ``targets.arrow`` is written.

``summary.json`` gives the share of student positions of each target kind (teacher distribution, one-to-one
but different tokens, not one-to-one) and the share of samples that took each aligner.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from specialight.align.markers import first_difference, spells, surfaces, tokenizer_scheme
from specialight.align.paths import align_path, choose_method
from specialight.align.project import KINDS, StudentTargets, VocabularyMap, layout_spaces, project
from specialight.align.settings import AlignSettings
from specialight.core.constants import TARGETS_FILE
from specialight.core.targets import SCHEMA
from specialight.data.formats import newline_separator, render
from specialight.data.jsonl import DataError
from specialight.data.records import TeacherSample, parse_sample, sample_files
from specialight.data.tasks import load_examples, resolve_data_dir

logger = logging.getLogger(__name__)


@lru_cache(maxsize=2)
def gsm8k_ids(folder: str) -> frozenset[str]:
    """Every GSM8K question id of a data folder (train, which holds tune and dev, and test)."""
    return frozenset(e.id for split in ("train", "test") for e in load_examples("gsm8k", split, folder))


@dataclass
class Aligner:
    """What aligning samples onto one student needs, built once per process (``align``'s workers, on-policy
    training): the student's tokenizer, its token surfaces and vocabulary map, and the known question ids."""

    settings: AlignSettings
    tokenizer: object = field(init=False)
    vocabulary: VocabularyMap = field(init=False)
    newline: str | None = field(init=False)
    scheme: str = field(init=False)
    student_surfaces: list[str] = field(init=False)
    known_ids: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.settings.student_tokenizer)
        self.vocabulary = VocabularyMap(self.tokenizer)
        self.newline = newline_separator(self.tokenizer)
        self.scheme = tokenizer_scheme(self.tokenizer)
        pieces = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        self.student_surfaces = surfaces(pieces, self.scheme)
        self.known_ids = gsm8k_ids(str(resolve_data_dir(self.settings.data_dir)))

    def align_lines(self, lines: list[tuple[str, str]]) -> list[tuple[dict | None, str | None]]:
        """Parse, validate and align a chunk of ``(where, JSONL line)``; student texts are tokenized as a batch."""
        samples = [self.checked(parse_sample(line, where), where) for where, line in lines]
        texts = [render(sample.text.strip(), self.newline) for sample in samples]
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [align_sample(sample, self, text, ids) for sample, text, ids in zip(samples, texts, encoded)]

    def checked(self, sample: TeacherSample, where: str) -> TeacherSample:
        """``sample``, or `DataError` naming ``where`` if it names an unknown question or its tokens do not
        spell its text."""
        if sample.question_id not in self.known_ids:
            folder = resolve_data_dir(self.settings.data_dir)
            raise DataError(
                f"{where}: question_id {sample.question_id!r} is not a GSM8K question of {folder} "
                "(expected gsm8k/train/N or gsm8k/test/N; give --data_dir)"
            )
        pieces = surfaces(sample.tokens, self.settings.teacher_scheme)
        if not spells(pieces, sample.text):
            spelled, text = "".join(pieces).strip(), sample.text.strip()
            at = first_difference(spelled, text)
            raise DataError(
                f"{where}: sample {sample.key}: its tokens do not spell its text: from character {at} the "
                f"tokens read {spelled[at : at + 30]!r}, the text {text[at : at + 30]!r}"
            )
        return sample


_WORKER: Aligner | None = None


def _init_worker(settings: AlignSettings) -> None:
    global _WORKER
    _WORKER = Aligner(settings)


def dropped_because(sample: TeacherSample, settings: AlignSettings, student_ids: list[int]) -> str | None:
    """Why ``sample`` is left out of the targets (None: it is kept)."""
    if settings.only_correct and not sample.correct:
        return "incorrect answer (--only-correct)"
    if not student_ids:
        return "no student tokens"
    if len(student_ids) > settings.max_length:
        return f"longer than max_length={settings.max_length}"
    return None


def align_sample(
    sample: TeacherSample, worker: Aligner, text: str, student_ids: list[int]
) -> tuple[dict | None, str | None]:
    """One sample (``text`` as the student sees it, ``student_ids`` its tokens) to one output row, or
    ``(None, reason)`` when it is dropped."""
    settings = worker.settings
    reason = dropped_because(sample, settings, student_ids)
    if reason is not None:
        return None, reason
    student = [worker.student_surfaces[i] for i in student_ids]
    teacher = surfaces(sample.tokens, settings.teacher_scheme)
    try:
        method = choose_method(teacher, student, settings.method, worker.newline)
        path = align_path(teacher, student, method, worker.newline)
    except ValueError as err:
        raise ValueError(f"sample {sample.key}: {err}") from err
    targets = project(
        student_ids,
        student,
        path,
        teacher,
        sample.top_tokens,
        sample.top_logprobs,
        worker.vocabulary,
        settings.top_k,
        settings.tail,
        token_logprobs=sample.token_logprobs,
        layout_space=layout_spaces(student, worker.newline),
    )
    return target_row(sample, text, settings.top_k, targets, method), None


def target_row(sample: TeacherSample, text: str, top_k: int, targets: StudentTargets, method: str) -> dict:
    """One row of ``targets.arrow`` (`specialight.core.targets.SCHEMA`)."""
    return {
        "question_id": sample.question_id,
        "sample_index": sample.sample_index,
        "text": text,
        "answer": sample.answer or "",
        "correct": bool(sample.correct),
        "top_k": top_k,
        "target_width": targets.ids.shape[1],
        "input_ids": targets.input_ids.astype(np.int32),
        "topk_ids": targets.ids.reshape(-1).astype(np.int32),
        "topk_probs": targets.probs.reshape(-1),
        "target_kind": targets.kind,
        "method": method,
    }


def _align_in_worker(lines: list[tuple[str, str]]) -> list[tuple[dict | None, str | None]]:
    assert _WORKER is not None
    return _WORKER.align_lines(lines)


def _chunks(path: str | os.PathLike, size: int = 64) -> Iterator[list[tuple[str, str]]]:
    """``(file:line, text)`` of every non-blank line of the sample files, in chunks."""
    chunk: list[tuple[str, str]] = []
    for file in sample_files(path):
        with file.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    chunk.append((f"{file}:{number}", line))
                    if len(chunk) == size:
                        yield chunk
                        chunk = []
    if chunk:
        yield chunk


def _results(
    path: str | os.PathLike, settings: AlignSettings, num_proc: int
) -> Iterator[tuple[dict | None, str | None]]:
    """Rows in input order; JSON parsing, tokenizing and aligning all happen in the workers."""
    if num_proc <= 1:
        worker = Aligner(settings)
        for chunk in _chunks(path):
            yield from worker.align_lines(chunk)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(num_proc, initializer=_init_worker, initargs=(settings,)) as pool:
        for rows in pool.imap(_align_in_worker, _chunks(path)):
            yield from rows


@dataclass
class _Tally:
    """What the written rows hold: kept samples and their positions by target kind and aligner, and the
    dropped samples by reason."""

    kept: int = 0
    positions: int = 0
    kinds: np.ndarray = field(default_factory=lambda: np.zeros(len(KINDS), dtype=np.int64))
    methods: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)

    def add(self, row: dict) -> None:
        self.kept += 1
        self.positions += len(row["input_ids"])
        self.kinds += np.bincount(row["target_kind"], minlength=len(KINDS))
        self.methods[row["method"]] += 1


def write_targets(results: Iterator[tuple[dict | None, str | None]], target: Path, total: int) -> _Tally:
    """Stream the kept rows to ``target`` through a ``.partial`` file renamed at the end (removed on an
    error, so a failed run leaves no half-written targets)."""
    partial = target.with_name(target.name + ".partial")
    tally, batch = _Tally(), []
    try:
        with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_stream(sink, SCHEMA) as writer:
            for row, reason in tqdm(results, total=total, desc="align", unit="sample"):
                if row is None:
                    tally.dropped[reason] += 1
                    continue
                tally.add(row)
                batch.append(row)
                if len(batch) >= 512:
                    writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=SCHEMA))
                    batch = []
            if batch:
                writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=SCHEMA))
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    return tally


def _summary(tally: _Tally, total: int, settings: AlignSettings, source: str) -> dict:
    positions, kinds = tally.positions, tally.kinds
    return {
        "samples": total,
        "kept": tally.kept,
        "dropped": dict(tally.dropped),
        "positions": positions,
        "position_shares": {name: float(n / positions) if positions else 0.0 for name, n in zip(KINDS, kinds)},
        "one_to_one_share": float((kinds[0] + kinds[1] + kinds[3]) / positions) if positions else 0.0,
        "method_shares": {name: n / tally.kept for name, n in sorted(tally.methods.items())},
        "student_tokenizer": settings.student_tokenizer,
        "method": settings.method,
        "top_k": settings.top_k,
        "tail": settings.tail,
        "source": source,
    }


def run_align(
    samples_path: str | os.PathLike, out: str | os.PathLike, settings: AlignSettings, num_proc: int = 1
) -> dict:
    """Align every sample, write ``targets.arrow`` and ``summary.json`` under ``out``; return the summary."""
    total = sum(len(chunk) for chunk in _chunks(samples_path, size=4096))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tally = write_targets(_results(samples_path, settings, num_proc), out_dir / TARGETS_FILE, total)
    summary = _summary(tally, total, settings, str(samples_path))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.info(
        "aligned %d of %d samples; student positions %s; aligners %s; dropped %s",
        tally.kept,
        total,
        {name: f"{share:.1%}" for name, share in summary["position_shares"].items()},
        {name: f"{share:.1%}" for name, share in summary["method_shares"].items()},
        dict(tally.dropped) or "none",
    )
    return summary
