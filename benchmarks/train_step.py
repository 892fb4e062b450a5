"""Training-step memory: today's dense loss against the chunked one, sample and distribution matching.

Two random students, built from configs (no download), trained the way the demo trains them (bf16
autocast on CPU, gradient checkpointing, the AdamW `specialight fit` builds: fused,
`specialight.training.schedule.adamw`; ``--optimizer loop`` takes torch's per-parameter loop instead, its
default on a CPU):

- ``smollm2``: a SmolLM2-135M-shaped decoder (vocabulary 49,152, 30 layers, width 576), 8 rows of 700
  tokens, the last 200 of each scored (an in-context prompt of 500 tokens, then the target);
- ``t5``: a FlanT5-Small-shaped encoder-decoder (vocabulary 32,128, 8+8 layers, width 512), 8 rows of
  500 source and 200 target tokens.

Each (model, path, loss) case runs in a fresh child process, so that no case sees another's memory:
``today`` is the dense path this project had before (the model's own logits ``[B, T, V]``, with
``logits_to_keep`` for the decoder, then the loss on them: `SpecializationLoss.from_logits`) with
malloc's defaults; ``chunked`` the module's path (`SpecializationModule.batch_loss`: hidden states, then
the loss chunk by chunk) with the allocator setting `specialight fit` applies
(`specialight.core.memory.return_freed_memory`).

Method. The child imports everything and reads its resident memory (RSS) as the zero point, loads the
model, creates AdamW's state once (a step on zero gradients, so the measured step is a steady-state
one), then resets the kernel's peak-RSS counter (``/proc/self/clear_refs``, VmHWM) and runs one
training step: forward, loss, backward, ``optimizer.step()``, ``zero_grad`` (the peak after each phase and the
optimizer step's seconds are in the case's line on stderr). *Peak* is VmHWM minus the
zero point: everything the step held at its worst, the allocator's slack included. *Floor* is what a
step cannot do without: weights + gradients + AdamW's two moments (bytes of the actual tensors) + the
tensors the checkpointed layers keep (their distinct tensor inputs, caught by forward pre-hooks during
the measured forward) + the final hidden states. The last JSON line gives peak / floor for each case and
the headline ``peak_over_floor_<loss>`` (chunked, the worse of the two models) and ``dm_over_sm``.

Losses (``--losses``): ``sm`` sample matching, ``dm`` distribution matching (forward KL), and the other
divergences on the (k+1)-bin partition: ``jsd`` (GKD's, beta 0.5), ``rkl`` reverse KL, ``skew`` skew KL,
``tv`` total variation.

    python benchmarks/train_step.py [--rows 8] [--models smollm2 t5] [--losses sm dm jsd] [--paths chunked]
        [--optimizer fused|loop]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHAPES = {"smollm2": (500, 200), "t5": (500, 200)}  # (prompt or source, scored target) tokens per row
TOP_K = 5
LOSSES = {  # --losses name: the plugin's class in specialight.training.losses
    "sm": "SampleMatching",
    "dm": "DistributionMatching",
    "jsd": "GeneralizedJSD",
    "rkl": "ReverseKL",
    "skew": "SkewKL",
    "tv": "TotalVariation",
}


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory (VmRSS) or its peak since the last reset (VmHWM), in MB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def config(kind: str):
    """The random student's config."""
    from transformers import LlamaConfig, T5Config

    if kind == "smollm2":  # HuggingFaceTB/SmolLM2-135M's shape
        return LlamaConfig(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            max_position_embeddings=2048,
            rope_theta=100000.0,
            tie_word_embeddings=True,
        )
    return T5Config(  # google/flan-t5-small's shape
        vocab_size=32128,
        d_model=512,
        d_ff=1024,
        d_kv=64,
        num_layers=8,
        num_decoder_layers=8,
        num_heads=6,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )


