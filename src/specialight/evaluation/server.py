"""Completions for evaluation from an OpenAI-compatible server (vLLM on a GPU, llama.cpp's ``llama-server``).

`ServerCompleter` plugs into `Evaluator` in place of in-process generation: the same suites, prompts
(fitted to the context by `specialight.evaluation.context`, with the tokenizer and context of the served
model), stop string (`specialight.data.stops`) and scoring. Each prompt goes to ``/v1/completions`` greedily
(``temperature=0``, ``max_tokens`` = the item's budget, ``stop=["Q:"]``), up to ``concurrency`` requests at
once, each retried by the ``openai`` client as the teacher's are (`specialight.teacher.backends.OpenAITeacher.call`).

Resumable per example: every completion is appended to ``<out>/completions/<suite family>.jsonl`` as one
flushed, fsynced JSON line (``suite``, ``id``, ``completion``) as soon as it arrives; a rerun after a crash
cuts a torn last line and asks only for the examples not yet on disk.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm

from specialight.data.jsonl import read_jsonl
from specialight.data.stops import EVALUATION_STOP, cut_at_stop
from specialight.evaluation.suites import EvalItem

logger = logging.getLogger(__name__)
COMPLETIONS_DIR = "completions"


class ServerCompleter:
    """Greedy completions of evaluation prompts from a served model.

    Args:
        served_model: the model name the server knows.
        base_url: e.g. ``http://127.0.0.1:8080/v1``.
        out_dir: run folder; completions go to ``<out_dir>/completions/`` (None: nothing kept, no resume).
        concurrency: requests in flight.
        api_key_env, timeout, max_retries: as for `specialight.teacher.backends.OpenAITeacher`.
    """

    def __init__(
        self,
        served_model: str,
        base_url: str,
        out_dir: str | os.PathLike | None = None,
        concurrency: int = 4,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 600.0,
        max_retries: int = 6,
    ) -> None:
        from specialight.teacher.backends import OpenAITeacher

        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.client = OpenAITeacher(
            served_model,
            base_url,
            api_key_env=api_key_env,
            timeout=timeout,
            max_retries=max_retries,
            stop=[EVALUATION_STOP],
        )
        self.folder = Path(out_dir) / COMPLETIONS_DIR if out_dir is not None else None
        self.concurrency = concurrency
        self._lock = threading.Lock()

    def _request(self, prompt: str, max_tokens: int) -> str:
        client = self.client
        response = client.call(
            lambda: client.client.completions.create(
                model=client.model, prompt=prompt, temperature=0.0, max_tokens=max_tokens, stop=[EVALUATION_STOP]
            )
        )
        return cut_at_stop(response.choices[0].text or "")

    def __call__(self, items: list[EvalItem], prompts: list[str], progress: bool = True) -> list[str]:
        """The completion of each ``(item, prompt)``, from disk when a previous run already got it."""
        done = self._load()
        completions = [done.get((item.suite, item.id)) for item in items]
        missing = [i for i, c in enumerate(completions) if c is None]
        if len(missing) < len(items):
            logger.info(
                "%d of %d completions already on disk; asking for %d",
                len(items) - len(missing),
                len(items),
                len(missing),
            )
        bar = tqdm(total=len(missing), desc="evaluate (server)", unit="ex", disable=not progress, leave=False)
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self._request, prompts[i], items[i].max_new_tokens): i for i in missing}
            try:
                for future in as_completed(futures):
                    index = futures[future]
                    completions[index] = future.result()
                    self._append(items[index], completions[index])
                    bar.update(1)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            finally:
                bar.close()
        return [c if c is not None else "" for c in completions]

    def _append(self, item: EvalItem, completion: str) -> None:
        if self.folder is None:
            return
        line = json.dumps({"suite": item.suite, "id": item.id, "completion": completion}, ensure_ascii=False)
        path = self.folder / f"{item.suite.split('/', 1)[0]}.jsonl"
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as handle:
                handle.write(line + "\n")
                handle.flush()
                os.fsync(handle.fileno())

    def _load(self) -> dict[tuple[str, str], str]:
        """``(suite, id) -> completion`` of every file in the folder, after cutting torn last lines."""
        done: dict[tuple[str, str], str] = {}
        if self.folder is None or not self.folder.is_dir():
            return done
        for path in sorted(self.folder.glob("*.jsonl")):
            for _, row in read_jsonl(path, ("suite", "id", "completion"), repair=True):
                done[(row["suite"], row["id"])] = row["completion"]
        return done
