import copy
import math
from types import SimpleNamespace

import pytest

from specialight.training.module import SpecializationModule
from specialight.training.progress import TimeBudget
from specialight.training.schedule import WarmupCosine


def schedule(model_dir, **options):
    module = SpecializationModule(str(model_dir), **options)
    module.configure_model()  # the trainer builds the student before it asks for the optimizer
    module.trainer = SimpleNamespace(estimated_stepping_batches=30, num_training_batches=20)
    configured = module.configure_optimizers()
    return configured["optimizer"], configured["lr_scheduler"]["scheduler"].factor


def test_the_authors_cosine_spans_ten_epochs_of_batches(tiny_gpt2_dir):
    optimizer, factor = schedule(tiny_gpt2_dir, warmup=10, weight_decay=0.01, cosine_horizon=10)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.01, 0.0]
    assert factor(0) < 0.1 and factor(9) < 1.0 and factor(10) == pytest.approx(1.0)
    # a horizon of 10 x 20 batches: at the run's last step (29) the rate is still near its peak
    assert factor(29) == pytest.approx(0.5 * (1 + math.cos(math.pi * 19 / 190)))
    assert factor(29) > 0.97 and factor(199) < 1e-3
    _, over_the_run = schedule(tiny_gpt2_dir, warmup=10)
    assert over_the_run(29) < 0.01  # without a horizon the cosine ends with the run


def test_cosine_horizon_must_be_positive(tiny_gpt2_dir):
    with pytest.raises(ValueError, match="cosine_horizon must be positive"):
        SpecializationModule(str(tiny_gpt2_dir), cosine_horizon=0)


@pytest.mark.parametrize("warmup", [0, 1, 10])
def test_the_schedule_is_transformers_cosine_with_warmup_from_zero(tiny_gpt2_dir, warmup):
    import torch
    from transformers import get_cosine_schedule_with_warmup

    optimizer, factor = schedule(tiny_gpt2_dir, warmup=warmup, cosine_horizon=10)  # a horizon of 10 x 20 batches
    reference = get_cosine_schedule_with_warmup(torch.optim.SGD([torch.zeros(1)], lr=1.0), warmup, 200)
    assert [factor(step) for step in range(201)] == [reference.lr_lambdas[0](step) for step in range(201)]
    # Lightning steps the scheduler after the optimizer: the first step runs at the factor of step 0
    assert optimizer.param_groups[0]["lr"] == 5e-4 * factor(0)
    if warmup:
        assert factor(0) == 0.0 and factor(warmup) == 1.0


class Clock:
    """A stand-in for `TimeBudget.spent`: the share of the budget spent, set by the test."""

    def __init__(self) -> None:
        self.share = 0.0

    def __call__(self) -> float:
        return self.share


def stepped(scheduler, steps, clock=None, shares=None):
    """The rate after each of ``steps`` optimizer steps, the clock set to ``shares[i]`` before step i."""
    rates = []
    for i in range(steps):
        if clock is not None:
            clock.share = shares[i]
        scheduler.optimizer.step()
        scheduler.step()
        rates.append(scheduler.get_last_lr()[0])
    return rates


def optimizer():
    import torch

    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def test_a_time_budget_brings_the_cosine_to_its_floor_before_the_last_step():
    clock = Clock()
    timed = WarmupCosine(optimizer(), warmup=2, total=100, min_lr_ratio=0.1, spent=clock)
    by_steps = WarmupCosine(optimizer(), warmup=2, total=100, min_lr_ratio=0.1)
    # the warm-up ends at step 2 with 20% of the budget spent; then the time leads the steps
    shares = [0.1, 0.2, 0.6, 1.0, 1.3]
    rates = stepped(timed, 5, clock, shares)
    assert rates[:2] == stepped(by_steps, 2)[:2] == [0.5, 1.0]  # the warm-up counts steps alone
    assert timed.spent_at_warmup == 0.2
    assert rates[2] == pytest.approx(0.1 + 0.9 * 0.5)  # half of the budget after the warm-up's end: cos(pi/2)
    assert rates[3] == rates[4] == pytest.approx(0.1)  # the floor when the budget runs out, and after
    assert stepped(by_steps, 3)[-1] > 0.99  # the steps alone: still near the peak at step 5


