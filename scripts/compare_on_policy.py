"""On-policy against off-policy distillation at equal training minutes (issue 23, part 4), resumably.

    python scripts/compare_on_policy.py --teacher RUN/best.ckpt [--out runs/compare_on_policy] [--minutes 10]

1. ``teacher``: the teacher as a transformers folder (``specialight export`` of a checkpoint, once).
2. ``teacher_samples.jsonl``: the teacher's own zero-shot CoT samples of ``--questions`` tuning questions
   (temperature ``--temperature``), each scored teacher-forced by itself (top-k log-probs): the off-policy data.
3. Four fits of the untouched student, each for ``--minutes`` of training (configs/compare_on_policy.yaml;
   the step-0 and final evaluations not counted; the teacher's sampling, step 2, not charged to any arm),
   under ``OUT/<arm>``:
   - ``gold``: cross-entropy on the gold rationales (a control: no teacher at all);
   - ``off_policy``: cross-entropy on the teacher's samples (sample matching, the paper's off-policy data; all
     of them, right or wrong, as the on-policy arms take the student's);
   - ``on_policy_rkl`` / ``on_policy_jsd``: the same teacher samples (one-hot targets), of which a share
     ``lmbda`` 0.5 of the batches is replaced by the student's own samples scored by the teacher, with reverse
     KL / generalized JSD (beta 0.5): the off-policy arm plus on-policy data, nothing else changed.
4. ``probe.json``: each student's (and the untouched student's) samples of ``--probe`` held-out questions
   (GSM8K tune's ``heldout`` split, never trained on), scored by the teacher; forward KL, reverse KL and JSD
   per question, over the positions that carry the teacher's distribution.
5. ``comparison.md`` (`specialight.reporting.arms`) and ``timings.json``.

A step whose output exists is skipped, so a killed comparison resumes. Offline: set ``SPECIALIGHT_DATA_DIR``
(and ``SPECIALIGHT_TOKENIZERS``, ``HF_HUB_OFFLINE=1``) as ``make`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from specialight.data.answers import extract_answer, is_correct
from specialight.data.datamodule import SpecializationDataModule
from specialight.data.records import prompt_hash
from specialight.data.tasks import load_examples
from specialight.teacher.local import LocalTeacher
from specialight.training.cli import native_precision
from specialight.training.losses import DistributionMatching, GeneralizedJSD, ReverseKL
from specialight.training.module import SpecializationModule
from specialight.training.on_policy import OnPolicyDistillation, sample_completions

BASE = Path(__file__).resolve().parents[1] / "configs" / "compare_on_policy.yaml"
STUDENT = "smollm2-135m-instruct"
LOSSES = "specialight.training.losses."
logger = logging.getLogger("compare_on_policy")


def autocast():
    """bf16 autocast where this machine multiplies bf16 natively (as the fits' auto_precision), else nothing."""
    if native_precision("cpu") == "bf16-mixed":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def data_module(model: str) -> SpecializationDataModule:
    """The arms' tuning data (GSM8K tune without the heldout rows), encoded for ``model``."""
    base = yaml.safe_load(BASE.read_text())["data"]
    module = SpecializationDataModule(
        model_name_or_path=model, **{k: v for k, v in base.items() if k != "teacher_data"}
    )
    module.setup("fit")
    return module


def teacher_samples(teacher_dir: Path, out: Path, questions: int, temperature: float, batch: int = 64) -> None:
    """The teacher's zero-shot CoT samples of ``questions`` tuning questions, each scored by itself."""
    module = data_module(str(teacher_dir))
    pool = sorted({item.example.id: item.example for item in module.dataset.items}.values(), key=lambda e: e.id)
    chosen = random.Random(0).sample(pool, k=min(questions, len(pool)))
    teacher = LocalTeacher.from_pretrained(str(teacher_dir))
    partial = out.with_suffix(".partial")
    with partial.open("w", encoding="utf-8") as handle:
        for start in range(0, len(chosen), batch):
            examples = chosen[start : start + batch]
            with autocast():
                drawn = sample_completions(
                    teacher.model, module.encoder, examples, "zero_shot_cot", temperature, 192, seed=start
                )
            by_id = {e.id: e for e in examples}
            for row in drawn:
                gold = by_id[row["question_id"]].answer
                scored = teacher.score(row["prompt"], row["completion"], top_k=5)
                answer = extract_answer(row["completion"], "gsm8k")
                correct = is_correct(row["completion"], gold, "gsm8k")
                sample = scored.to_sample(row["question_id"], 0, prompt_hash(row["prompt"]), "teacher", answer, correct)
                handle.write(sample.to_json() + "\n")
            logger.info("teacher samples: %d / %d questions", start + len(examples), len(chosen))
    partial.rename(out)


def arm_configs(out: Path, teacher_dir: Path, samples: Path, eval_limit: int | None) -> dict[str, dict]:
    """The full fit config of every arm (``eval_limit``: examples per suite, for a quick trial)."""
    base = yaml.safe_load(BASE.read_text())
    if eval_limit:
        settings = base["trainer"]["callbacks"][0]["init_args"]["settings"]
        settings["limit"], settings["limits"] = eval_limit, {}
    on_policy = {
        "class_path": "specialight.training.on_policy.OnPolicyDistillation",
        "init_args": {
            "teacher": f"local:{teacher_dir}",
            "every_n_steps": 5,
            "questions": 16,
            "lmbda": 0.5,
            "buffer_size": 64,
            "temperature": 1.0,
            "max_new_tokens": 160,
            "top_k": 5,
        },
    }
    losses = {
        "gold": ({"class_path": LOSSES + "SampleMatching"}, None, False),
        "off_policy": ({"class_path": LOSSES + "SampleMatching"}, str(samples), False),
        "on_policy_rkl": ({"class_path": LOSSES + "ReverseKL"}, str(samples), True),
        "on_policy_jsd": ({"class_path": LOSSES + "GeneralizedJSD", "init_args": {"beta": 0.5}}, str(samples), True),
    }
    configs = {}
    for arm, (loss, teacher_data, with_on_policy) in losses.items():
        config = yaml.safe_load(yaml.safe_dump(base))
        config["model"]["loss"] = loss
        config["data"]["teacher_data"] = teacher_data
        config["data"]["only_correct"] = False  # a weak teacher: its samples are the data, right or wrong
        config["trainer"]["default_root_dir"] = str(out / arm)
        if with_on_policy:
            config["trainer"]["callbacks"].insert(0, on_policy)
        configs[arm] = config
    return configs


def run_folder(root: Path) -> Path | None:
    """The finished run under ``root``: its last evaluation came after training ended (None if none)."""
    for run in sorted(root.glob("lightning_logs/version_*"), reverse=True):
        records = run / "evaluations.jsonl"
        if records.is_file() and len(records.read_text().splitlines()) >= 2 and (run / "checkpoints").is_dir():
            return run
    return None


def fit(arm: str, config: dict, out: Path, minutes: float) -> Path:
    """Run one arm's fit (skipped when it finished before with the same config and minutes); its run folder."""
    limit = f"00:00:{int(minutes):02d}:{int(round(minutes % 1 * 60)):02d}"
    config = yaml.safe_load(yaml.safe_dump(config)) | {"trainer": config["trainer"] | {"max_time": limit}}
    path = out / "configs" / f"{arm}.yaml"
    text = yaml.safe_dump(config, sort_keys=False)
    if path.is_file() and path.read_text() != text:
        raise SystemExit(f"{path} was written with other settings; give another --out (or delete {out / arm})")
    done = run_folder(out / arm)
    if done is not None:
        return done
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    command = [sys.executable, "-m", "specialight.cli", "fit", "--config", str(path)]
    logger.info("arm %s: %s", arm, " ".join(command))
    subprocess.run(command, check=True)
    found = run_folder(out / arm)
    if found is None:
        raise RuntimeError(f"arm {arm}: the fit ended without a final evaluation under {out / arm}")
    return found


def probe(out: Path, teacher_dir: Path, runs: dict[str, Path], questions: int) -> dict[str, dict[str, dict]]:
    """Each student's divergence from the teacher on its own samples of held-out questions."""
    path = out / "probe.json"
    if path.is_file():
        return json.loads(path.read_text())
    module = data_module(STUDENT)
    callback = OnPolicyDistillation(f"local:{teacher_dir}", temperature=1.0, max_new_tokens=160, background=False)
    callback.prepare(module, STUDENT)
    examples = load_examples("gsm8k", "heldout")[:questions]
    losses = {"forward_kl": DistributionMatching(), "reverse_kl": ReverseKL(), "jsd": GeneralizedJSD(beta=0.5)}
    students = {"untrained": None} | {arm: run / "checkpoints" / "last.ckpt" for arm, run in runs.items()}
    result = {}
    for name, ckpt in students.items():
        if ckpt is None:
            student = SpecializationModule(model_name_or_path=STUDENT)
            student.configure_model()
        else:
            student = SpecializationModule.load_from_checkpoint(str(ckpt), map_location="cpu")
        student.eval()
        with autocast():
            result[name] = callback.probe(student, examples, losses, seed=1)
        logger.info("probe %s: %d samples", name, len(result[name]["reverse_kl"]))
    path.write_text(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="a specialight checkpoint or a transformers folder")
    parser.add_argument("--out", default="runs/compare_on_policy")
    parser.add_argument("--minutes", type=float, default=10.0, help="training minutes per arm")
    parser.add_argument("--questions", type=int, default=480, help="tuning questions the teacher answers")
    parser.add_argument("--temperature", type=float, default=0.7, help="the teacher's sampling temperature")
    parser.add_argument("--probe", type=int, default=64, help="held-out questions of the divergence probe")
    parser.add_argument("--eval_limit", type=int, default=None, help="examples per suite (a quick trial only)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}

    def timed(name: str, action):
        started = time.perf_counter()
        value = action()
        if name not in timings:
            timings[name] = round(time.perf_counter() - started, 1)
            timings_path.write_text(json.dumps(timings, indent=2))
        return value

    teacher_dir = Path(args.teacher)
    if teacher_dir.suffix == ".ckpt":
        from specialight.training.export import export_checkpoint

        folder = out / "teacher"
        if not (folder / "config.json").is_file():
            timed("export_teacher", lambda: export_checkpoint(str(teacher_dir), str(folder), overwrite=True))
        teacher_dir = folder.resolve()
    samples = out / "teacher_samples.jsonl"
    if not samples.is_file():
        timed("teacher_samples", lambda: teacher_samples(teacher_dir, samples, args.questions, args.temperature))
    runs = {
        arm: timed(f"fit_{arm}", lambda arm=arm, config=config: fit(arm, config, out, args.minutes))
        for arm, config in arm_configs(out, teacher_dir, samples.resolve(), args.eval_limit).items()
    }
    result = timed("probe", lambda: probe(out, teacher_dir, runs, args.probe))
    from specialight.reporting.arms import comparison_markdown

    text = comparison_markdown(runs, "off_policy", result, probe_reference="untrained")
    (out / "comparison.md").write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
