import math
from types import SimpleNamespace

import pytest

from specialight.training.module import SpecializationModule


def schedule(model_dir, **options):
    module = SpecializationModule(str(model_dir), **options)
    module.configure_model()  # the trainer builds the student before it asks for the optimizer
    module.trainer = SimpleNamespace(estimated_stepping_batches=30, num_training_batches=20)
    configured = module.configure_optimizers()
    factor = configured["lr_scheduler"]["scheduler"].lr_lambdas[0]
    return configured["optimizer"], factor


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
