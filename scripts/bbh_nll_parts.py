"""Where a change of ``nll_bbh_cot`` comes from: the reasoning chain, or its closing answer sentence.

Each reference CoT completion of the BBH authors (``... So the answer is X.``) is split at its last
``So the answer is``; the script measures, for the untrained student and a checkpoint, the mean per-token NLL
of the whole completion, of the chain alone (given the task's 3-shot prompt) and of the answer sentence alone
(given the prompt and the chain), and prints each paired change with its 95% bootstrap interval. The "whole"
row reproduces the run's own ``nll_bbh_cot`` change.

    python scripts/bbh_nll_parts.py RUN/best.ckpt [--per-task 3] [--model smollm2-135m-instruct]

Offline: set ``SPECIALIGHT_DATA_DIR`` (and ``SPECIALIGHT_TOKENIZERS``, ``HF_HUB_OFFLINE=1``) as ``make`` does.
"""

from __future__ import annotations

import argparse
import json
import re

import torch

from specialight.core.models import load_student, load_tokenizer
from specialight.evaluation.likelihood import ReferenceText, build_texts, paired_difference, summarize, token_nlls
from specialight.training.module import SpecializationModule

ANSWER = re.compile(r"\s*So the answer is[^\n]*$")


def parts(texts: list[ReferenceText]) -> dict[str, list[ReferenceText]]:
    """The whole texts, and the chain and answer-sentence texts of those that end with an answer sentence."""
    split = {"whole": texts, "chain": [], "answer": []}
    for text in texts:
        found = ANSWER.search(text.target)
        if found and found.start() > 0:
            chain, answer = text.target[: found.start()], text.target[found.start() :]
            split["chain"].append(ReferenceText(text.suite, text.id, text.prompt, chain))
            split["answer"].append(ReferenceText(text.suite, text.id, text.prompt + chain, answer))
    return split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="a checkpoint of `specialight fit` (best.ckpt, last.ckpt)")
    parser.add_argument("--per-task", type=int, default=3, help="reference completions per BBH task (the run's limit)")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="the untrained student")
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.model)
    models = {
        "untrained": load_student(args.model, torch.float32),
        "checkpoint": SpecializationModule.load_from_checkpoint(args.ckpt, map_location="cpu").model.float(),
    }
    groups = parts(build_texts("nll_bbh_cot", limit=args.per_task))
    for part, texts in groups.items():
        nll = {
            name: {f"{t.suite}/{t.id}": v for t, v in zip(texts, token_nlls(model, tokenizer, texts), strict=True)}
            for name, model in models.items()
        }
        row = {
            "part": part,
            "n": len(texts),
            "untrained": summarize(list(nll["untrained"].values())),
            "checkpoint": summarize(list(nll["checkpoint"].values())),
            "change": paired_difference(nll["untrained"], nll["checkpoint"]),
        }
        print(json.dumps(row))


if __name__ == "__main__":
    main()