def test_steps_lead_where_they_outrun_the_budget():
    clock = Clock()
    timed = WarmupCosine(optimizer(), warmup=0, total=4, spent=clock)
    assert stepped(timed, 4, clock, [0.0] * 4) == stepped(WarmupCosine(optimizer(), warmup=0, total=4), 4)


def test_the_state_keeps_the_warm_up_share_and_leaves_the_clock_out():
    clock = Clock()
    scheduler = WarmupCosine(optimizer(), warmup=1, total=100, spent=clock)
    stepped(scheduler, 2, clock, [0.5, 0.5])
    state = scheduler.state_dict()
    assert "spent" not in state and state["spent_at_warmup"] == 0.5
    resumed_clock = Clock()
    resumed = WarmupCosine(optimizer(), warmup=1, total=100, spent=resumed_clock)
    resumed.load_state_dict(state)
    assert resumed.spent is resumed_clock and resumed.spent_at_warmup == 0.5
    assert stepped(resumed, 1, resumed_clock, [0.75]) == stepped(scheduler, 1, clock, [0.75])
    assert resumed.get_last_lr()[0] == pytest.approx(0.5)


def test_the_module_reads_the_trainers_time_budget(tiny_gpt2_dir):
    module = SpecializationModule(str(tiny_gpt2_dir))
    module.configure_model()
    strategy = SimpleNamespace(broadcast=lambda value, src=0: value)
    budget = TimeBudget(minutes=10)
    module.trainer = SimpleNamespace(
        estimated_stepping_batches=30, num_training_batches=20, callbacks=[budget], strategy=strategy
    )
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert scheduler.spent() == 0.0  # before training starts
    budget._offset = 300.0  # five minutes spent by a run this one resumes
    assert scheduler.spent() == 0.5


@pytest.mark.slow
def test_a_run_stopped_by_its_time_budget_ends_at_the_floor(tiny_gpt2_dir, data_dir, tmp_path):
    from specialight.data.datamodule import SpecializationDataModule
    from tests.helpers import quiet_trainer

    budget = TimeBudget(minutes=3 / 60)
    trainer = quiet_trainer(10_000, [budget], default_root_dir=tmp_path)
    datamodule = SpecializationDataModule(
        str(tiny_gpt2_dir), data_dir=str(data_dir), limit=16, batch_size=4, formats={"zero_shot_cot": 1.0}
    )
    trainer.fit(SpecializationModule(str(tiny_gpt2_dir), learning_rate=1e-3, warmup=2), datamodule)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert 5 < trainer.global_step < 10_000  # stopped by the budget, long before the last step
    assert scheduler.get_last_lr()[0] < 1e-3 * 0.05  # at the floor (within a step's share of the 3 s)
    assert scheduler.factor(trainer.global_step) < 0.05
    assert 0.0 <= scheduler.spent_at_warmup < 0.5


def test_without_a_warm_up_the_budget_counts_from_the_first_step():
    clock = Clock()
    clock.share = 0.2  # a step-0 evaluation ran before the optimizer was built
    scheduler = WarmupCosine(optimizer(), warmup=0, total=100, spent=clock)
    assert scheduler.spent_at_warmup is None and scheduler.get_last_lr()[0] == 1.0
    stepped(scheduler, 1, clock, [0.3])
    assert scheduler.spent_at_warmup == 0.3 and scheduler.get_last_lr()[0] == pytest.approx(1.0, abs=1e-3)


def test_a_resumed_run_takes_the_schedule_from_its_config():
    state = WarmupCosine(optimizer(), warmup=1, total=10).state_dict()
    resumed = WarmupCosine(optimizer(), warmup=1, total=1000)
    resumed.load_state_dict(state)
    assert resumed.total == 1000 and {"warmup", "total", "min_lr_ratio", "spent"}.isdisjoint(state)


