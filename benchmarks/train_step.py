"""Training step: our Lightning step against a plain PyTorch loop, and distribution against sample matching.

Same process, same random model, same batches (real GSM8K rationales in the four formats, with sparse
top-5 teacher targets from `specialight align` on a confident synthetic teacher):

1. tokens/s of `SpecializationModule` under `lightning.Trainer` (SampleMatching) against a hand-written
   loop (forward, cross-entropy, backward, AdamW, cosine schedule) over the same batches. Target >= 0.95.
2. time and peak memory of a step with DistributionMatching against SampleMatching. Target <= 1.15x both.

CPU: a random T5 (d_model 256, 4+4 layers, the real T5 vocabulary) in fp32; times are the best of
``--rounds`` alternating rounds; peak memory is the peak RSS during ``fit`` of a fresh child process per
loss (RSS never shrinks, so one process cannot compare two runs). GPU (when present): a
FlanT5-Base-sized random T5 in bf16; peak memory from torch.cuda.max_memory_allocated in this process.

    python benchmarks/train_step.py [--steps 12] [--warmup 3] [--batch-size 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"


def peak_rss_reset() -> None:
    """Reset this process's peak-RSS counter (VmHWM) to the current RSS (Linux)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_rss_mb() -> float:
    """This process's peak resident memory since the last reset (VmHWM)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--memory-of", choices=("sample", "distribution"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import lightning as L
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from specialight.align.markers import surfaces
    from specialight.align.run import AlignSettings, run_align
    from specialight.data.datamodule import SpecializationDataModule
    from specialight.data.formats import answer_target
    from specialight.data.records import TeacherSample
    from specialight.data.tasks import load_examples
    from specialight.losses import DistributionMatching, SampleMatching
    from specialight.module import SpecializationModule

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    data_dir = os.environ.get("SPECIALIGHT_DATA_DIR", str(SHARED / "data"))
    tokenizers = Path(os.environ.get("SPECIALIGHT_TOKENIZERS", SHARED / "tokenizers"))
    t5 = AutoTokenizer.from_pretrained(tokenizers / "t5")
    gpt2 = AutoTokenizer.from_pretrained(tokenizers / "gpt2")
    tmp = Path(args.workdir or tempfile.mkdtemp())
    child = args.memory_of is not None
    torch.manual_seed(0)
    size = (
        dict(d_model=768, d_ff=2048, d_kv=64, num_layers=12, num_heads=12)
        if cuda
        else dict(d_model=256, d_ff=1024, d_kv=32, num_layers=4, num_heads=4)
    )
    config = T5Config(
        vocab_size=len(t5),
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        **size,
    )
    if not child:
        T5ForConditionalGeneration(config).save_pretrained(tmp / "student")
        t5.save_pretrained(tmp / "student")
        examples = load_examples("gsm8k", "tune", data_dir)[: args.batch_size * (args.steps + args.warmup)]
        with (tmp / "samples.jsonl").open("w") as handle:
            for example in examples:
                text = answer_target(example.answer, example.rationale)
                tokens = surfaces(gpt2.convert_ids_to_tokens(gpt2.encode(text)), "byte_level")
                top = [[t, " the", " and", ".", ","] for t in tokens]
                logprobs = [[math.log(0.8)] + [math.log(0.05)] * 4 for _ in tokens]
                sample = TeacherSample(example.id, 0, "".join(tokens), tokens, top, logprobs, correct=True)
                handle.write(sample.to_json() + "\n")
        run_align(tmp / "samples.jsonl", tmp / "aligned", AlignSettings(student_tokenizer=str(tmp / "student")))
    datamodule = SpecializationDataModule(
        str(tmp / "student"),
        teacher_data=str(tmp / "aligned"),
        data_dir=data_dir,
        batch_size=args.batch_size,
        formats={"zero_shot_cot": 1.0},
        num_demonstrations=0,
        max_target_length=256,
    )
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    batches = [batch for _, batch in zip(range(args.steps + args.warmup), loader)]
    tokens_per_batch = [int(b["attention_mask"].sum() + (b["labels"] >= 0).sum()) for b in batches]
    measured_tokens = sum(tokens_per_batch[args.warmup :])
    precision = "bf16-mixed" if cuda else "32-true"

    def plain_loop() -> float:
        torch.manual_seed(0)
        model = T5ForConditionalGeneration.from_pretrained(tmp / "student").to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
        total = len(batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
        elapsed = 0.0
        for index, batch in enumerate(batches):
            batch = {k: v.to(device) for k, v in batch.items()}
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
                logits = model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    decoder_input_ids=decoder_input_ids,
                ).logits
            loss = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), batch["labels"], ignore_index=-100)
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            if index >= args.warmup:
                elapsed += time.perf_counter() - start
        return elapsed

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.elapsed, self.start = 0.0, 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if cuda:
                torch.cuda.synchronize()
            if batch_idx >= args.warmup:
                self.elapsed += time.perf_counter() - self.start

    def ours(loss) -> tuple[float, float]:
        torch.manual_seed(0)
        module = SpecializationModule(str(tmp / "student"), loss=loss)
        timer = StepTimer()
        trainer = L.Trainer(
            max_steps=len(batches),
            accelerator=device.type,
            devices=1,
            precision=precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
            use_distributed_sampler=False,
        )
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        elif child:
            peak_rss_reset()
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb()
        return timer.elapsed, peak

    losses = {"sample": SampleMatching, "distribution": DistributionMatching}
    if child:
        ours(losses[args.memory_of]())
        print(json.dumps({"peak_mb": peak_rss_mb()}))
        return
    times: dict[str, list[float]] = {"plain": [], "sample": [], "distribution": []}
    peaks: dict[str, float] = {}
    for _ in range(args.rounds):
        times["plain"].append(plain_loop())
        for name, loss in losses.items():
            elapsed, peak = ours(loss())
            times[name].append(elapsed)
            peaks[name] = peak
    if not cuda:
        for name in losses:
            command = [
                sys.executable,
                __file__,
                "--memory-of",
                name,
                "--workdir",
                str(tmp),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--batch-size",
                str(args.batch_size),
            ]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            peaks[name] = json.loads(output.strip().splitlines()[-1])["peak_mb"]
    plain_s, sample_s, distribution_s = (min(times[n]) for n in ("plain", "sample", "distribution"))
    sample_peak, distribution_peak = peaks["sample"], peaks["distribution"]
    plain_rate, ours_rate = measured_tokens / plain_s, measured_tokens / sample_s
    where = torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores)"
    memory = "peak GPU memory allocated" if cuda else "peak RSS during fit, a fresh process per loss"
    print(
        f"device: {where}; model: random T5 {size}; {args.steps} measured steps of {args.batch_size} examples, "
        f"best of {args.rounds} rounds; memory: {memory}"
    )
    print(f"{'what':<40} {'tokens/s':>10} {'s':>8} {'peak MB':>9}")
    print(f"{'plain PyTorch loop (cross-entropy)':<40} {plain_rate:>10,.0f} {plain_s:>8.2f} {'':>9}")
    print(f"{'ours, SampleMatching':<40} {ours_rate:>10,.0f} {sample_s:>8.2f} {sample_peak:>9,.0f}")
    print(
        f"{'ours, DistributionMatching':<40} {measured_tokens / distribution_s:>10,.0f} {distribution_s:>8.2f} "
        f"{distribution_peak:>9,.0f}"
    )
    print(f"ours / plain tokens/s: {ours_rate / plain_rate:.3f} (target >= 0.95)")
    print(
        f"distribution / sample matching: time {distribution_s / sample_s:.3f}x, "
        f"peak memory {distribution_peak / sample_peak:.3f}x (target <= 1.15x both)"
    )
    print(
        json.dumps(
            {
                "benchmark": "train_step",
                "ours_per_s": round(ours_rate, 1),
                "baseline_per_s": round(plain_rate, 1),
                "ratio": round(ours_rate / plain_rate, 3),
                "dm_over_sm_time": round(distribution_s / sample_s, 3),
                "dm_over_sm_peak_memory": round(distribution_peak / sample_peak, 3),
                "device": where,
            }
        )
    )


if __name__ == "__main__":
    main()
