"""GPU figures: greedy decoding of the static path against today's loop and against the bandwidth bound, and
training tokens/s and MFU for SmolLM2-135M and a FlanT5-Base-shaped T5.

Decode: GSM8K dev prompts (the paper's 4-shot prompt; repeated to ``--examples``), ``--max-new-tokens`` each,
through `generate` with today's loop (``static=False``: reserved KV cache) and with the static path
(``static=True``: fixed buffers, one CUDA graph per bucket, batch from free memory), same process, same
prompts; completions must be identical (exit status 1 otherwise). The bandwidth bound counts, per decoding
step, the weights' bytes plus the KV cache's bytes that step reads (the batch's mean filled positions x bytes
per token), over ``--bandwidth`` (H200: 4.8 TB/s by the datasheet; a copy through PyTorch measured 4.3 here).

Train: random weights, sequences of ``--seq-len`` tokens, bf16 autocast (Lightning's bf16-mixed), SDPA, fused
AdamW; tokens/s after warm-up, and MFU = 6 x parameters x tokens/s (x 4/3 with activation checkpointing,
which recomputes the forward) over ``--peak-tflops`` (H200 dense bf16: 989 by the datasheet; a bf16 matrix
product measured 788 here). T5 counts encoder parameters on source tokens and the rest on target tokens.

The model is SmolLM2-135M-Instruct when its folder resolves offline (`--model`), else a random decoder of its
shapes (`benchmarks/evaluate.smollm2_shaped`, same speed). ``--dry-run`` shrinks everything to run on a CPU
in seconds (a test runs it). One JSON line last.

    python benchmarks/gpu.py [--dry-run] [--parts decode,train] [--examples 64] [--max-new-tokens 128] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
SHARED = ROOT.parent / "shared"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def log(line: str, path: str | None = None) -> None:
    """Print ``line`` and append it to ``path`` at once (a timeout keeps what was measured)."""
    print(line, flush=True)
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def decoder_model(args, tokenizer):
    """SmolLM2 (real weights) where its folder has them, else a random model of its shapes."""
    from benchmarks.evaluate import smollm2_shaped

    folder = Path(args.model) if args.model else None
    if folder is not None and (folder / "model.safetensors").is_file() and not args.dry_run:
        from specialight.core.models import load_student

        return load_student(str(folder)).eval(), f"SmolLM2-135M ({folder.name})"
    layers = 2 if args.dry_run else 30
    return smollm2_shaped(len(tokenizer), layers).eval(), f"random SmolLM2-shaped decoder ({layers} layers)"


def load_tokenizer(args):
    from specialight.core.models import load_tokenizer as load
    from specialight.core.models import resolve_model

    return load(args.model if args.model and Path(args.model).is_dir() else resolve_model("smollm2"))


def decode_case(args, model, tokenizer) -> dict:
    """Today's loop and the static path on the same prompts: rates, identity, bandwidth fraction."""
    from specialight.evaluation import sizing
    from specialight.evaluation.generation import generate
    from specialight.evaluation.suites import build_items

    prompts = [i.prompt for i in build_items("gsm8k_dev", args.data_dir, limit=args.examples)]
    prompts = (prompts * -(-args.examples // len(prompts)))[: args.examples]
    generate(model, tokenizer, prompts[:2], 2, 2, progress=False, static=False)  # warm-up
    runs = {}
    for name, static in (("today", False), ("static", True)):
        _synchronize()
        start = time.perf_counter()
        out = generate(model, tokenizer, prompts, args.max_new_tokens, args.batch_size, progress=False, static=static)
        _synchronize()
        runs[name] = (out, time.perf_counter() - start)
    new_tokens = sum(len(tokenizer.encode(text, add_special_tokens=False)) for text in runs["static"][0])
    rates = {name: new_tokens / seconds for name, (_, seconds) in runs.items()}
    rows = min(sizing.bucket(len(prompts)), _static_batch(model, tokenizer, prompts, args))
    prompt_tokens = sum(len(tokenizer.encode(p)) for p in prompts) / len(prompts)
    filled = prompt_tokens + args.max_new_tokens / 2
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    kv = rows * filled * sizing.kv_bytes_per_token(model.config, next(model.parameters()).dtype)
    bound = rows / ((weights + kv) / (args.bandwidth * 1e12))  # tokens/s if every step moved only those bytes
    return {
        "examples": len(prompts),
        "new_tokens": new_tokens,
        "today_tokens_per_s": round(rates["today"], 1),
        "static_tokens_per_s": round(rates["static"], 1),
        "today_examples_per_s": round(len(prompts) / runs["today"][1], 2),
        "static_examples_per_s": round(len(prompts) / runs["static"][1], 2),
        "ratio": round(rates["static"] / rates["today"], 2),
        "identical": sum(a == b for a, b in zip(runs["today"][0], runs["static"][0], strict=True)),
        "batch": rows,
        "bytes_per_step": int(weights + kv),
        "bound_tokens_per_s": round(bound, 1),
        "fraction_of_bound": _figure(rates["static"] / bound),
    }


def _static_batch(model, tokenizer, prompts: list[str], args) -> int:
    """The rows per batch the static path takes (memory on CUDA, ``--batch-size`` elsewhere)."""
    from specialight.evaluation.sizing import memory_batch

    device = next(model.parameters()).device
    if device.type != "cuda":
        return args.batch_size
    lengths = [len(tokenizer.encode(p)) for p in prompts]
    return max(args.batch_size, memory_batch(model, lengths, args.max_new_tokens, device))


def t5_base_shaped(dry_run: bool):
    """A random T5 with FlanT5-Base's shapes (12+12 layers, width 768, 12 heads, gated-GELU 2048, 32,128
    tokens, untied head), built from a config: nothing is downloaded."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    size = dict(d_model=64, d_ff=128, num_layers=2, num_heads=2, d_kv=32) if dry_run else {}
    config = T5Config(
        vocab_size=32128,
        **(size or dict(d_model=768, d_ff=2048, num_layers=12, num_heads=12, d_kv=64)),
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5ForConditionalGeneration(config)


def train_case(model, args, encoder_decoder: bool) -> dict:
    """Tokens/s and MFU of ``--train-steps`` timed steps (after 3 warm-up steps) on random tokens."""
    device = torch.device(args.device)
    model.to(device).train()
    if args.checkpointing:
        model.gradient_checkpointing_enable()
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    vocabulary = model.config.vocab_size
    shape = (args.train_batch, args.seq_len)
    source = torch.randint(2, vocabulary, shape, device=device)
    target = torch.randint(2, vocabulary, (args.train_batch, args.seq_len // 2), device=device)
    batch = {"input_ids": source, "labels": target if encoder_decoder else source}
    seconds = 0.0
    for step in range(3 + args.train_steps):
        _synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _synchronize()
        seconds += (time.perf_counter() - start) if step >= 3 else 0.0
    tokens = (source.numel() + (target.numel() if encoder_decoder else 0)) * args.train_steps
    flops = _train_flops(model, source.numel(), target.numel(), encoder_decoder) * args.train_steps
    flops *= 4 / 3 if args.checkpointing else 1
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "batch": list(shape),
        "tokens_per_s": round(tokens / seconds, 1),
        "tflops": _figure(flops / seconds / 1e12),
        "mfu": _figure(flops / seconds / (args.peak_tflops * 1e12)),
        "checkpointing": args.checkpointing,
        "attention": model.config._attn_implementation,
        "loss": round(float(loss.detach()), 3),
    }


def _train_flops(model, source_tokens: int, target_tokens: int, encoder_decoder: bool) -> float:
    """6 x parameters x tokens; for T5 the encoder's parameters see source tokens, the rest target tokens."""
    total = sum(p.numel() for p in model.parameters())
    if not encoder_decoder:
        return 6.0 * total * source_tokens
    encoder = sum(p.numel() for p in model.encoder.parameters()) - model.shared.weight.numel()
    return 6.0 * (encoder * source_tokens + (total - encoder) * target_tokens)


def _figure(value: float) -> float:
    """Three significant digits (a CPU's dry-run fractions are tiny but not zero)."""
    return float(f"{value:.3g}")


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes and a few steps, for a CPU")
    parser.add_argument("--parts", default="decode,train", help="comma-separated: decode, train")
    parser.add_argument("--model", default=None, help="a SmolLM2 folder (default: resolve smollm2 offline)")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64, help="today's loop; the static path's floor")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="decode weights")
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--bandwidth", type=float, default=4.8, help="TB/s of device memory")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 TFLOP/s")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-dir", default=str(SHARED / "data"))
    parser.add_argument("--log", default=None, help="append each result line to this file as it is measured")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.examples, args.max_new_tokens, args.batch_size = min(args.examples, 2), min(args.max_new_tokens, 8), 2
        args.train_batch, args.seq_len, args.train_steps = 2, 32, 2
    if args.model is None:
        from specialight.core.models import resolve_model

        args.model = resolve_model("smollm2")
    return args


