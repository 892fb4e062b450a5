"""Teacher-forced likelihood suites: how much probability a model puts on known-good text (beyond the paper).

Accuracy needs hundreds of questions to move by a few points; the mean per-token negative log-likelihood
(NLL) of fixed reference text separates two checkpoints of a run with far fewer examples, because every
token contributes. Suites (forward passes only, no generation):

- ``nll_gsm8k_dev_zero_shot`` / ``nll_gsm8k_dev_in_context``: the gold GSM8K dev rationales followed by
  ``The answer is X.``, after the zero-shot CoT prompt, or after the paper's 4-shot CoT prompt file;
  ``nll_gsm8k_heldout_zero_shot`` / ``nll_gsm8k_heldout_in_context``: the same for the held-aside tune rows
  (GSM8K ``heldout``: choosing a recipe without dev);
- ``nll_bbh_cot``: the BBH authors' code-davinci-002 CoT completions that their scorer grades correct
  (``bbh-reference-outputs/``), each after its task's 3-shot CoT prompt;
- ``nll_bbh_ao``: the gold answer after the task's answer-only prompt.

A suite's score is the mean over examples of each example's mean per-token NLL (every example weighs the
same, so a bootstrap over examples gives its 95% interval). `paired_difference` compares two evaluations of
the same examples (two checkpoints) by a paired bootstrap: the interval of the mean per-example change.
Prompts longer than the model's context lose tokens at their left edge (a leading BOS stays, as in
generation); the target is never cut.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from specialight.data.formats import answer_target, question_prompt, render
from specialight.data.jsonl import read_jsonl
from specialight.data.stops import EVALUATION_STOP
from specialight.data.tasks import BBH_TASKS, DataError, load_bbh_prompt, load_examples, resolve_data_dir
from specialight.evaluation.batching import MIN_SHARED_PREFIX, prefix_clusters
from specialight.evaluation.generation import Decoder, context_length, cut_left
from specialight.evaluation.mode import evaluating
from specialight.evaluation.suites import bbh_query

LIKELIHOOD_SUITES = tuple(f"nll_gsm8k_{s}_{p}" for s in ("dev", "heldout") for p in ("zero_shot", "in_context")) + (
    "nll_bbh_cot",
    "nll_bbh_ao",
)
REFERENCE_COT = "bbh-reference-outputs/code-davinci-002-cot.jsonl"
DEFAULT_MATH_PROMPT = "prompts/flan_t5_cot_specialization/prompt_simple_4_cases.txt"
BOOTSTRAP_SAMPLES = 2000
LOGITS_BUDGET = 64 * 1024 * 1024  # logit elements per forward pass (256 MB in fp32)


@dataclass(frozen=True)
class ReferenceText:
    """One prompt and the reference continuation whose likelihood is measured."""

    suite: str
    id: str
    prompt: str
    target: str


def _reference_cot(data_dir, tasks: list[str]) -> dict[tuple[str, int], str]:
    """``(task, index) -> completion`` of the reference CoT outputs that the BBH scorer grades correct."""
    from specialight.data.answers import is_correct

    path = resolve_data_dir(data_dir) / REFERENCE_COT
    if not path.is_file():
        raise DataError(f"missing BBH reference outputs: {path}")
    kept: dict[tuple[str, int], str] = {}
    for where, row in read_jsonl(path, ("task", "index", "prediction", "target")):
        task, prediction, target = row["task"], row["prediction"], row["target"]
        try:
            index = int(row["index"])
        except (TypeError, ValueError) as err:
            raise DataError(f"{where}: index must be a whole number, got {row['index']!r}") from err
        if task in tasks and is_correct(prediction, target, f"bbh/{task}", cot=True):
            kept[(task, index)] = prediction.strip()
    return kept


def build_texts(
    suite: str,
    data_dir: str | os.PathLike | None = None,
    newline: str | None = None,
    limit: int | None = None,
    bbh_tasks: list[str] | None = None,
    prompt_file: str | None = None,
) -> list[ReferenceText]:
    """The texts of one likelihood suite; ``limit`` caps the GSM8K suites and each BBH task."""
    if suite not in LIKELIHOOD_SUITES:
        raise DataError(f"unknown likelihood suite {suite!r}; known: {', '.join(LIKELIHOOD_SUITES)}")
    if suite.startswith("nll_gsm8k_"):
        return _gsm8k_texts(suite, data_dir, newline, limit, prompt_file)
    return _bbh_texts(suite, data_dir, newline, limit, list(bbh_tasks or BBH_TASKS))


def _gsm8k_texts(suite: str, data_dir, newline: str | None, limit: int | None, prompt_file: str | None):
    """GSM8K dev (or heldout) rationales after the zero-shot CoT prompt, or after the 4-shot prompt file
    (in_context)."""
    prefix = ""
    if suite.endswith("in_context"):
        path = Path(prompt_file) if prompt_file else resolve_data_dir(data_dir) / DEFAULT_MATH_PROMPT
        if not path.is_file():
            raise DataError(f"missing prompt file: {path}")
        prefix = path.read_text(encoding="utf-8").strip() + "\n\n"
    return [
        ReferenceText(
            suite,
            e.id,
            render(prefix + question_prompt(e.question, cot=True), newline),
            render(answer_target(e.answer, e.rationale), newline),
        )
        for e in load_examples("gsm8k", suite.split("_")[2], data_dir)[:limit]
    ]


def _bbh_texts(suite: str, data_dir, newline: str | None, limit: int | None, tasks: list[str]):
    """Per BBH task: the graded-correct reference CoT (nll_bbh_cot) or the gold answer (nll_bbh_ao)."""
    style = "cot" if suite == "nll_bbh_cot" else "ao"
    references = _reference_cot(data_dir, tasks) if style == "cot" else {}
    texts = []
    for task in tasks:
        prompt = load_bbh_prompt(task, style, data_dir)
        chosen = []
        for example in load_examples(f"bbh/{task}", "test", data_dir):
            index = int(example.id.rsplit("/", 1)[1])
            target = references.get((task, index)) if style == "cot" else example.answer
            if target:
                chosen.append((example, target))
        for example, target in chosen[:limit]:
            text = f"{prompt}\n\n{bbh_query(example.question, style)}"
            texts.append(
                ReferenceText(f"{suite}/{task}", example.id, render(text, newline), render(" " + target, newline))
            )
    return texts


def token_nlls(
    model,
    tokenizer,
    texts: list[ReferenceText],
    batch_size: int = 8,
    progress: bool = True,
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> list[float]:
    """Each text's mean per-token NLL of its target given its prompt (nats), in the texts' order."""
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    pairs = encode_pairs(tokenizer, texts, None if encoder_decoder else context_length(model.config))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results = [0.0] * len(pairs)
    device = next(model.parameters()).device
    minimum = None if encoder_decoder else MIN_SHARED_PREFIX
    shown = {"desc": "likelihood", "unit": "text", "disable": not progress, "leave": False}
    with evaluating(model, context) as per_forward, tqdm(total=len(pairs), **shown) as bar:  # weights cast once
        decoder = Decoder(model, tokenizer, EVALUATION_STOP, per_forward)
        for prefix, group in prefix_clusters([prompt for prompt, _ in pairs], minimum):
            cache = decoder.prefill(pairs[group[0]][0][:prefix]) if prefix else None
            order = sorted(group, key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
            for rows in _batches(order, [len(pairs[i][1]) for i in order], batch_size, model.config):
                batch = [(pairs[i][0][prefix:], pairs[i][1]) for i in rows]
                values = _batch_nll(model, batch, pad, encoder_decoder, device, per_forward, (prefix, cache, decoder))
                for row, value in zip(rows, values, strict=True):
                    results[row] = value
                bar.update(len(rows))
    return results


def encode_pairs(tokenizer, texts: list[ReferenceText], limit: int | None) -> list[tuple[list[int], list[int]]]:
    """``(prompt ids, target ids)`` of each text; with a position ``limit`` (decoder-only) the prompt loses
    tokens at its left edge, keeping a leading BOS as generation does (`generation.cut_left`)."""
    pairs = []
    for text in texts:
        prompt = tokenizer.encode(text.prompt, add_special_tokens=True)
        target = tokenizer.encode(text.target, add_special_tokens=False)
        if not target:
            raise DataError(f"{text.suite} {text.id}: the reference text has no tokens")
        if limit is not None:
            prompt = cut_left(prompt, max(limit - len(target), 1), tokenizer.bos_token_id)
        pairs.append((prompt, target))
    return pairs


def _batch_nll(model, pairs, pad: int, encoder_decoder: bool, device, context, shared=None) -> list[float]:
    """Mean per-token NLL of each ``(prompt ids, target ids)`` pair of one batch. ``shared`` is ``(prefix
    length, its KV cache, the Decoder)`` where the batch's prompts continue a shared prefix (decoder-only:
    ``pairs`` then hold the tokens after it), or None."""
    if encoder_decoder:
        logits, labels = _seq2seq_logits(model, pairs, pad, device, context)
    else:
        logits, labels = _decoder_logits(model, pairs, pad, device, context, shared)
    labels = labels.to(logits.device)
    # row by row: a float copy of one row's logits at a time, not of the batch's [B, T, V]
    return [
        torch.nn.functional.cross_entropy(logits[row][labels[row] >= 0].float(), labels[row][labels[row] >= 0]).item()
        for row in range(len(pairs))
    ]


def _seq2seq_logits(model, pairs, pad: int, device, context) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder-decoder: the decoder's logits ``[B, T, V]`` and labels ``[B, T]`` (-100 past a target)."""
    size = len(pairs)
    source, target = max(len(p) for p, _ in pairs), max(len(t) for _, t in pairs)
    input_ids = torch.full((size, source), pad, dtype=torch.long)
    attention = torch.zeros((size, source), dtype=torch.long)
    labels = torch.full((size, target), -100, dtype=torch.long)
    for row, (prompt, tokens) in enumerate(pairs):
        input_ids[row, : len(prompt)], attention[row, : len(prompt)] = torch.tensor(prompt), 1
        labels[row, : len(tokens)] = torch.tensor(tokens)
    with context():
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), labels=labels.to(device))
    return logits.logits, labels


