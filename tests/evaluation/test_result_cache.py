"""The disk cache of an evaluation: the same weights, settings and scorer give back the same results and
files; any of them changed is a miss (a whole evaluation through it: tests/training/test_callbacks.py)."""

import dataclasses
import json

import pytest
import torch

from specialight.evaluation import result_cache
from specialight.evaluation.results import Results, write_results
from specialight.evaluation.settings import EvalSettings

CONTEXT = {"kinds": ["generation", "likelihood"], "precision": "32-true", "ranks": 1}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3).to(torch.bfloat16))


def test_a_stored_evaluation_comes_back_with_its_results_and_files(tmp_path):
    results = Results()
    results.add_counts("svamp_dev", 1, 2, 0)
    results.add_likelihood("nll_gsm8k_dev_zero_shot", {"gsm8k/dev/0": 1.25, "gsm8k/dev/1": 0.5})
    records = [{"suite": "svamp_dev", "id": f"svamp/{i}", "completion": "x", "correct": i == 0} for i in range(2)]
    write_results(tmp_path / "first", results, records)
    root = tmp_path / "cache"
    assert result_cache.load("k" * 64, tmp_path / "unused", root) is None
    result_cache.store("k" * 64, results, tmp_path / "first", root)
    loaded = result_cache.load("k" * 64, tmp_path / "second", root)
    assert loaded == results and loaded.summary() == results.summary()
    names = sorted(p.name for p in (tmp_path / "first").iterdir())
    assert names == ["nll.jsonl", "summary.json", "svamp_dev.jsonl"]
    assert names == sorted(p.name for p in (tmp_path / "second").iterdir())
    for name in names:
        assert (tmp_path / "second" / name).read_bytes() == (tmp_path / "first" / name).read_bytes()
    assert json.loads((root / ("k" * 64) / result_cache.RESULTS_FILE).read_text())["counts"] == {"svamp_dev": 2}


def test_other_weights_settings_context_or_scorer_version_miss(model, monkeypatch):
    settings = EvalSettings(suites=["svamp_dev"], limit=2, max_new_tokens=3)
    key = result_cache.evaluation_key(model, settings, CONTEXT)
    assert (
        result_cache.evaluation_key(model, EvalSettings(suites=["svamp_dev"], limit=2, max_new_tokens=3), CONTEXT)
        == key
    )
    for changed in (dataclasses.replace(settings, max_new_tokens=4), dataclasses.replace(settings, limits={"x": 1})):
        assert result_cache.evaluation_key(model, changed, CONTEXT) != key
    assert result_cache.evaluation_key(model, settings, CONTEXT | {"precision": "bf16-mixed"}) != key
    monkeypatch.setattr(result_cache, "SCORER_VERSION", result_cache.SCORER_VERSION + 1)
    assert result_cache.evaluation_key(model, settings, CONTEXT) != key
    monkeypatch.undo()
    with torch.no_grad():
        model[1].weight[0] += 1 / 64  # another checkpoint: one bf16 weight moved
    assert result_cache.evaluation_key(model, settings, CONTEXT) != key
