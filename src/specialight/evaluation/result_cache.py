"""A disk cache of evaluations, so that a second run does not evaluate the same untouched base model again.

An entry is keyed by a sha256 of the model's weights (every ``state_dict`` tensor's name, dtype, shape and
bytes), of the suite settings (every `EvalSettings` field), of what else shapes the results (the caller
names it: the suite kinds run, the numeric precision, the number of ranks, the tokenizer) and of
`SCORER_VERSION`, the version of the code that generates and scores completions. It holds the `Results`
(``results.json``, per-example likelihoods included) and the files the evaluation wrote (``<suite>.jsonl``,
``nll.jsonl``, ``summary.json``), which a hit copies into the new run's folder, so both runs keep the same
per-example records. Entries live under
``$SPECIALIGHT_CACHE/evaluations`` (default ``~/.cache/specialight/evaluations``) and are written whole
(a temporary folder renamed into place) or not at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from specialight.evaluation.results import Results
from specialight.evaluation.settings import EvalSettings

SCORER_VERSION = 2  # raise when generation, prompting or scoring changes what an evaluation returns
RESULTS_FILE = "results.json"


def cache_root() -> Path:
    """``$SPECIALIGHT_CACHE/evaluations`` (default ``~/.cache/specialight/evaluations``)."""
    return Path(os.environ.get("SPECIALIGHT_CACHE", Path.home() / ".cache" / "specialight")) / "evaluations"


def weights_digest(model) -> str:
    """sha256 over a model's ``state_dict``: each tensor's name, dtype, shape and bytes, in name order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def evaluation_key(
    model, settings: EvalSettings, context: dict[str, Any] | None = None, version: int | None = None
) -> str:
    """The cache key of evaluating ``model`` with ``settings``; ``context``: whatever else shapes the results
    (JSON values); ``version``: the scorer's (default `SCORER_VERSION`, read when called)."""
    described = {
        "weights": weights_digest(model),
        "settings": dataclasses.asdict(settings),
        "context": context or {},
        "scorer_version": SCORER_VERSION if version is None else version,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def _to_json(results: Results) -> dict[str, Any]:
    return {f.name: getattr(results, f.name) for f in dataclasses.fields(Results)}


def _from_json(stored: dict[str, Any]) -> Results:
    results = Results(**stored)
    results.intervals = {suite: (low, high) for suite, (low, high) in results.intervals.items()}
    return results


def load(key: str, out: str | os.PathLike, root: str | os.PathLike | None = None) -> Results | None:
    """The cached `Results` of ``key``, its files copied into ``out``; None on a miss."""
    entry = Path(root or cache_root()) / key
    if not (entry / RESULTS_FILE).is_file():
        return None
    results = _from_json(json.loads((entry / RESULTS_FILE).read_text()))
    Path(out).mkdir(parents=True, exist_ok=True)
    for path in entry.iterdir():
        if path.name != RESULTS_FILE:
            shutil.copyfile(path, Path(out) / path.name)
    return results


def store(key: str, results: Results, out: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Keep ``results`` and the files the evaluation wrote in ``out`` under ``key``; returns the entry."""
    base = Path(root or cache_root())
    base.mkdir(parents=True, exist_ok=True)
    entry = base / key
    staging = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=base))
    for path in Path(out).iterdir():
        if path.is_file():
            shutil.copyfile(path, staging / path.name)
    (staging / RESULTS_FILE).write_text(json.dumps(_to_json(results)))
    try:
        staging.rename(entry)
    except OSError:  # another run stored the same key first: keep its entry
        shutil.rmtree(staging, ignore_errors=True)
    return entry