def _decoder_logits(model, pairs, pad: int, device, context, shared) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder-only, left-padded ``[prefix][padding][prompt][target]``: the logits that predict the target
    positions ``[B, T, V]`` and their labels ``[B, T]`` (-100 on padding)."""
    size = len(pairs)
    prefix, prefix_cache, decoder = shared if shared is not None and shared[0] else (0, None, None)
    width = max(len(p) + len(t) for p, t in pairs)
    input_ids = torch.full((size, width), pad, dtype=torch.long)
    attention = torch.zeros((size, prefix + width), dtype=torch.long)
    attention[:, :prefix] = 1
    labels = torch.full((size, width), -100, dtype=torch.long)
    for row, (prompt, tokens) in enumerate(pairs):
        ids = prompt + tokens
        input_ids[row, width - len(ids) :], attention[row, prefix + width - len(ids) :] = torch.tensor(ids), 1
        labels[row, width - len(tokens) :] = torch.tensor(tokens)
    keep = max(len(t) for _, t in pairs) + 1
    # only the target's positions need the vocabulary projection
    only = {"logits_to_keep": keep} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    if prefix_cache is not None:  # each row continues the shared prefix's cache
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(size)
        only |= {decoder.cache_name: cache, "use_cache": True}
    # left padding: positions count from each row's first real token, as generation does
    positions = (attention.cumsum(1) - 1).clamp_min(0)[:, prefix:]
    with context():
        logits = model(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            position_ids=positions.to(device),
            **only,
        ).logits
    return logits[:, -keep:-1], labels[:, -keep + 1 :]


def _batches(order: list[int], target_lengths: list[int], batch_size: int, config) -> list[list[int]]:
    """``order`` in batches of at most ``batch_size`` texts whose target logits ``[B, T, V]`` stay within
    `LOGITS_BUDGET` elements (long reference texts with a large vocabulary go in smaller batches)."""
    vocabulary = int(getattr(config, "vocab_size", 0) or 1)
    batches: list[list[int]] = [[]]
    longest = 0
    for index, length in zip(order, target_lengths, strict=True):
        wider = max(longest, length + 1)
        if batches[-1] and (
            len(batches[-1]) == batch_size or (len(batches[-1]) + 1) * wider * vocabulary > LOGITS_BUDGET
        ):
            batches.append([])
            wider = length + 1
        batches[-1].append(index)
        longest = wider
    return [batch for batch in batches if batch]


def bootstrap_interval(values: list[float] | np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of ``values`` (resampling examples)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(BOOTSTRAP_SAMPLES, data.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def summarize(values: list[float]) -> dict[str, float | int]:
    """``{"mean", "n", "low", "high"}`` of per-example NLLs."""
    low, high = bootstrap_interval(values)
    return {"mean": float(np.mean(values)) if values else float("nan"), "n": len(values), "low": low, "high": high}


def paired_difference(before: dict[str, float], after: dict[str, float], seed: int = 0) -> dict[str, float | int]:
    """Mean of ``after - before`` over the examples both scored, with its 95% paired-bootstrap interval."""
    common = sorted(before.keys() & after.keys())
    if not common:
        raise ValueError("the two evaluations share no example: a paired difference needs the same examples")
    change = np.array([after[key] - before[key] for key in common])
    low, high = bootstrap_interval(change, seed)
    return {"mean": float(change.mean()), "n": len(common), "low": low, "high": high}
