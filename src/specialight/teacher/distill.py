"""``specialight distill``: sample chains of thought from a teacher, check them, store them resumably.

Every sample becomes one JSON line of ``<out>/samples.jsonl`` (schema: `specialight.data.records`), written
whole and fsynced before the next (a write that fails, on a full disk, is cut back and stops the run with
one line: resuming loses nothing); every sample is kept, correct or not (``--only-correct`` is a
filter when reading). A restarted run first cuts a torn last line (a crash mid-write), then skips every
``(question, sample index)`` already on disk, so after a crash or SIGKILL the same command continues
where it stopped: nothing lost, nothing twice. Sample ``i`` of question ``q`` is drawn with the seed
``hash(seed, q, i)``, so a seeded local teacher redraws exactly what an uninterrupted run would have.

``samples_per_request`` N > 1 asks an HTTP teacher for a question's samples N at a time (the API's ``n``):
indices ``[kN, kN + N)`` come from one request, so the prompt is sent and billed once per N samples. That
request carries the seed of its first index and the server draws all N choices from it: a rerun with the
same N redraws them where the server honours seeds, but they are other samples than N = 1 draws. A resumed
run sends a partly written group's request again and writes only its missing indices, so each index is
still written once. A server that refuses ``n > 1`` (or returns fewer choices) is asked one sample per
request, each with its own seed as with N = 1. ``summary.json`` reports the acceptance rate overall and per
question, and the requests and prompt and completion tokens this invocation used (the responses' ``usage``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from specialight.data.answers import extract_answer, is_correct
from specialight.data.formats import COT_TRIGGER, answer_target
from specialight.data.jsonl import DataError, read_jsonl
from specialight.data.records import SAMPLE_FIELDS, TeacherSample, prompt_hash, sample_from_row
from specialight.data.stops import QUESTION_LABELS
from specialight.data.tasks import Example
from specialight.teacher.completion import Completion, Teacher, TeacherError

logger = logging.getLogger(__name__)
SAMPLES_FILE = "samples.jsonl"


@dataclass
class DistillSettings:
    """How many samples, drawn how. ``concurrency``: requests in flight (a local teacher draws one sample at
    a time); ``samples_per_request``: samples per request (the API's ``n``; the prompt is sent once per that
    many; a server that refuses it is asked one sample per request)."""

    num_samples: int = 40
    temperature: float = 0.5
    max_tokens: int = 256
    top_k: int = 5
    seed: int = 0
    concurrency: int = 4
    samples_per_request: int = 1


def sample_seed(seed: int, question_id: str, index: int) -> int:
    """The seed of one sample: stable across runs, processes and Python versions."""
    digest = hashlib.sha256(f"{seed}:{question_id}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def build_prompt(template: str, question: str) -> str:
    """The few-shot template followed by the question in the template's own style (``Question:`` or ``Q:``)."""
    question_label, short_label = QUESTION_LABELS
    label = question_label if question_label in template else short_label
    return f"{template.strip()}\n\n{label} {question.strip()}\n{COT_TRIGGER}\n"


def repair(path: Path) -> set[tuple[str, int]]:
    """Cut a torn last line (no newline) and return the keys already written; a corrupt complete line is
    an error naming it."""
    if not path.is_file():
        return set()
    done = set()
    for where, row in read_jsonl(path, SAMPLE_FIELDS, repair=True):
        sample = sample_from_row(row, where)
        if sample.key in done:
            raise DataError(f"{where}: sample {sample.key} appears twice")
        done.add(sample.key)
    return done


def _work(
    questions: list[Example], num_samples: int, done: set[tuple[str, int]], per_request: int = 1
) -> list[tuple[Example, int, list[int]]]:
    """``(question, first index, missing indices)`` of each request still to send. Groups are fixed,
    ``per_request`` indices from 0 whatever is on disk, so a resumed run sends what an uninterrupted one
    would."""
    work = []
    for question in questions:
        for start in range(0, num_samples, per_request):
            group = range(start, min(start + per_request, num_samples))
            missing = [i for i in group if (question.id, i) not in done]
            if missing:
                work.append((question, start, missing))
    return work


