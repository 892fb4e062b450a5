"""Evaluation in process against evaluation through llama.cpp's llama-server, on the same questions.

In process: SmolLM2-135M-Instruct converted from the packaged GGUF (``~/.cache/specialight/models``), fp32,
`specialight.evaluation.generation.generate`. Through the server: ``llama-server`` serving that GGUF
(Q4_1) on loopback, `specialight.evaluation.server.ServerCompleter` with ``--concurrency`` requests in
flight and as many server slots. Same suite, prompts, budget, stop and scoring; both greedy. Prints
examples/s and accuracy (n, 95% interval) of each and how many completions agree (the server computes in
Q4_1 with its own kernels, so completions may differ); the last line is JSON with
``ratio_server_vs_in_process`` (examples/s). Without the server binary
($SPECIALIGHT_LLAMA_SERVER or ``~/.cache/specialight/llama-server/llama-server``, built by
``scripts/build_llama_server.sh``) it says so and exits 0.

    python benchmarks/evaluate_server.py [--suite multiarith_dev] [--examples 24] [--max-new-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"


def start_server(binary: Path, gguf: Path, slots: int, threads: int) -> tuple[subprocess.Popen, str]:
    """llama-server on a free loopback port with ``slots`` parallel slots; waits for /health."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-c", str(1024 * slots)]
    command += ["-t", str(threads), "--parallel", str(slots), "--log-disable"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return process, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"llama-server did not come up on port {port}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="multiarith_dev")
    parser.add_argument("--examples", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    from specialight.core.models import (
        SMOLLM2_ID,
        cache_dir,
        load_student,
        load_tokenizer,
        packaged_gguf,
        resolve_model,
    )
    from specialight.evaluation.evaluator import Evaluator
    from specialight.evaluation.server import ServerCompleter
    from specialight.evaluation.settings import EvalSettings

    configured = os.environ.get("SPECIALIGHT_LLAMA_SERVER")
    binary = Path(configured) if configured else cache_dir() / "llama-server" / "llama-server"
    gguf = packaged_gguf(SMOLLM2_ID)
    if not binary.is_file() or gguf is None:
        print(f"skipped: no llama-server at {binary} (scripts/build_llama_server.sh) or no packaged GGUF")
        print(json.dumps({"benchmark": "evaluate_server", "skipped": "llama-server not built"}))
        return 0
    settings = EvalSettings(
        suites=[args.suite],
        limit=args.examples,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        data_dir=os.environ.get("SPECIALIGHT_DATA_DIR", str(SHARED / "data")),
    )
    folder = resolve_model("smollm2")
    model, tokenizer = load_student(folder).eval(), load_tokenizer(folder)

    with tempfile.TemporaryDirectory() as out:
        local = Evaluator(model, tokenizer, settings)
        local.fitted()  # prompt fitting is common to both: not timed
        start = time.perf_counter()
        local_results = local.run(Path(out) / "local", progress=False)
        local_s = time.perf_counter() - start

        process, base_url = start_server(binary, gguf, args.concurrency, os.cpu_count() or 2)
        try:
            completer = ServerCompleter("smollm2", base_url, Path(out) / "server", concurrency=args.concurrency)
            served = Evaluator(None, tokenizer, settings, completer, model.config)
            served.fitted()
            start = time.perf_counter()
            served_results = served.run(Path(out) / "server", progress=False)
            served_s = time.perf_counter() - start
        finally:
            process.kill()
            process.wait()
        name = args.suite
        local_rows = (Path(out) / "local" / f"{name}.jsonl").read_text().splitlines()
        served_rows = (Path(out) / "server" / f"{name}.jsonl").read_text().splitlines()
        agree = sum(json.loads(a)["completion"] == json.loads(b)["completion"] for a, b in zip(local_rows, served_rows))

    n = local_results.counts[name]
    rows = []
    for what, results, seconds in (
        ("in process (fp32, prefix cache)", local_results, local_s),
        (f"llama-server (Q4_1, {args.concurrency} slots)", served_results, served_s),
    ):
        low, high = results.intervals[name]
        rows.append((what, n / seconds, seconds, results.scores[name], low, high))
    print(f"{n} {name} questions, 4-shot, up to {args.max_new_tokens} new tokens, SmolLM2-135M-Instruct, CPU")
    print(f"{'what':<36} {'examples/s':>10} {'s':>7} {'accuracy %':>10}  95% interval")
    for what, rate, seconds, accuracy, low, high in rows:
        print(f"{what:<36} {rate:>10.2f} {seconds:>7.1f} {accuracy:>10.1f}  {low:.1f}-{high:.1f}")
    print(f"identical completions: {agree}/{n}")
    record = {"benchmark": "evaluate_server", "suite": name, "n": n, "identical": agree}
    for key, (_, rate, _, accuracy, low, high) in zip(("in_process", "server"), rows):
        record[key] = {"per_s": round(rate, 3), "accuracy": round(accuracy, 2), "ci95": [round(low, 2), round(high, 2)]}
    record["device"] = f"cpu ({os.cpu_count()} cores)"
    record["ratio_server_vs_in_process"] = round(rows[1][1] / rows[0][1], 2)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