def make_batch(kind: str, rows: int, distribution: bool):
    """Random token ids shaped like an in-context batch; labels mask the prompt (decoder-only)."""
    import torch

    from specialight.data.formats import FORMATS

    generator = torch.Generator().manual_seed(0)
    vocab = config(kind).vocab_size
    prompt, target = SHAPES[kind]
    if kind == "t5":
        input_ids = torch.randint(2, vocab, (rows, prompt), generator=generator)
        labels = torch.randint(2, vocab, (rows, target), generator=generator)
    else:
        input_ids = torch.randint(2, vocab, (rows, prompt + target), generator=generator)
        labels = input_ids.clone()
        labels[:, :prompt] = -100
    batch = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": labels,
        "format_ids": torch.full((rows,), FORMATS.index("in_context_cot")),
    }
    if distribution:
        ids = torch.randint(0, vocab, (rows, labels.shape[1], TOP_K), generator=generator)
        ids[..., 0] = labels.clamp_min(0)
        probs = torch.tensor([0.8] + [0.05] * (TOP_K - 1)).expand(rows, labels.shape[1], TOP_K).contiguous()
        batch |= {"topk_ids": ids, "topk_probs": probs}
    return batch


def today_loss(module, batch):
    """The dense path this project had before: the model's logits [B, T, V], then the loss on them."""
    model = module.model
    if module.encoder_decoder:
        decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=decoder_input_ids
        ).logits
    else:
        start = module._first_prediction(batch)
        keep = batch["input_ids"].shape[1] - start
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep
        ).logits[:, :-1]
    return module.loss.from_logits(logits, module.targets(batch))


def checkpointed_bytes(module, run) -> tuple[object, int]:
    """``run()``'s result and the bytes of the distinct tensors the checkpointed layers take as inputs."""
    import torch
    from transformers.modeling_layers import GradientCheckpointingLayer

    seen: dict[int, int] = {}

    def record(layer, args, kwargs) -> None:
        for value in (*args, *kwargs.values()):
            if isinstance(value, torch.Tensor) and torch.is_grad_enabled():
                seen.setdefault(value.data_ptr(), value.numel() * value.element_size())

    layers = [m for m in module.model.modules() if isinstance(m, GradientCheckpointingLayer)]
    hooks = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers]
    try:
        result = run()
    finally:
        for hook in hooks:
            hook.remove()
    return result, sum(seen.values())


