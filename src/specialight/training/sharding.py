"""Fully sharded students (FSDP2 through Lightning's `ModelParallelStrategy`), built without a full copy per rank.

`SpecializationModule.configure_model` calls `load_sharded_student` when the strategy hands it a device mesh:
every rank builds the model with its parameters on the meta device (no memory), shards each transformer block
and then the root with `fully_shard` (full sharding, optional bf16 parameters with fp32 gradient reduction),
and rank zero alone reads the pretrained weights and broadcasts each rank its shards. So no rank but zero ever
holds an unsharded copy, and rank zero only on the CPU.

`full_parameters` unshards a sharded model on every rank for generation: afterwards each rank can run
``generate`` on its own examples, with its own number of forward passes, without collectives.

Lightning's `FSDPStrategy` (FSDP1) refuses a CPU accelerator; `ModelParallelStrategy` runs on CPU with gloo,
which is how the tests check sharded training, sharded checkpoints and resume.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)
PARAM_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def block_classes(model: nn.Module) -> tuple[type[nn.Module], ...]:
    """The transformer block classes of a transformers model (``_no_split_modules``: ``T5Block``, ...)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    classes = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not classes:
        raise ValueError(f"{type(model).__name__} names no transformer block (_no_split_modules) to shard by")
    return tuple(classes)


def shard(model: nn.Module, mesh, param_dtype: str | None = "bfloat16") -> nn.Module:
    """Apply `fully_shard` to every block, then the root (in place), over the 1-D ``mesh``.

    ``param_dtype``: the dtype blocks compute in (gradients are reduced in fp32); None keeps fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if param_dtype is not None and param_dtype not in PARAM_DTYPES:
        raise ValueError(f"param_dtype must be one of {sorted(PARAM_DTYPES)} or null, got {param_dtype!r}")
    policy = (
        MixedPrecisionPolicy(param_dtype=PARAM_DTYPES[param_dtype], reduce_dtype=torch.float32)
        if param_dtype is not None
        else MixedPrecisionPolicy()
    )
    blocks = block_classes(model)
    for module in model.modules():
        if isinstance(module, blocks):
            fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def load_sharded_student(
    name_or_path: str,
    mesh,
    device: torch.device,
    param_dtype: str | None = "bfloat16",
    gradient_checkpointing: bool = False,
) -> nn.Module:
    """The student of `specialight.core.models.load_student`, sharded over ``mesh`` (see the module docstring)."""
    import torch.distributed as dist
    from transformers import AutoConfig

    from specialight.core.models import load_student, resolve_model

    path = resolve_model(name_or_path)
    config = AutoConfig.from_pretrained(path)
    whole = load_student(path) if dist.get_rank() == 0 else None
    # what only the loaded model knows: whether its output head is a tensor of its own (transformers 5 builds
    # every T5 with a tied head, and unties it when a checkpoint holds both, as FlanT5's do), and the buffers
    # outside the state dict (rotary tables)
    known = [_layout(whole) if whole is not None else None]
    dist.broadcast_object_list(known, src=0)
    separate_head, buffers = known[0]
    model = _meta_student(config, separate_head, gradient_checkpointing)
    shard(model, mesh, param_dtype)
    model.to_empty(device=device)  # this rank's shards, allocated in place (ties kept), values still unset
    _fill(model, buffers, whole)
    del whole
    logger.info("%s sharded over %d ranks (param dtype %s)", name_or_path, mesh.size(), param_dtype or "float32")
    return model


def _meta_student(config, separate_head: bool, gradient_checkpointing: bool) -> nn.Module:
    """The student built from ``config`` on the meta device (parameters and buffers take no memory; tied
    weights stay one object), with an output head of its own where the pretrained model has one."""
    from specialight.core.models import student_class

    with torch.device("meta"):
        model = student_class(config).from_config(config, dtype=torch.float32)
        head = model.get_output_embeddings()
        if separate_head and head.weight is model.get_input_embeddings().weight:
            head.weight = nn.Parameter(torch.empty_like(head.weight))
    if gradient_checkpointing:
        # per block, before sharding: each block's activations are recomputed inside its own all-gather
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _fill(model: nn.Module, buffers: dict[str, torch.Tensor], whole: nn.Module | None) -> None:
    """Set the values of a sharded, allocated ``model``: ``buffers`` on every rank, and each rank's parameter
    shards broadcast from rank zero's ``whole`` model (``None`` on the other ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    for name, buffer in buffers.items():
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner).get_buffer(leaf).copy_(buffer)
    full = whole.state_dict() if whole is not None else {}
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def _layout(model: nn.Module) -> tuple[bool, dict[str, torch.Tensor]]:
    """Whether ``model``'s output head has its own weight, and its buffers."""
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    separate = head is not None and head.weight is not embeddings.weight
    return separate, {name: buffer for name, buffer in model.named_buffers()}


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` was sharded with `fully_shard`."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def full_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """Inside, every parameter of a sharded ``model`` is whole on every rank (in its compute dtype) and forward
    passes issue no collectives; outside, the model is sharded again. A plain model passes through."""
    if not is_sharded(model):
        yield model
        return
    from torch.distributed.fsdp import FSDPModule

    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    # FSDP sets up its root on the first forward through the root; generation may enter through a child (T5's
    # encoder), so run that first forward on the model's dummy inputs (a few tokens, every rank at once)
    device = next(model.parameters()).device
    with torch.no_grad():
        model(**{name: value.to(device) for name, value in model.dummy_inputs.items()})
    model.set_reshard_after_forward(False, recurse=True)
    for module in modules:
        module.unshard()
    try:
        yield model
    finally:
        for module in modules:
            module.reshard()
        # fully_shard's defaults: blocks reshard after forward; the root keeps its parameters (used at once by
        # the backward)
        model.set_reshard_after_forward(True, recurse=True)
        model.set_reshard_after_forward(False, recurse=False)