def run(args: argparse.Namespace) -> dict:
    """Every part's figures, each logged as soon as it is measured."""
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()})"
    result: dict = {"benchmark": "gpu", "device": device, "dry_run": args.dry_run}
    parts = args.parts.split(",")
    if "decode" in parts:
        tokenizer = load_tokenizer(args)
        model, what = decoder_model(args, tokenizer)
        model.to(args.device, DTYPES[args.dtype])
        decode = {"model": what, "dtype": args.dtype, **decode_case(args, model, tokenizer)}
        log(f"decode: {json.dumps(decode)}", args.log)
        result["decode"] = decode
        del model
    if "train" in parts:
        for name, build, encoder_decoder in (
            ("train_smollm2", lambda: decoder_model(args, load_tokenizer(args))[0].float(), False),
            ("train_t5_base", lambda: t5_base_shaped(args.dry_run), True),
        ):
            result[name] = train_case(build(), args, encoder_decoder)
            log(f"{name}: {json.dumps(result[name])}", args.log)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    result = run(args)
    print(json.dumps(result))
    decode = result.get("decode")  # bf16 may round a near tie differently in another batch shape: fp32 must agree
    return 1 if decode and args.dtype == "fp32" and decode["identical"] != decode["examples"] else 0


if __name__ == "__main__":
    sys.exit(main())
