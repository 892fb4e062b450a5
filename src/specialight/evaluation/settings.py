"""`EvalSettings`: how evaluation suites are run, the one definition `specialight evaluate` and
`specialight.training.callbacks.PeriodicEvaluation` both take (a plain dataclass: building a parser from it imports
nothing heavy)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalSettings:
    """How suites are run.

    Args:
        suites: suite names (`specialight.evaluation.suites`), e.g. ``[gsm8k_dev, mas_dev, bbh_ao, bbh_cot]``.
        limit: cap on each math suite and each BBH task (None: all).
        limits: per-suite caps overriding ``limit`` (``{bbh_cot: 5}``).
        prompt_file: in-context math prompt (default: the paper's ``prompt_simple_4_cases.txt``).
        bbh_tasks: a subset of the 27 BBH tasks (None: all).
        max_new_tokens: generation budget (the paper: 256).
        answer_only_max_new_tokens: budget for ``bbh_ao`` (answers are a few tokens).
        batch_size: prompts per generate call.
        data_dir: benchmark folder laid out like shared/data (default: $SPECIALIGHT_DATA_DIR or ./data).
    """

    suites: list[str]
    limit: int | None = None
    limits: dict[str, int] | None = None
    prompt_file: str | None = None
    bbh_tasks: list[str] | None = None
    max_new_tokens: int = 256
    answer_only_max_new_tokens: int = 32
    batch_size: int = 16
    data_dir: str | None = None