def child(kind: str, path: str, loss_name: str, folder: str, rows: int, fused: bool) -> dict:
    """One case, measured in this (fresh) process."""
    import torch

    from specialight.core.memory import return_freed_memory
    from specialight.training import losses
    from specialight.training.module import SpecializationModule
    from specialight.training.schedule import adamw

    if path == "chunked":  # what `specialight fit` and the demo do now; today's path keeps malloc's defaults
        return_freed_memory()
    torch.manual_seed(0)
    zero = rss_mb()
    loss = getattr(losses, LOSSES[loss_name])()
    module = SpecializationModule(folder, loss=loss, gradient_checkpointing=True)
    module.configure_model()  # what the trainer does before the first step
    groups = [{"params": list(module.parameters())}]
    optimizer = adamw(groups, 1e-4) if fused else torch.optim.AdamW(groups, lr=1e-4)
    for parameter in module.parameters():  # AdamW's state exists before the measured step, as in step 2+
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    batch = make_batch(kind, rows, loss_name != "sm")
    step_loss = today_loss if path == "today" else type(module).batch_loss
    positions = SHAPES[kind][1] if kind == "t5" else sum(SHAPES[kind])
    hidden_bytes = rows * positions * module.model.config.hidden_size * 4  # the final hidden states, fp32
    gc.collect()
    before = rss_mb() - zero
    phases: dict[str, float] = {}
    reset_peak_rss()
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value, activations = checkpointed_bytes(module, lambda: step_loss(module, batch))
    phases["forward_mb"] = rss_mb("VmHWM") - zero
    value.backward()
    phases["backward_mb"] = rss_mb("VmHWM") - zero
    stepped = time.perf_counter()
    optimizer.step()
    phases["optimizer_s"] = time.perf_counter() - stepped
    optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    peak = rss_mb("VmHWM") - zero
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    moments = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if t.ndim)
    floor = (2 * weights + moments + activations + hidden_bytes) / 2**20
    return {"peak_mb": peak, "floor_mb": floor, "resident_before_mb": before, **phases, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--models", nargs="+", default=["smollm2", "t5"], choices=sorted(SHAPES))
    parser.add_argument("--losses", nargs="+", default=["sm", "dm"], choices=list(LOSSES))
    parser.add_argument("--paths", nargs="+", default=["chunked", "today"], choices=["chunked", "today"])
    parser.add_argument("--optimizer", choices=["fused", "loop"], default="fused")
    parser.add_argument("--case", nargs=4, help=argparse.SUPPRESS)  # child: kind path loss folder
    args = parser.parse_args()
    if "chunked" not in args.paths:
        parser.error("--paths must include chunked (the figures the targets are on)")
    if args.case:
        print(json.dumps(child(*args.case, rows=args.rows, fused=args.optimizer == "fused")))
        return
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    tmp = Path(tempfile.mkdtemp())
    results: dict[tuple[str, str, str], dict] = {}
    for kind in args.models:
        torch.manual_seed(0)
        cfg = config(kind)
        cls = AutoModelForSeq2SeqLM if cfg.is_encoder_decoder else AutoModelForCausalLM
        cls.from_config(cfg).save_pretrained(tmp / kind)
        for path in args.paths:  # the chunked cases first: the figures the targets are on
            for loss_name in args.losses:
                command = [sys.executable, __file__, "--rows", str(args.rows), "--optimizer", args.optimizer, "--case"]
                command += [kind, path, loss_name, str(tmp / kind)]
                env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
                done = subprocess.run(command, capture_output=True, text=True, env=env)
                if done.returncode:
                    sys.exit(f"case {kind}/{path}/{loss_name} failed:\n{done.stderr[-3000:]}")
                results[kind, path, loss_name] = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"{kind} {path} {loss_name}: {results[kind, path, loss_name]}", file=sys.stderr, flush=True)
    print(
        f"cpu ({os.cpu_count()} cores); bf16 autocast, gradient checkpointing, {args.optimizer} AdamW; {args.rows} rows"
    )
    print(f"{'model':<8} {'path':<8} {'loss':<4} {'peak MB':>8} {'floor MB':>9} {'peak/floor':>10} {'step s':>7}")
    figures: dict[str, float] = {}
    for (kind, path, loss_name), r in results.items():
        ratio = r["peak_mb"] / r["floor_mb"]
        figures[f"{kind}_{path}_peak_over_floor_{loss_name}"] = round(ratio, 3)
        print(
            f"{kind:<8} {path:<8} {loss_name:<4} {r['peak_mb']:>8,.0f} {r['floor_mb']:>9,.0f} {ratio:>10.3f} "
            f"{r['seconds']:>7.1f}"
        )
    divergences = [name for name in args.losses if name != "sm"]
    for kind in args.models:
        for loss_name in args.losses:
            chunked, today = results[kind, "chunked", loss_name], results.get((kind, "today", loss_name))
            if today is not None:
                figures[f"{kind}_chunked_over_today_peak_{loss_name}"] = round(chunked["peak_mb"] / today["peak_mb"], 3)
                figures[f"{kind}_chunked_over_today_time_{loss_name}"] = round(chunked["seconds"] / today["seconds"], 3)
            if loss_name != "sm" and "sm" in args.losses:
                sm_peak = results[kind, "chunked", "sm"]["peak_mb"]
                figures[f"{kind}_{loss_name}_over_sm"] = round(chunked["peak_mb"] / sm_peak, 3)
    for loss_name in args.losses:
        figures[f"peak_over_floor_{loss_name}"] = max(
            figures[f"{kind}_chunked_peak_over_floor_{loss_name}"] for kind in args.models
        )
        if loss_name != "sm" and "sm" in args.losses:
            figures[f"{loss_name}_over_sm"] = max(figures[f"{kind}_{loss_name}_over_sm"] for kind in args.models)
    print(f"targets: peak/floor <= 1.3 (chunked, every loss); peak of each of {', '.join(divergences)} / SM's <= 1.05")
    print(
        json.dumps(
            {
                "benchmark": "train_step",
                **figures,
                "optimizer": args.optimizer,
                "device": f"cpu ({os.cpu_count()} cores)",
            }
        )
    )


if __name__ == "__main__":
    main()
