"""``specialight distill``: sample chains of thought from a teacher, check them, store them resumably.

Every sample becomes one JSON line of ``<out>/samples.jsonl`` (schema: `specialight.data.records`), written
whole, flushed and fsynced before the next; every sample is kept, correct or not (``--only-correct`` is a
filter when reading). A restarted run first cuts a torn last line (a crash mid-write), then skips every
``(question, sample index)`` already on disk, so after a crash or SIGKILL the same command continues
where it stopped: nothing lost, nothing twice. Sample ``i`` of question ``q`` is drawn with the seed
``hash(seed, q, i)``, so a seeded local teacher redraws exactly what an uninterrupted run would have.
``summary.json`` reports the acceptance rate overall and per question.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from specialight.data.answers import extract_answer, is_correct
from specialight.data.formats import COT_TRIGGER, answer_target
from specialight.data.records import TeacherSample, parse_sample, prompt_hash, whole_lines
from specialight.data.tasks import DataError, Example
from specialight.teacher.backends import Teacher, TeacherError

logger = logging.getLogger(__name__)
SAMPLES_FILE = "samples.jsonl"


@dataclass
class DistillSettings:
    """How many samples, drawn how."""

    num_samples: int = 40
    temperature: float = 0.5
    max_tokens: int = 256
    top_k: int = 5
    seed: int = 0
    concurrency: int = 4


def sample_seed(seed: int, question_id: str, index: int) -> int:
    """The seed of one sample: stable across runs, processes and Python versions."""
    digest = hashlib.sha256(f"{seed}:{question_id}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def build_prompt(template: str, question: str) -> str:
    """The few-shot template followed by the question in the template's own style (``Question:`` or ``Q:``)."""
    label = "Question:" if "Question:" in template else "Q:"
    return f"{template.strip()}\n\n{label} {question.strip()}\n{COT_TRIGGER}\n"


def repair(path: Path) -> set[tuple[str, int]]:
    """Cut a torn last line (no newline) and return the keys already written; a corrupt complete line is
    an error naming it."""
    if not path.is_file():
        return set()
    done = set()
    for number, line in whole_lines(path):
        sample = parse_sample(line, f"{path}:{number}")
        if sample.key in done:
            raise DataError(f"{path}:{number}: sample {sample.key} appears twice")
        done.add(sample.key)
    return done


def _work(questions: list[Example], num_samples: int, done: set[tuple[str, int]]) -> list[tuple[Example, int]]:
    return [(q, i) for q in questions for i in range(num_samples) if (q.id, i) not in done]


def _open_run(out: str | os.PathLike) -> tuple[Path, set[tuple[str, int]]]:
    """The samples file of a run folder (created if needed) and the keys already in it (after `repair`)."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / SAMPLES_FILE
    return path, repair(path)


def _append(handle, sample: TeacherSample) -> None:
    """Write one sample as a whole line and make it durable before the next one."""
    handle.write(sample.to_json() + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def _close_run(
    path: Path, questions: list[Example], settings: DistillSettings, teacher: str, template_hash: str
) -> dict:
    summary = summarize(path, questions, settings, teacher, template_hash)
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
    path, done = _open_run(out)
    todo = _work(questions, settings.num_samples, done)
    template_hash = prompt_hash(template)
    logger.info("%d samples on disk, %d to draw from %s", len(done), len(todo), teacher.name)
    lock = threading.Lock()
    accepted = [0, 0]

    def draw(question: Example, index: int) -> TeacherSample:
        completion = teacher.sample(
            build_prompt(template, question.question),
            settings.temperature,
            settings.max_tokens,
            settings.top_k,
            sample_seed(settings.seed, question.id, index),
        )
        if not completion.tokens:
            raise TeacherError(f"{teacher.name}: empty completion for {question.id} sample {index}")
        return TeacherSample(
            question_id=question.id,
            sample_index=index,
            text=completion.text,
            tokens=completion.tokens,
            top_tokens=completion.top_tokens,
            top_logprobs=completion.top_logprobs,
            prompt_hash=template_hash,
            teacher=teacher.name,
            finish_reason=completion.finish_reason,
            answer=extract_answer(completion.text, question.task),
            correct=is_correct(completion.text, question.answer, question.task),
        ).validate(f"{teacher.name} {question.id}#{index}")

    bar = tqdm(total=len(todo), desc="distill", unit="sample", disable=not progress)
    with path.open("a", encoding="utf-8") as handle, ThreadPoolExecutor(max(settings.concurrency, 1)) as pool:

        def write(sample: TeacherSample) -> None:
            with lock:
                _append(handle, sample)
                accepted[0] += int(bool(sample.correct))
                accepted[1] += 1
                bar.update(1)
                bar.set_postfix(accepted=f"{accepted[0] / accepted[1]:.0%}")

        pending: set[Future] = set()
        queue: Iterator[tuple[Example, int]] = iter(todo)
        try:
            for question, index in queue:
                pending.add(pool.submit(draw, question, index))
                if len(pending) >= 2 * max(settings.concurrency, 1):
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        write(future.result())
            for future in pending:
                write(future.result())
        finally:
            bar.close()
            for future in pending:
                future.cancel()
    return _close_run(path, questions, settings, teacher.name, template_hash)


def summarize(
    path: Path, questions: list[Example], settings: DistillSettings, teacher: str, template_hash: str
) -> dict:
    """Acceptance overall and per question, from what is on disk."""
    per_question: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        per_question[record["question_id"]][0] += int(bool(record["correct"]))
        per_question[record["question_id"]][1] += 1
    total = sum(n for _, n in per_question.values())
    correct = sum(c for c, _ in per_question.values())
    return {
        "teacher": teacher,
        "prompt_hash": template_hash,
        "questions": len(questions),
        "samples": total,
        "correct": correct,
        "acceptance": correct / total if total else 0.0,
        "questions_with_a_correct_sample": sum(1 for c, _ in per_question.values() if c),
        "per_question": {q: {"correct": c, "samples": n, "acceptance": c / n} for q, (c, n) in per_question.items()},
        "settings": {k: getattr(settings, k) for k in ("num_samples", "temperature", "max_tokens", "top_k", "seed")},
    }


def run_scoring(
    questions: list[Example], teacher, template: str, out: str | os.PathLike, settings: DistillSettings
) -> dict:
    """Teacher-forced top-k on each question's gold rationale (sample index 0), resumably, like `run_distill`."""
    path, done = _open_run(out)
    template_hash = prompt_hash(template)
    with path.open("a", encoding="utf-8") as handle:
        for question, _ in tqdm(_work(questions, 1, done), desc="score", unit="sample"):
            if not question.rationale:
                raise DataError(f"{question.id}: no gold rationale to score")
            prompt, target = (
                build_prompt(template, question.question),
                answer_target(question.answer, question.rationale),
            )
            _append(
                handle,
                teacher.score_sample(question.id, prompt, target, question.answer, settings.top_k, template_hash),
            )
    return _close_run(path, questions, settings, teacher.name, template_hash)
