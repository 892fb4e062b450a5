"""A local transformers model as the teacher: samples with per-step top-k log-probs, or teacher-forced.

`LocalTeacher.sample` draws one continuation (seeded, so a restarted run draws the same one) and records,
at every generated position, the token and the model's top-k alternatives with log-probs, read from the
model's raw logits (temperature 1: the teacher's distribution, whatever temperature drew the sample).
`LocalTeacher.score` runs a given text (for example a gold GSM8K rationale) after its prompt and records
the same at every position of the text: the distribution a local teacher supplies for human-written chains
of thought.
"""

from __future__ import annotations

import torch

from specialight.align.markers import surface, tokenizer_scheme
from specialight.data.records import TeacherSample, prompt_hash
from specialight.data.stops import TEACHER_STOPS, cut_tokens_at_stop
from specialight.teacher.completion import Completion, TokenUsage


class LocalTeacher:
    """A causal LM from transformers used as a teacher on CPU or GPU."""

    concurrent = False  # one model, one seeded RNG: samples are drawn one after another

    def __init__(self, model, tokenizer, name: str = "local", stop: list[str] | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.scheme = tokenizer_scheme(tokenizer)
        self.stop = list(stop) if stop is not None else list(TEACHER_STOPS)
        self.usage = TokenUsage()

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str = "cpu") -> LocalTeacher:
        """Load a causal LM (folder, hub id or alias) as a teacher."""
        from specialight.core.models import load_student, load_tokenizer

        return cls(load_student(name_or_path).to(device), load_tokenizer(name_or_path), name=name_or_path)

    @torch.inference_mode()
    def sample(self, prompt: str, temperature: float, max_tokens: int, top_k: int, seed: int) -> Completion:
        """One continuation of ``prompt`` drawn with ``seed``, cut at a stop string or EOS."""
        ids = torch.tensor([self.tokenizer.encode(prompt, add_special_tokens=True)], device=self.model.device)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            output = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_tokens,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=self.tokenizer.eos_token_id,
                stop_strings=self.stop,
                tokenizer=self.tokenizer,
            )
        finally:
            torch.random.set_rng_state(generator_state)
        new = output.sequences[0, ids.shape[1] :].tolist()
        self.usage.add(ids.shape[1], len(new))
        logprobs = torch.log_softmax(torch.stack(output.logits, dim=1)[0].float(), dim=-1)  # [new, vocab]
        top = logprobs.topk(top_k, dim=-1)
        finish = "length"
        if self.tokenizer.eos_token_id in new:
            cut = new.index(self.tokenizer.eos_token_id)
            new, finish = new[:cut], "stop"
        tokens = [self._surface(i) for i in new]
        tops = [[self._surface(i) for i in row] for row in top.indices[: len(new)].tolist()]
        values = top.values[: len(new)].tolist()
        kept = cut_tokens_at_stop(tokens, tops, values, self.stop)
        if len(kept[0]) < len(tokens):
            finish = "stop"
        return Completion("".join(kept[0]), kept[0], kept[1], kept[2], finish)

    def sample_many(
        self, prompt: str, temperature: float, max_tokens: int, top_k: int, seed: int, n: int
    ) -> list[Completion] | None:
        """None: one local model draws one sample per call, so the caller draws each with `sample` and its
        own seed."""
        return None

    def _surface(self, token_id: int) -> str:
        return surface(self.tokenizer.convert_ids_to_tokens(int(token_id)), self.scheme)

    @torch.inference_mode()
    def score(self, prompt: str, text: str, top_k: int = 5) -> Completion:
        """Top-k log-probs at every token of ``text`` when it follows ``prompt`` (finish reason ``scored``)."""
        prompt_ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        text_ids = self.tokenizer.encode(text, add_special_tokens=False)
        if not text_ids:
            raise ValueError("cannot score an empty text")
        bos = [self.tokenizer.bos_token_id] if not prompt_ids and self.tokenizer.bos_token_id is not None else []
        context = bos + prompt_ids
        if not context:
            raise ValueError("scoring needs a prompt or a BOS token before the text")
        ids = torch.tensor([context + text_ids], device=self.model.device)
        logits = self.model(ids).logits[0, len(context) - 1 : -1].float()  # [len(text_ids), vocab]
        logprobs = torch.log_softmax(logits, dim=-1)
        top = logprobs.topk(top_k, dim=-1)
        own = logprobs.gather(1, torch.tensor(text_ids, device=logprobs.device)[:, None])[:, 0]
        tokens = [self._surface(i) for i in text_ids]
        return Completion(
            text="".join(tokens),
            tokens=tokens,
            top_tokens=[[self._surface(i) for i in row] for row in top.indices.tolist()],
            top_logprobs=top.values.tolist(),
            finish_reason="scored",
            token_logprobs=[min(v, 0.0) for v in own.tolist()],
        )

    def score_sample(
        self, question_id: str, prompt: str, text: str, answer: str | None, top_k: int = 5, prompt_id: str | None = None
    ) -> TeacherSample:
        """`score` as a `TeacherSample` record (sample index 0, finish reason ``scored``); ``prompt_id``
        defaults to the hash of ``prompt``."""
        scored = self.score(prompt, text, top_k)
        return scored.to_sample(question_id, 0, prompt_id or prompt_hash(prompt), self.name, answer, True)
