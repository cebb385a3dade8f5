"""Decoders: greedy, temperature sampling, beam search (and best-of-N in bon.py), each a `Request` to the
run's generation engine (framework/generation.py) plus which candidates count as its answer.

Every decoder returns a `Decoding`: per prompt, its candidates (text, generated tokens, sequence
log-probability under the model at temperature 1) and the chosen ones: the one greedy/beam output, or every
sample for `sample` (whose accuracy is then the expected accuracy of one sample); and, for a decoder that
decodes a baseline beside its own outputs (best-of-N's greedy pass), the baseline's. Log-probabilities come
from the logits generation computes anyway, not from a second forward pass.

Evaluation (framework/evaluation.py) scores every decoder the same way, then hands the decoding and the
checker's verdicts back to `Decoder.metrics` for what only that decoder measures (best-of-N's accuracy
curve and lift over greedy); the base decoder measures nothing more. A decoder keeps no state between calls.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import torch

from framework import registry
from framework.config import DecoderConfig, require
from framework.engine import Candidate, Engine, Request

log = logging.getLogger(__name__)


@dataclass
class Decoded:
    candidates: list[Candidate]
    chosen: list[int]  # indices of the candidates that count as the decoder's answer


@dataclass
class Decoding:
    """What `Decoder.decode` returns for a list of prompts: each prompt's `outputs` (what evaluation scores)
    and, from a decoder that decodes a baseline to compare with, each prompt's `reference` (None otherwise)."""

    outputs: list[Decoded]
    reference: list[Decoded] | None = None


@dataclass
class Correctness:
    """The answer checker's verdict on every candidate of a `Decoding`: [prompt][candidate] -> correct."""

    outputs: list[list[bool]]
    reference: list[list[bool]] | None = None


# ---------------------------------------------------------------------------- configs
@dataclass
class GreedyConfig(DecoderConfig):
    name: str = "greedy"


@dataclass
class SampleConfig(DecoderConfig):
    LABEL_KEYS: ClassVar[tuple[str, ...]] = ("samples_per_prompt", "temperature")
    name: str = "sample"
    temperature: float = 1.0
    top_p: float = 1.0
    samples_per_prompt: int = 4  # independent samples per prompt; pass@k is reported for k up to this

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.temperature > 0 and math.isfinite(self.temperature), f"{prefix}.temperature",
                "must be > 0 (use decoder=greedy for temperature 0)", self.temperature)
        require(0 < self.top_p <= 1, f"{prefix}.top_p", "must be in (0, 1]", self.top_p)
        require(self.samples_per_prompt >= 1, f"{prefix}.samples_per_prompt", "must be >= 1",
                self.samples_per_prompt)


@dataclass
class BeamConfig(DecoderConfig):
    LABEL_KEYS: ClassVar[tuple[str, ...]] = ("num_beams",)
    name: str = "beam"
    num_beams: int = 5  # beam width; 1 is greedy. 5: the SOC paper's main width
    length_penalty: float = 1.0  # beam score = sum log-prob / length**length_penalty (transformers' convention)

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.num_beams >= 1, f"{prefix}.num_beams", "must be >= 1", self.num_beams)
        require(math.isfinite(self.length_penalty), f"{prefix}.length_penalty", "must be a finite number",
                self.length_penalty)


