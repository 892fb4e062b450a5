"""On-policy distillation (beyond the paper): the student learns on its own samples, scored by a teacher whose
tokenizer may differ from its own, local or served.

Every ``every_n_steps`` optimizer steps a round runs before the step:

1. the rows scored since the last round enter a replay buffer (the newest ``buffer_size`` are kept);
2. the current student samples completions of ``questions`` tuning questions (temperature ``temperature``,
   seeded by the round, so a resumed run draws the same ones);
3. the teacher scores them teacher-forced (`LocalTeacher.score`, or `ServerScorer` through an
   OpenAI-compatible server), in a background thread while training goes on;
4. the aligner projects the teacher's top-k onto the student's tokens (`specialight.align`), as
   ``specialight align`` does for teacher samples.

Each training batch is then replaced, with probability ``lmbda`` (GKD's on-policy share), by a batch drawn
from the buffer (DistiLLM's replay); other batches keep the data module's own, with one-hot targets added
where they carry no teacher distribution, so any divergence plugin trains on both. A round's rows enter the
buffer at the next round whether scoring ran in the background or not, so both give the same run.

The buffer, the pending samples, the round counter and the random state are saved in checkpoints: a killed run
resumes where it was (pending samples are scored again after a resume; scoring is deterministic). Per round
it logs the samples kept, the scoring seconds, the share of each target kind (`specialight.align.project.KINDS`)
and ``onpolicy/divergence``: the loss plugin's value on the student's own new samples.
"""

from __future__ import annotations

import logging
import random
import time
from concurrent.futures import Future, ThreadPoolExecutor
from operator import attrgetter
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from specialight.align.project import KINDS
from specialight.align.run import Aligner, align_sample
from specialight.align.settings import AlignSettings
from specialight.core.constants import IGNORE_INDEX
from specialight.core.models import resolve_model
from specialight.data.encoding import Encoder, Item
from specialight.data.formats import is_cot, render
from specialight.data.stops import TEACHER_STOPS, cut_at_stop
from specialight.evaluation.generation import generate
from specialight.teacher.build import build_teacher

SAMPLE_STOP = "\n\nQ"  # where each of TEACHER_STOPS begins: a chain of thought may write "Q:" inside a line
logger = logging.getLogger(__name__)


def one_hot_targets(batch: dict[str, Tensor], width: int) -> None:
    """Add ``topk_ids``/``topk_probs`` ``[B, T, width]`` to a batch that has none: all mass on each label."""
    labels = batch["labels"]
    ids = torch.zeros((*labels.shape, width), dtype=torch.long, device=labels.device)
    probs = torch.zeros((*labels.shape, width), dtype=torch.float32, device=labels.device)
    ids[..., 0] = labels.clamp(min=0)
    probs[..., 0] = (labels != IGNORE_INDEX).float()
    batch["topk_ids"], batch["topk_probs"] = ids, probs


