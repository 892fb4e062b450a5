import json
import logging
import time
from pathlib import Path

import lightning as L
import pytest

from specialight.training.callbacks import ModelSelection, TimeBudget
from specialight.training.module import SpecializationModule


def tensorboard_scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


@pytest.mark.slow
def test_evaluations_happen_at_step_zero_and_every_n_examples(logged_run):
    trainer, evaluation, _ = logged_run
    assert [r["step"] for r in evaluation.history] == [0, 2, 4, 6]
    assert [r["examples"] for r in evaluation.history] == [0, 8, 16, 24]
    scalars = tensorboard_scalars(trainer.log_dir)
    for suite in ("gsm8k_dev", "mas_dev", "multiarith_dev", "bbh_cot", "bbh_cot/navigate"):
        assert [step for step, _ in scalars[f"eval/{suite}"]] == [0, 2, 4, 6]
    assert "train/loss" in scalars
    folder = Path(trainer.log_dir)
    lines = (folder / "evaluations.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 2, 4, 6]
    assert (folder / "evaluations" / "step-4" / "gsm8k_dev.jsonl").is_file()


@pytest.mark.slow
def test_selection_writes_the_best_checkpoint_and_table_3(logged_run):
    trainer, evaluation, selection = logged_run
    folder = Path(trainer.log_dir)
    summary = json.loads((folder / "selection.json").read_text())
    trained = [r for r in evaluation.history if r["step"] > 0]  # step 0 (untrained) is no candidate by default
    best_value = max(r["scores"]["mas_dev"] for r in trained)
    first_best = next(r for r in trained if r["scores"]["mas_dev"] == best_value)
    assert summary["selections"]["eval/mas_dev"]["step"] == first_best["step"]
    assert summary["best_checkpoint"]["step"] == first_best["step"]
    assert Path(summary["best_checkpoint"]["path"]).is_file()
    assert "eval/gsm8k_dev" in summary["selections"]
    table = (folder / "selection.md").read_text()
    assert "| selected by mas_dev |" in table and "| selected by gsm8k_dev |" in table
    assert "| before training | 0 | 0 |" in table and "| end of training | 6 | 24 |" in table
    assert " n=3 |" in table and "(step 0 excluded)" in table  # mas_dev: 3 parts of 1 example each
    record = json.loads((folder / "evaluations.jsonl").read_text().splitlines()[-1])
    assert set(record["n"]) == set(record["ci95"]) == set(record["shortened"]) == set(record["scores"])
    reloaded = SpecializationModule.load_from_checkpoint(summary["best_checkpoint"]["path"])
    assert type(reloaded.loss).__name__ == "SampleMatching"


def test_selection_refuses_a_metric_that_is_not_evaluated():
    selection = ModelSelection(monitor="eval/svamp_test")
    with pytest.raises(ValueError, match="monitors eval/svamp_test"):
        selection.on_evaluation(None, None, {"step": 0, "examples": 0, "scores": {"mas_dev": 1.0}})


def _record(step: int, value: float) -> dict:
    return {"step": step, "examples": 8 * step, "scores": {"mas_dev": value}}


def test_selection_skips_the_untrained_model_and_breaks_ties_early():
    selection = ModelSelection()
    for step, value in [(0, 90.0), (2, 40.0), (4, 60.0), (6, 60.0)]:
        selection.records.append(_record(step, value))
    assert selection.choose("eval/mas_dev")["step"] == 4
    with_initial = ModelSelection(include_initial=True)
    with_initial.records = selection.records
    assert with_initial.choose("eval/mas_dev")["step"] == 0


def test_selection_table_shows_intervals_and_reads_records_without_them():
    from specialight.evaluation.tables import selection_table

    old = _record(0, 10.0)
    new = {**_record(2, 12.5), "n": {"mas_dev": 24}, "ci95": {"mas_dev": [4.3, 31.0]}}
    table = selection_table({"first": old, "selections": {"eval/mas_dev": new}, "last": new})
    assert "| before training | 0 | 0 | 10.0 |" in table
    assert "| selected by mas_dev | 2 | 16 | 12.5 [4.3-31.0] n=24 |" in table
    later = selection_table({"first": new, "selections": {"eval/mas_dev": new}, "last": new})
    assert "| first evaluation | 2 | 16 |" in later and "before training" not in later  # no step-0 evaluation


@pytest.mark.parametrize("monitor_first", [True, False])
@pytest.mark.slow
def test_throughput_monitor_leaves_the_evaluations_out_of_training_time(
    monitor_first, tiny_gpt2_dir, data_dir, tmp_path, monkeypatch
):
    import time

    from lightning.pytorch.callbacks import ThroughputMonitor
    from lightning.pytorch.loggers import CSVLogger

    from specialight.data.datamodule import SpecializationDataModule
    from specialight.data.encoding import batch_examples
    from specialight.evaluation.evaluator import Evaluator
    from specialight.evaluation.settings import EvalSettings
    from specialight.training.callbacks import PeriodicEvaluation
    from tests.helpers import quiet_trainer

    run, clock, skipped = Evaluator.run, time.perf_counter, [0.0]

    def slow_run(self, *args, **kwargs):  # each evaluation takes 100 s more by the clock every timer reads
        skipped[0] += 100.0
        return run(self, *args, **kwargs)

    monkeypatch.setattr(Evaluator, "run", slow_run)
    monkeypatch.setattr(time, "perf_counter", lambda: clock() + skipped[0])
    settings = EvalSettings(suites=["svamp_dev"], limit=1, max_new_tokens=1, data_dir=str(data_dir))
    evaluation = PeriodicEvaluation(settings, every_n_examples=4)  # steps 0 to 4: 5 evaluations, 500 s
    monitor = ThroughputMonitor(batch_size_fn=batch_examples)
    trainer = quiet_trainer(
        4,
        [monitor, evaluation] if monitor_first else [evaluation, monitor],
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
    )
    datamodule = SpecializationDataModule(
        str(tiny_gpt2_dir), data_dir=str(data_dir), limit=8, batch_size=4, formats={"zero_shot_cot": 1.0}
    )
    trainer.fit(SpecializationModule(str(tiny_gpt2_dir), learning_rate=1e-3), datamodule)
    assert [r["step"] for r in evaluation.history] == [0, 1, 2, 3, 4]
    rows = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    times = [float(v) for row in rows[1:] if (v := row.split(",")[header.index("train/time")])]
    assert len(times) == 4 and times == sorted(times)
    assert times[-1] < 100  # four tiny training steps, none of the evaluations' 500 s


@pytest.mark.slow
def test_a_second_identical_run_takes_its_step_zero_evaluation_from_the_cache(
    tiny_gpt2_dir, data_dir, tmp_path, monkeypatch, caplog
):
    import logging

    from specialight.data.datamodule import SpecializationDataModule
    from specialight.evaluation.evaluator import Evaluator
    from specialight.evaluation.settings import EvalSettings
    from specialight.training.callbacks import PeriodicEvaluation
    from tests.helpers import quiet_trainer

    monkeypatch.setenv("SPECIALIGHT_CACHE", str(tmp_path / "cache"))
    runs, real = [], Evaluator.run
    monkeypatch.setattr(Evaluator, "run", lambda self, *a, **k: runs.append(1) or real(self, *a, **k))
    settings = EvalSettings(
        suites=["svamp_dev", "nll_gsm8k_dev_zero_shot"], limit=2, max_new_tokens=3, data_dir=str(data_dir)
    )

    def fit(name: str, **changes) -> list[dict]:
        evaluation = PeriodicEvaluation(settings, every_n_examples=4, at_end=False, cache_initial=True, **changes)
        trainer = quiet_trainer(1, [evaluation], default_root_dir=tmp_path / name)
        datamodule = SpecializationDataModule(
            str(tiny_gpt2_dir), data_dir=str(data_dir), limit=4, batch_size=4, formats={"zero_shot_cot": 1.0}
        )
        with caplog.at_level(logging.INFO, logger="specialight.training.callbacks"):
            trainer.fit(SpecializationModule(str(tiny_gpt2_dir), learning_rate=1e-3), datamodule)
        return [json.loads(line) for line in (tmp_path / name / "evaluations.jsonl").read_text().splitlines()]

    first = fit("first")
    assert len(runs) == 2 and [r["step"] for r in first] == [0, 1]
    assert first[0]["cache"] == "miss" and "cache" not in first[1]  # a trained model is never looked up
    second = fit("second")
    assert len(runs) == 3  # only step 1 was evaluated again
    assert second[0]["cache"] == "hit" and second[0]["cache_key"] == first[0]["cache_key"]
    assert f"step-0 evaluation: cache hit {first[0]['cache_key']}" in caplog.text
    same = ("scores", "n", "ci95", "nll")
    assert {k: second[0][k] for k in same} == {k: first[0][k] for k in same}
    suite = "nll_gsm8k_dev_zero_shot"  # the cached likelihoods are the baseline of the later changes
    change = second[1]["nll"][suite]["mean"] - second[0]["nll"][suite]["mean"]
    assert second[1]["nll_change"][suite]["mean"] == pytest.approx(change, abs=1e-4)
    for name in ("svamp_dev.jsonl", "nll.jsonl", "summary.json"):
        step0 = [(tmp_path / run / "evaluations" / "step-0" / name).read_text() for run in ("first", "second")]
        assert step0[0] == step0[1]
    settings.max_new_tokens = 4  # a suite setting changed: evaluated again
    assert fit("third")[0]["cache"] == "miss" and len(runs) == 5


class _StopAfter(L.Callback):
    """Ask the trainer to stop after optimizer step ``step`` (as ``max_time`` does), before evaluations see it."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        trainer.should_stop = trainer.global_step >= self.step


@pytest.mark.slow
@pytest.mark.parametrize("stopped_early", [None, "after", "before"])
def test_interim_evaluations_run_only_their_suites_and_the_last_runs_every_suite(
    tiny_gpt2_dir, data_dir, tmp_path, stopped_early
):
    from specialight.data.datamodule import SpecializationDataModule
    from specialight.evaluation.settings import EvalSettings
    from specialight.training.callbacks import PeriodicEvaluation
    from tests.helpers import quiet_trainer

    settings = EvalSettings(suites=["svamp_dev", "nll_gsm8k_dev_zero_shot"], limit=2, max_new_tokens=3)
    settings.data_dir = str(data_dir)
    evaluation = PeriodicEvaluation(settings, every_n_examples=4, interim_suites=["svamp_dev"])
    callbacks = {None: [evaluation], "after": [evaluation, _StopAfter(2)], "before": [_StopAfter(2), evaluation]}
    trainer = quiet_trainer(3, callbacks[stopped_early], default_root_dir=tmp_path)
    datamodule = SpecializationDataModule(
        str(tiny_gpt2_dir), data_dir=str(data_dir), limit=16, batch_size=4, formats={"zero_shot_cot": 1.0}
    )
    trainer.fit(SpecializationModule(str(tiny_gpt2_dir), learning_rate=1e-3), datamodule)
    records = [json.loads(line) for line in (tmp_path / "evaluations.jsonl").read_text().splitlines()]
    full = {"scores": ["svamp_dev"], "nll": ["nll_gsm8k_dev_zero_shot"]}
    shape = [(r["step"], bool(r.get("interim")), sorted(r.get("nll", {}))) for r in records]
    if stopped_early == "before":  # the stop is seen: the step it ends is evaluated once, whole
        assert shape == [(0, False, full["nll"]), (1, True, []), (2, False, full["nll"])]
    elif stopped_early:  # the step evaluated as interim is evaluated again, whole, at the end
        assert shape == [(0, False, full["nll"]), (1, True, []), (2, True, []), (2, False, full["nll"])]
    else:  # the evaluation at max_steps is the last: whole
        assert shape == [(0, False, full["nll"]), (1, True, []), (2, True, []), (3, False, full["nll"])]
    assert all("svamp_dev" in r["scores"] for r in records)
    assert "nll_change" in records[-1]  # against step 0's likelihoods, skipped by the interim evaluations


def test_interim_suites_must_be_among_the_suites():
    from specialight.evaluation.settings import EvalSettings
    from specialight.training.callbacks import PeriodicEvaluation

    with pytest.raises(ValueError, match="must be among settings.suites"):
        PeriodicEvaluation(EvalSettings(suites=["gsm8k_dev"]), interim_suites=["mas_dev"])


@pytest.mark.slow
def test_a_selection_that_reads_a_suite_the_interim_evaluations_skip_is_refused_before_training(
    tiny_gpt2_dir, data_dir, tmp_path
):
    from specialight.data.datamodule import SpecializationDataModule
    from specialight.evaluation.settings import EvalSettings
    from specialight.training.callbacks import PeriodicEvaluation
    from tests.helpers import quiet_trainer

    settings = EvalSettings(suites=["gsm8k_dev", "mas_dev"], limit=1, max_new_tokens=2, data_dir=str(data_dir))
    evaluation = PeriodicEvaluation(settings, every_n_examples=4, interim_suites=["mas_dev"])
    selection = ModelSelection(monitor="eval/mas_dev", compare=["eval/gsm8k_dev"])
    trainer = quiet_trainer(2, [evaluation, selection], default_root_dir=tmp_path)
    datamodule = SpecializationDataModule(str(tiny_gpt2_dir), data_dir=str(data_dir), limit=4, batch_size=4)
    with pytest.raises(ValueError, match=r"ModelSelection reads \['eval/gsm8k_dev'\]"):
        trainer.fit(SpecializationModule(str(tiny_gpt2_dir)), datamodule)
    assert not (tmp_path / "evaluations.jsonl").exists()  # refused before the step-0 evaluation


@pytest.mark.slow
def test_an_interim_evaluation_that_would_outlast_the_time_budget_is_skipped(
    tiny_gpt2_dir, data_dir, tmp_path, monkeypatch, caplog
):
    from specialight.data.datamodule import SpecializationDataModule
    from specialight.evaluation.settings import EvalSettings
    from specialight.training.callbacks import PeriodicEvaluation
    from tests.helpers import quiet_trainer

    settings = EvalSettings(suites=["svamp_dev"], limit=2, max_new_tokens=3, data_dir=str(data_dir))
    evaluation = PeriodicEvaluation(settings, every_n_examples=4, interim_suites=["svamp_dev"])
    budget = TimeBudget(minutes=60)
    monkeypatch.setattr(budget, "time_remaining", lambda stage=None: -1.0)  # a budget spent
    trainer = quiet_trainer(3, [budget, evaluation], default_root_dir=tmp_path)
    datamodule = SpecializationDataModule(
        str(tiny_gpt2_dir), data_dir=str(data_dir), limit=16, batch_size=4, formats={"zero_shot_cot": 1.0}
    )
    with caplog.at_level(logging.INFO, logger="specialight.training.callbacks"):
        trainer.fit(SpecializationModule(str(tiny_gpt2_dir), learning_rate=1e-3), datamodule)
    records = [json.loads(line) for line in (tmp_path / "evaluations.jsonl").read_text().splitlines()]
    assert [(r["step"], bool(r.get("interim"))) for r in records] == [(0, False), (3, False)]
    assert "step 1: evaluation skipped" in caplog.text and "step 2: evaluation skipped" in caplog.text


class _SlowStart(L.Callback):
    """Stands for PeriodicEvaluation's step-0 evaluation, which runs in ``on_train_start``."""

    def on_train_start(self, trainer, pl_module) -> None:
        time.sleep(1.5)


@pytest.mark.slow
@pytest.mark.parametrize("timer_first", [True, False])
def test_a_time_budget_listed_first_counts_the_step_0_evaluation(timer_first, tmp_path):
    from lightning.pytorch.demos.boring_classes import BoringModel

    callbacks = [TimeBudget(minutes=1 / 60), _SlowStart()]
    trainer = L.Trainer(
        max_steps=5,
        callbacks=callbacks if timer_first else callbacks[::-1],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(BoringModel())
    assert trainer.global_step == (1 if timer_first else 5)  # first: out of time after the first step


@pytest.mark.slow
@pytest.mark.parametrize("accumulate", [1, 2])
def test_an_evaluation_during_training_runs_without_the_last_steps_gradients(
    tiny_gpt2_dir, data_dir, tmp_path, monkeypatch, accumulate
):
    from specialight.data.datamodule import SpecializationDataModule
    from specialight.evaluation.settings import EvalSettings
    from specialight.training.callbacks import PeriodicEvaluation
    from tests.helpers import quiet_trainer

    settings = EvalSettings(suites=["svamp_dev"], limit=2, max_new_tokens=3, data_dir=str(data_dir))
    evaluation = PeriodicEvaluation(settings, every_n_examples=4, before_training=False)
    seen = []
    real = PeriodicEvaluation._run_suites

    def run_suites(self, trainer, pl_module, *args):
        seen.append(any(p.grad is not None for p in pl_module.parameters()))
        return real(self, trainer, pl_module, *args)

    monkeypatch.setattr(PeriodicEvaluation, "_run_suites", run_suites)
    trainer = quiet_trainer(2, [evaluation], default_root_dir=tmp_path, accumulate_grad_batches=accumulate)
    datamodule = SpecializationDataModule(
        str(tiny_gpt2_dir), data_dir=str(data_dir), limit=16, batch_size=4, formats={"zero_shot_cot": 1.0}
    )
    trainer.fit(SpecializationModule(str(tiny_gpt2_dir), learning_rate=1e-3), datamodule)
    # freed where the next step drops them anyway; kept while they accumulate over batches
    assert seen and all(held == (accumulate > 1) for held in seen)