# ---------------------------------------------------------------------------- decoders
class Decoder:
    """A decoder asks the engine for `request()` and picks its answer among the candidates."""

    config: DecoderConfig

    def __init__(self, config: DecoderConfig, seed: int = 0,
                 answer_extractor: Callable[[str], str | None] | None = None, stop: Sequence[str] = ()):
        self.config, self.seed = config, seed
        # text -> normalised final answer (the dataset checker's `extract`), for decoders that choose by
        # answer, e.g. majority vote; None where the caller has no checker
        self.answer_extractor = answer_extractor
        self.stop = tuple(stop)  # the data's stop strings (TaskData.stop: a few-shot prompt's next exemplar)

    def request(self) -> Request:
        raise NotImplementedError

    @property
    def draws_samples(self) -> bool:
        return self.request().samples

    def choose(self, candidates: list[Candidate]) -> list[int]:
        return [0]

    def decode(self, engine: Engine, prompts: list[str], progress: bool = True) -> Decoding:
        return Decoding(self.decode_outputs(engine, prompts, progress))

    def decode_outputs(self, engine: Engine, prompts: list[str], progress: bool = True) -> list[Decoded]:
        """One `generate` call over `prompts` with `request()`, and the chosen candidates of each."""
        outputs = engine.generate(prompts, self.request(), seed=self.seed, progress=progress)
        return [Decoded(candidates, self.choose(candidates)) for candidates in outputs]

    def metrics(self, decoding: Decoding, correct: Correctness) -> dict:
        """What this decoder measures beyond `evaluation.score`'s metrics of every decoder: nothing here."""
        return {}


@registry.decoders.register("greedy", GreedyConfig)
class GreedyDecoder(Decoder):
    def request(self) -> Request:
        return Request(max_new_tokens=self.config.max_new_tokens, stop=self.stop)


@registry.decoders.register("sample", SampleConfig)
class SampleDecoder(Decoder):
    config: SampleConfig

    def request(self) -> Request:
        return Request(max_new_tokens=self.config.max_new_tokens, samples_per_prompt=self.config.samples_per_prompt,
                       temperature=self.config.temperature, top_p=self.config.top_p, stop=self.stop)

    def choose(self, candidates: list[Candidate]) -> list[int]:
        return list(range(len(candidates)))


@registry.decoders.register("beam", BeamConfig)
class BeamDecoder(Decoder):
    config: BeamConfig

    def request(self) -> Request:
        return Request(max_new_tokens=self.config.max_new_tokens, num_beams=self.config.num_beams,
                       length_penalty=self.config.length_penalty, stop=self.stop)


def sample_request(samples_per_prompt: int, temperature: float, top_p: float, max_new_tokens: int,
                   stop: Sequence[str] = ()) -> Request:
    """What the sampling stages (sampled set, rationales, exploration) ask the engine for; `stop`: the data's
    stop strings (TaskData.stop)."""
    return Request(max_new_tokens=max_new_tokens, samples_per_prompt=samples_per_prompt, temperature=temperature,
                   top_p=top_p, stop=tuple(stop))


@torch.no_grad()
def teacher_forced_logprobs(model, tokenizer, prompts: list[str], completions: list[str], sequences_per_batch: int = 32,
                            append_eos: bool = True) -> list[float]:
    """log pi(completion | prompt) at temperature 1, summed over the completion's tokens (and EOS).

    One forward pass per batch; used where no generation produced the sequence (e.g. the gold
    demonstration). Prompt and completion are tokenised separately, as TRL's SFTTrainer does.
    """
    model.eval()
    results: list[float] = []
    for start in range(0, len(prompts), sequences_per_batch):
        rows = []
        end = start + sequences_per_batch
        for prompt, completion in zip(prompts[start:end], completions[start:end]):
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
            if append_eos and tokenizer.eos_token_id is not None:
                completion_ids = completion_ids + [tokenizer.eos_token_id]
            rows.append((prompt_ids, completion_ids))
        width = max(len(p) + len(c) for p, c in rows)
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        targets = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (prompt_ids, completion_ids) in enumerate(rows):  # right padding: positions start at 0
            sequence = prompt_ids + completion_ids
            input_ids[i, : len(sequence)] = torch.tensor(sequence)
            attention[i, : len(sequence)] = 1
            targets[i, len(prompt_ids) : len(sequence)] = torch.tensor(completion_ids)
        logits = model(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device)).logits
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        shifted = targets[:, 1:].to(model.device)
        token_logprobs = logprobs.gather(-1, shifted.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (shifted != -100)
        results.extend(token_logprobs.sum(dim=1).tolist())
    return results