class OnPolicyDistillation(L.Callback):
    """Mixes the student's own samples, scored by ``teacher``, into training (see the module docstring).

    Args:
        teacher: ``local:PATH_OR_ID`` (a causal LM in process) or ``openai:MODEL`` (with ``base_url``).
        base_url: an OpenAI-compatible server's base URL for ``openai:`` teachers.
        api_key_env: the environment variable holding the server's API key, if it needs one.
        every_n_steps: optimizer steps between rounds.
        questions: tuning questions the student answers per round.
        lmbda: the share of training batches drawn from the buffer (0: none, 1: all once it has rows).
        buffer_size: rows kept (the newest).
        temperature: the student's sampling temperature.
        max_new_tokens: the longest sample.
        top_k: teacher alternatives kept per position.
        data_format: the format of the student's prompts (a chain-of-thought format).
        seed: seeds the question draws, the batch draws and each round's sampling.
        background: score in a thread while training goes on (False: at once, for debugging).
    """

    supplies_teacher_distributions = True

    def __init__(
        self,
        teacher: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        every_n_steps: int = 10,
        questions: int = 8,
        lmbda: float = 0.5,
        buffer_size: int = 64,
        temperature: float = 1.0,
        max_new_tokens: int = 128,
        top_k: int = 5,
        data_format: str = "zero_shot_cot",
        seed: int = 0,
        background: bool = True,
    ) -> None:
        if not is_cot(data_format) or every_n_steps < 1 or not 0 <= lmbda <= 1:
            raise ValueError("on-policy: data_format must be a CoT format, every_n_steps >= 1 and 0 <= lmbda <= 1")
        self.teacher, self.base_url, self.api_key_env = teacher, base_url, api_key_env
        self.every_n_steps, self.questions, self.lmbda, self.buffer_size = every_n_steps, questions, lmbda, buffer_size
        self.temperature, self.max_new_tokens, self.top_k = temperature, max_new_tokens, top_k
        self.data_format, self.seed, self.background = data_format, seed, background
        self.rng = random.Random(seed)
        self.buffer: list[dict[str, Any]] = []
        self.pending: list[dict[str, str]] = []
        self.round = 0
        self.last_round_step = -1
        self._future: Future | None = None
        self._pool: ThreadPoolExecutor | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng.getstate(),
            "buffer": self.buffer,
            "pending": self.pending,
            "round": self.round,
            "last_round_step": self.last_round_step,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version, internal, gauss = state_dict["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.buffer, self.pending = list(state_dict["buffer"]), list(state_dict["pending"])
        self.round, self.last_round_step = state_dict["round"], state_dict["last_round_step"]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.prepare(trainer.datamodule, pl_module.hparams.model_name_or_path)
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="on-policy-teacher")

    def prepare(self, datamodule: L.LightningDataModule, student: str) -> None:
        """Build the encoder, the question pool, the aligner and the teacher from a data module and the
        student's name (`setup` does it for a fit; `probe` needs it alone)."""
        datamodule.setup("fit")
        self.encoder: Encoder = datamodule.encoder
        unique = {item.example.id: item.example for item in datamodule.dataset.items}
        self.pool = sorted(unique.values(), key=attrgetter("id"))
        settings = AlignSettings(
            student_tokenizer=resolve_model(student),
            teacher_scheme="text",
            top_k=self.top_k,
            max_length=self.encoder.max_target_length - 1,
            data_dir=datamodule.hparams.data_dir,
        )
        self.aligner = Aligner(settings)
        # the same specs as `distill --score`: local:PATH_OR_ID in process, openai:MODEL through base_url
        self.scorer = build_teacher(self.teacher, self.base_url, api_key_env=self.api_key_env, score=True)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        step = trainer.global_step
        if step % self.every_n_steps == 0 and step != self.last_round_step:
            self.last_round_step = step
            self._run_round(pl_module)
        width = self.top_k + 1
        if self.buffer and self.rng.random() < self.lmbda:
            size = int(batch["input_ids"].shape[0])
            drawn = self.rng.sample(range(len(self.buffer)), k=min(size, len(self.buffer)))
            replacement = self._collate([self.buffer[i] for i in drawn], pl_module.device)
            batch.clear()
            batch.update(replacement)
        elif "topk_ids" not in batch:
            one_hot_targets(batch, width)

    def _run_round(self, pl_module: L.LightningModule) -> None:
        """Take the last round's scored rows into the buffer, then sample this round's and start scoring them."""
        if self.pending:
            started = time.perf_counter()
            scored = self._future.result() if self._future is not None else self._score(self.pending)
            self._admit(scored, pl_module, time.perf_counter() - started)
        examples = self.rng.sample(self.pool, k=min(self.questions, len(self.pool)))
        seed = self.seed * 1_000_003 + self.round  # a resumed run draws the same samples
        with pl_module.trainer.precision_plugin.forward_context():  # bf16-mixed samples in bf16, as it evaluates
            self.pending = sample_completions(
                pl_module.model, self.encoder, examples, self.data_format, self.temperature, self.max_new_tokens, seed
            )
        self.round += 1
        self._future = self._pool.submit(self._score, list(self.pending)) if self.background and self._pool else None

    def _score(self, pending: list[dict[str, str]]) -> list[tuple[dict, dict] | None]:
        """Each pending sample scored by the teacher and aligned: ``(aligned row, its question)`` or None."""
        rows = []
        for index, sample in enumerate(pending):
            scored = self.scorer.score(sample["prompt"], sample["completion"], self.top_k)
            record = scored.to_sample(sample["question_id"], index, "on-policy", self.teacher, None, False)
            text = render(record.text.strip(), self.aligner.newline)
            ids = self.aligner.tokenizer(text, add_special_tokens=False)["input_ids"]
            row, _ = align_sample(record, self.aligner, text, ids)
            rows.append((_plain(row), sample) if row is not None else None)
        return rows

    def _admit(self, scored: list, pl_module: L.LightningModule, waited: float) -> None:
        """Encode scored rows into the buffer and log the round."""
        kept = [entry for entry in scored if entry is not None]
        if not kept:
            logger.warning("on-policy round %d: no sample survived scoring and alignment", self.round)
            return
        rows, fresh = [row for row, _ in kept], self._encode(kept, self.pool)
        self.buffer = (self.buffer + fresh)[-self.buffer_size :]
        self._log_round(pl_module, rows, fresh, waited)

    def _log_round(self, pl_module: L.LightningModule, rows: list[dict], fresh: list[dict], waited: float) -> None:
        kinds = np.bincount(np.concatenate([np.asarray(r["target_kind"]) for r in rows]), minlength=len(KINDS))
        with torch.no_grad():
            divergence = float(pl_module.batch_loss(self._collate(fresh, pl_module.device)))
        values = {f"onpolicy/share_{kind}": float(n) / max(kinds.sum(), 1) for kind, n in zip(KINDS, kinds)}
        values |= {"onpolicy/samples": float(len(rows)), "onpolicy/scoring_wait_seconds": waited}
        values["onpolicy/divergence"] = divergence
        pl_module.log_dict(values, on_step=True, on_epoch=False, batch_size=1)
        logger.info(
            "on-policy round %d: %d samples, divergence %.4f, waited %.1f s for the teacher",
            self.round,
            len(rows),
            divergence,
            waited,
        )

    def _encode(self, kept: list[tuple[dict, dict]], examples: list) -> list[dict[str, Any]]:
        """Scored, aligned rows ``(row, sample)`` as training examples of the student (plain lists)."""
        by_id = {e.id: e for e in examples}
        encoder = Encoder(
            self.encoder.tokenizer,
            self.encoder.builder,
            self.encoder.encoder_decoder,
            self.encoder.max_source_length,
            self.encoder.max_target_length,
            targets=[row for row, _ in kept],
        )
        return [
            _plain(encoder.encode(Item(by_id[s["question_id"]], row["text"], i), self.data_format))
            for i, (row, s) in enumerate(kept)
        ]

    @torch.no_grad()
    def probe(self, pl_module: L.LightningModule, examples: list, losses: dict[str, Any], seed: int = 0):
        """The teacher–student divergence on the student's own samples of ``examples`` (held-out questions),
        after `prepare`: ``{name: {question id: value}}``, each ``losses[name]`` (a `TopKDivergence`) averaged
        over the sample's positions that carry the teacher's distribution (one-hot positions, such as the EOS
        the sample never drew, are left out)."""
        pending = sample_completions(
            pl_module.model, self.encoder, examples, self.data_format, self.temperature, self.max_new_tokens, seed
        )
        kept = [entry for entry in self._score(pending) if entry is not None]
        values: dict[str, dict[str, float]] = {name: {} for name in losses}
        for example, (_, sample) in zip(self._encode(kept, examples), kept, strict=True):
            batch = self._collate([example], pl_module.device)
            logits, targets = pl_module.logits(batch).float(), pl_module.targets(batch)
            for name, loss in losses.items():
                position = loss.position_targets(targets)
                counted = position["use"] & (targets["labels"] != IGNORE_INDEX)
                if bool(counted.any()):
                    values[name][sample["question_id"]] = float(loss.per_position(logits, position)[counted].mean())
        return values

    def _collate(self, examples: list[dict], device: torch.device) -> dict[str, Tensor]:
        arrays = [
            {
                **e,
                "topk_ids": np.asarray(e["topk_ids"], dtype=np.int64),
                "topk_probs": np.asarray(e["topk_probs"], dtype=np.float32),
            }
            for e in examples
        ]
        return {key: value.to(device) for key, value in self.encoder.collate(arrays).items()}


