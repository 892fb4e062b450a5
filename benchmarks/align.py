"""Tokenizer alignment: the compiled dynamic program against the paper-style pure-Python one.

Tokenizes real GSM8K train solutions with GPT-2 (teacher side) and T5 (student side) from
../shared/tokenizers, aligns the same pairs with the pure-Python oracle (tests/align/reference_dp.py)
and with `specialight.align.dp`, checks the paths are identical, and prints samples/s and the ratio.
Then runs the whole `specialight align` stage (tokenize, align, project, write Arrow) with 2 worker
processes on teacher samples built from those solutions and extrapolates to 200K samples.

    python benchmarks/align.py [--samples 2000] [--reference-samples 200] [--num-proc 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.align.reference_dp import reference_path  # noqa: E402

SHARED = ROOT.parent / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument(
        "--reference-samples",
        type=int,
        default=200,
        help="pairs the slow pure-Python oracle runs on (the ratio is measured on these)",
    )
    parser.add_argument("--num-proc", type=int, default=2)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from specialight.align.dp import align_surfaces
    from specialight.align.markers import surfaces
    from specialight.align.offsets import common_text, offsets_path
    from specialight.align.project import one_to_one_pairs
    from specialight.align.run import run_align
    from specialight.align.settings import AlignSettings
    from specialight.data.formats import answer_target
    from specialight.data.records import TeacherSample
    from specialight.data.tasks import load_examples

    data_dir = os.environ.get("SPECIALIGHT_DATA_DIR", SHARED / "data")
    tokenizers = Path(os.environ.get("SPECIALIGHT_TOKENIZERS", SHARED / "tokenizers"))
    gpt2 = AutoTokenizer.from_pretrained(tokenizers / "gpt2")
    t5 = AutoTokenizer.from_pretrained(tokenizers / "t5")
    examples = load_examples("gsm8k", "train", data_dir)[: args.samples]
    texts = [answer_target(e.answer, e.rationale) for e in examples]
    pairs = []
    for text in texts:
        teacher = surfaces(gpt2.convert_ids_to_tokens(gpt2.encode(text)), "byte_level")
        student = surfaces(t5.convert_ids_to_tokens(t5.encode(text, add_special_tokens=False)), "sentencepiece")
        pairs.append((teacher, student))
    align_surfaces(*pairs[0])  # compile (or load numba's cache) outside the timing

    subset = pairs[: args.reference_samples]
    start = time.perf_counter()
    reference = [reference_path(a, b) for a, b in subset]
    reference_s = time.perf_counter() - start
    start = time.perf_counter()
    ours_subset = [align_surfaces(a, b) for a, b in subset]
    ours_subset_s = time.perf_counter() - start
    identical = all([tuple(p) for p in ours.tolist()] == ref for ours, ref in zip(ours_subset, reference))

    start = time.perf_counter()
    ours_all = [align_surfaces(a, b) for a, b in pairs]
    ours_all_s = time.perf_counter() - start

    agree = total = 0
    for (a, b), path in zip(pairs, ours_all):
        if common_text([s.replace("\n", " ") for s in a], b):
            exact = set(one_to_one_pairs(offsets_path([s.replace("\n", " ") for s in a], b), len(a), len(b)).items())
            found = set(one_to_one_pairs(path, len(a), len(b)).items())
            agree, total = agree + len(exact & found), total + len(exact | found)

    with tempfile.TemporaryDirectory() as tmp:
        lines = []
        for example, (teacher, _) in zip(examples, pairs):
            others = (" the", " 1", ".", "\n", " a")  # a top-k lists a token once
            alternatives = [[token, *[a for a in others if a != token][:4]] for token in teacher]
            logprobs = [[-0.05, -3.0, -4.0, -5.0, -6.0]] * len(teacher)
            lines.append(TeacherSample(example.id, 0, "".join(teacher), teacher, alternatives, logprobs).to_json())
        settings = AlignSettings(student_tokenizer=str(tokenizers / "t5"), method="dp")
        timings = {}
        for count in (len(lines) // 4, len(lines)):
            samples = Path(tmp) / f"samples-{count}.jsonl"
            samples.write_text("\n".join(lines[:count]) + "\n")
            start = time.perf_counter()
            summary = run_align(samples, Path(tmp) / f"out-{count}", settings, num_proc=args.num_proc)
            timings[count] = time.perf_counter() - start
        (small, small_s), (large, stage_s) = sorted(timings.items())
        steady_rate = (large - small) / (stage_s - small_s)
        startup_s = stage_s - large / steady_rate

    reference_rate = len(subset) / reference_s
    ours_rate = len(subset) / ours_subset_s
    stage_rate = summary["kept"] / stage_s
    extrapolated_s = startup_s + 200_000 / steady_rate
    rows = [
        ("pure-Python DP (oracle)", f"{reference_rate:,.1f}", f"{len(subset)} pairs"),
        ("compiled DP (ours)", f"{ours_rate:,.1f}", f"{len(subset)} pairs, same inputs"),
        ("compiled DP (ours)", f"{len(pairs) / ours_all_s:,.1f}", f"{len(pairs)} pairs"),
        (
            f"whole align stage, {args.num_proc} procs",
            f"{stage_rate:,.1f}",
            f"{summary['kept']} samples incl. start-up",
        ),
        (
            f"whole align stage, {args.num_proc} procs",
            f"{steady_rate:,.1f}",
            f"steady state; start-up {startup_s:.1f} s",
        ),
    ]
    print(f"{'what':<32} {'samples/s':>12}  note")
    for name, rate, note in rows:
        print(f"{name:<32} {rate:>12}  {note}")
    print(f"identical paths on the {len(subset)} shared pairs: {identical}")
    print(f"ratio compiled / pure-Python: {ours_rate / reference_rate:,.0f}x (target >= 100x)")
    print(f"200K samples through the whole stage: {extrapolated_s:,.0f} s extrapolated (target < 120 s)")
    if total:
        print(f"DP one-to-one pairs that agree with the exact offsets alignment: {agree / total:.1%}")
    print(
        json.dumps(
            {
                "benchmark": "align",
                "ours_per_s": round(ours_rate, 2),
                "baseline_per_s": round(reference_rate, 2),
                "ratio": round(ours_rate / reference_rate, 1),
                "identical": identical,
                "stage_per_s": round(stage_rate, 2),
                "stage_steady_per_s": round(steady_rate, 2),
                "extrapolated_200k_s": round(extrapolated_s, 1),
                "dp_offsets_one_to_one_agreement": round(agree / total, 4) if total else math.nan,
                "device": "cpu",
                "num_proc": args.num_proc,
            }
        )
    )
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