def _open_run(out: str | os.PathLike) -> tuple[Path, set[tuple[str, int]]]:
    """The samples file of a run folder (created if needed) and the keys already in it (after `repair`)."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / SAMPLES_FILE
    return path, repair(path)


def write_all(handle: io.RawIOBase, data: bytes) -> None:
    """Write all of ``data`` to an unbuffered file (a raw write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[handle.write(view) :]


class SampleWriter:
    """Appends samples to ``samples.jsonl`` as whole lines, each durable before the next (safe across
    threads), with a progress bar of ``total`` showing the share of correct answers.

    A failed write (a full disk: ``ENOSPC``) cuts the file back to its last whole line and becomes a
    `DataError` of one line: every sample written before it is kept, and the same command run again, with
    room on the disk, resumes after them."""

    def __init__(self, path: Path, total: int = 0, progress: bool = False, label: str = "distill") -> None:
        self.path, self.written, self.correct = path, 0, 0
        self._file = path.open("ab", buffering=0)
        self._lock = threading.Lock()
        self._bar = tqdm(total=total, desc=label, unit="sample", disable=not progress)

    def append(self, samples: list[TeacherSample]) -> None:
        with self._lock:
            for sample in samples:
                self._append(sample)
                self.written += 1
                self.correct += int(bool(sample.correct))
            self._bar.update(len(samples))
            self._bar.set_postfix(accepted=f"{self.correct / max(self.written, 1):.0%}")

    def _append(self, sample: TeacherSample) -> None:
        end = self._file.seek(0, os.SEEK_END)
        try:
            write_all(self._file, (sample.to_json() + "\n").encode("utf-8"))
            os.fsync(self._file.fileno())
        except OSError as err:
            os.ftruncate(self._file.fileno(), end)  # a torn line would be cut on resume; cut it now
            reason = err.strerror or type(err).__name__
            raise DataError(
                f"{self.path}: {reason} after {self.written} sample(s) written by this run; every whole line is "
                "kept: make room and run the same command again to resume"
            ) from None

    def close(self) -> None:
        self._bar.close()
        self._file.close()

    def __enter__(self) -> SampleWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class _Drawer:
    """Draws one request's samples from the teacher and checks them into records."""

    teacher: Teacher
    template: str
    settings: DistillSettings

    def __post_init__(self) -> None:
        self.template_hash = prompt_hash(self.template)

    def record(self, question: Example, index: int, completion: Completion) -> TeacherSample:
        name = self.teacher.name
        if not completion.tokens:
            raise TeacherError(f"{name}: empty completion for {question.id} sample {index}")
        answer = extract_answer(completion.text, question.task)
        correct = is_correct(completion.text, question.answer, question.task)
        sample = completion.to_sample(question.id, index, self.template_hash, name, answer, correct)
        return sample.validate(f"{name} {question.id}#{index}")

    def draw(self, question: Example, start: int, missing: list[int]) -> list[TeacherSample]:
        """The samples ``missing`` of the request starting at index ``start`` (``n`` at once where the
        teacher gives it, else one request per index)."""
        settings, teacher = self.settings, self.teacher
        asked = (build_prompt(self.template, question.question), settings.temperature, settings.max_tokens)
        asked += (settings.top_k,)
        size = min(settings.samples_per_request, settings.num_samples - start)
        many = teacher.sample_many(*asked, sample_seed(settings.seed, question.id, start), size) if size > 1 else None
        if many is None:
            drawn = [(i, teacher.sample(*asked, sample_seed(settings.seed, question.id, i))) for i in missing]
        else:
            drawn = [(start + j, c) for j, c in enumerate(many) if start + j in missing]
        return [self.record(question, index, completion) for index, completion in drawn]


def _draw_all(todo: list[tuple[Example, int, list[int]]], drawer: _Drawer, writer: SampleWriter) -> None:
    """Every request of ``todo`` through a pool (``concurrency`` in flight for a concurrent teacher), each
    result written as it comes; on an error, requests not yet started are cancelled."""
    workers = max(drawer.settings.concurrency, 1) if drawer.teacher.concurrent else 1
    pending: set[Future] = set()
    with ThreadPoolExecutor(workers) as pool:
        try:
            for question, start, missing in todo:
                pending.add(pool.submit(drawer.draw, question, start, missing))
                if len(pending) >= 2 * workers:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        writer.append(future.result())
            for future in pending:
                writer.append(future.result())
        finally:
            for future in pending:
                future.cancel()


def _close_run(path: Path, summary: dict) -> dict:
    """Write ``summary.json`` beside the samples file; return the summary."""
    (path.parent / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_distill(
    questions: list[Example],
    teacher: Teacher,
    template: str,
    out: str | os.PathLike,
    settings: DistillSettings,
    progress: bool = True,
) -> dict:
    """Sample every missing ``(question, index)``, append each to ``samples.jsonl``; return the summary."""
    if settings.samples_per_request < 1:
        raise ValueError(f"samples_per_request must be at least 1, got {settings.samples_per_request}")
    path, done = _open_run(out)
    todo = _work(questions, settings.num_samples, done, settings.samples_per_request)
    count = sum(len(missing) for _, _, missing in todo)
    logger.info("%d samples on disk, %d to draw from %s", len(done), count, teacher.name)
    used_before = teacher.usage.totals()
    drawer = _Drawer(teacher, template, settings)
    with SampleWriter(path, count, progress) as writer:
        _draw_all(todo, drawer, writer)
    used = {key: value - used_before[key] for key, value in teacher.usage.totals().items()}
    summary = summarize(path, questions, settings, teacher.name, drawer.template_hash, used)
    return _close_run(path, summary)


def summarize(
    path: Path,
    questions: list[Example],
    settings: DistillSettings,
    teacher: str,
    template_hash: str,
    usage: dict[str, int] | None = None,
) -> dict:
    """Acceptance overall and per question, from what is on disk; ``usage``: this invocation's requests and
    tokens, where known."""
    per_question: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for _, row in read_jsonl(path, ("question_id", "correct")):
        per_question[row["question_id"]][0] += int(bool(row["correct"]))
        per_question[row["question_id"]][1] += 1
    total = sum(n for _, n in per_question.values())
    correct = sum(c for c, _ in per_question.values())
    keys = ("num_samples", "temperature", "max_tokens", "top_k", "seed", "samples_per_request")
    return {
        "teacher": teacher,
        "prompt_hash": template_hash,
        "questions": len(questions),
        "samples": total,
        "correct": correct,
        "acceptance": correct / total if total else 0.0,
        "questions_with_a_correct_sample": sum(1 for c, _ in per_question.values() if c),
        "per_question": {q: {"correct": c, "samples": n, "acceptance": c / n} for q, (c, n) in per_question.items()},
        "settings": {k: getattr(settings, k) for k in keys},
        **({"usage": usage} if usage is not None else {}),
    }


def run_scoring(
    questions: list[Example], teacher, template: str, out: str | os.PathLike, settings: DistillSettings
) -> dict:
    """Teacher-forced top-k on each question's gold rationale (sample index 0), resumably, like `run_distill`."""
    path, done = _open_run(out)
    template_hash = prompt_hash(template)
    todo = _work(questions, 1, done)
    with SampleWriter(path, len(todo), progress=True, label="score") as writer:
        for question, _, _ in todo:
            if not question.rationale:
                raise DataError(f"{question.id}: no gold rationale to score")
            prompt = build_prompt(template, question.question)
            target = answer_target(question.answer, question.rationale)
            sample = teacher.score_sample(question.id, prompt, target, question.answer, settings.top_k, template_hash)
            writer.append([sample])
    return _close_run(path, summarize(path, questions, settings, teacher.name, template_hash))