@torch.no_grad()
def sample_completions(
    model, encoder: Encoder, examples: list, data_format: str, temperature: float, max_new_tokens: int, seed: int
) -> list[dict[str, str]]:
    """``model``'s completions of ``examples``' prompts in ``data_format``, sampled at ``temperature`` by the
    evaluator's own decoding loop (shared prefix, finished rows leave the batch) with ``seed`` (the global RNG
    left as it was), cut where a next question begins; empty ones are dropped. Rows: ``question_id``,
    ``prompt``, ``completion``."""
    prompts = [encoder.builder.build(e, data_format).prompt for e in examples]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        options = {"batch_size": len(prompts), "stop": SAMPLE_STOP, "progress": False, "temperature": temperature}
        texts = generate(model, encoder.tokenizer, prompts, max_new_tokens=max_new_tokens, **options)
    texts = [cut_at_stop(text, TEACHER_STOPS).rstrip() for text in texts]
    kept = [(e, p, t) for e, p, t in zip(examples, prompts, texts) if t.strip()]
    return [{"question_id": e.id, "prompt": p, "completion": t} for e, p, t in kept]


def _plain(encoded: dict) -> dict[str, Any]:
    """An encoded example with lists for arrays, as a checkpoint stores it (no numpy objects)."""
    return {key: value.tolist() if isinstance(value, np.ndarray) else value for key, value in encoded.items()}