def adamw_and_loop(weight_decay=0.01):
    import torch

    from specialight.training.schedule import adamw

    torch.manual_seed(0)
    start = torch.randn(5, 7)
    fused, loop = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    ours = adamw([{"params": [fused], "weight_decay": weight_decay}], 1e-2)
    reference = torch.optim.AdamW([{"params": [loop], "weight_decay": weight_decay}], lr=1e-2, foreach=False)
    assert ours.param_groups[0]["fused"] and not reference.param_groups[0]["fused"]
    return start, (fused, ours), (loop, reference)


def test_the_fused_step_is_adamws_step():
    import torch

    start, *pairs = adamw_and_loop()
    for grad in [torch.randn(5, 7) for _ in range(3)]:
        for parameter, optimizer in pairs:
            parameter.grad = grad.clone()
            optimizer.step()
    (fused, _), (loop, _) = pairs
    assert not torch.equal(fused, start)
    torch.testing.assert_close(fused, loop)


def test_a_grad_scaler_unscales_before_the_fused_step_so_gradients_can_be_clipped():
    import torch
    from lightning.pytorch.plugins.precision import MixedPrecision

    _, *pairs = adamw_and_loop()
    (fused, ours), _ = pairs
    fused.grad = torch.ones_like(fused)
    MixedPrecision("16-mixed", "cpu").clip_gradients(ours, clip_val=1.0)  # refuses an optimizer that unscales
    ours.zero_grad()
    target = torch.randn(5, 7)
    for _ in range(3):
        for parameter, optimizer in pairs:
            scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
            scaler.scale(((parameter - target) ** 2).sum()).backward()
            scaler.unscale_(optimizer)  # Lightning's 16-mixed does this before clipping
            torch.nn.utils.clip_grad_norm_([parameter], 1.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
    (fused, _), (loop, _) = pairs
    torch.testing.assert_close(fused, loop)


def test_a_step_whose_scaled_gradients_overflowed_is_skipped():
    import torch

    _, (fused, ours), _ = adamw_and_loop()
    before = fused.detach().clone()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(fused.sum() * float("inf")).backward()  # every gradient inf
    scaler.unscale_(ours)
    scaler.step(ours)
    scaler.update()
    assert torch.equal(fused, before) and not ours.state and scaler.get_scale() == 512.0


def test_a_resumed_run_steps_fused_whichever_optimizer_saved_the_state():
    import torch

    _, (fused, ours), (loop, reference) = adamw_and_loop()
    loop.grad = torch.ones_like(loop)
    reference.step()
    ours.load_state_dict(copy.deepcopy(reference.state_dict()))  # a checkpoint from before the fused kernel
    assert ours.param_groups[0]["fused"]
    fused.data.copy_(loop.data)
    for parameter, optimizer in ((fused, ours), (loop, reference)):
        parameter.grad = torch.full_like(parameter, 0.5)
        optimizer.step()
    torch.testing.assert_close(fused, loop)
    with pytest.raises(ValueError, match="parameter groups"):
        ours.load_state_dict({**reference.state_dict(), "param_groups": []})


def test_adamw_keeps_torchs_default_on_other_devices():
    import torch

    from specialight.training.schedule import adamw

    optimizer = adamw([{"params": [torch.nn.Parameter(torch.ones(3, device="meta"))]}], 1e-3)
    assert not optimizer.param_groups[0]["fused"]


@pytest.mark.slow
def test_lightning_clips_the_fused_optimizers_gradients_under_bf16_mixed(tiny_gpt2_dir, data_dir, tmp_path):
    import lightning as L

    from specialight.data.datamodule import SpecializationDataModule

    module = SpecializationModule(str(tiny_gpt2_dir))
    data = SpecializationDataModule(str(tiny_gpt2_dir), data_dir=str(data_dir), batch_size=2, limit=4)
    trainer = L.Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        gradient_clip_val=1.0,
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=data)  # Lightning refuses to clip an optimizer that unscales in its step
    assert trainer.global_step == 2 and trainer.optimizers[0].param_groups[0]["fused"]
