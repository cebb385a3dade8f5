"""Batched decoders on transformers `generate`: greedy, temperature sampling and beam search.

Every decoder returns, per prompt, its candidates (text, generated tokens, sequence log-probability
under the model at temperature 1) and which candidates are its answer: the one greedy/beam output,
or every sample for `sample` (whose accuracy is then the expected accuracy of one sample).

Log-probabilities come from the logits `generate` already computes, not from a second forward pass,
and are unwarped (temperature 1, no top-p): the self-reward log pi(y|x) the sharpening methods use.
Greedy/sampling: a logits processor placed before the temperature/top-p warpers reads each step's
raw logits and keeps only the chosen token's log-prob, so memory stays O(rows x vocabulary) instead
of `output_logits`' O(rows x steps x vocabulary). Beam search: transformers' beam score is
sum log-prob / length**length_penalty, so the sum is recovered from `sequences_scores`.

`backend=vllm` runs the same decoders on a vLLM engine instead (framework/vllm_backend.py; optional,
GPU only); the default `transformers` path below is what every result so far was measured with.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from framework import registry
from framework.config import DecoderConfig, require

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    text: str
    num_tokens: int  # generated tokens, counting the end-of-sequence token when one was produced
    logprob: float  # sum of log pi(token | prefix) over those tokens, temperature 1
    finished: bool  # ended with end-of-sequence (False: cut at max_new_tokens)
    token_ids: list[int]  # the generated ids (those num_tokens), exactly as sampled


@dataclass
class Decoded:
    candidates: list[Candidate]
    chosen: list[int]  # indices of the candidates that count as the decoder's answer


# ---------------------------------------------------------------------------- configs
BACKENDS = ("transformers", "vllm")


@dataclass
class BackendConfig(DecoderConfig):
    """Keys shared by the decoders built on a generation backend (greedy, sample, beam, bon)."""

    backend: str = "transformers"  # transformers (`generate`, CPU or GPU) | vllm (optional extra, CUDA only)
    gpu_memory_utilization: float = 0.5  # vllm only: fraction of the whole GPU its engine may take

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.backend in BACKENDS, f"{prefix}.backend", f"must be one of {', '.join(BACKENDS)}", self.backend)
        require(0 < self.gpu_memory_utilization <= 1, f"{prefix}.gpu_memory_utilization", "must be in (0, 1]",
                self.gpu_memory_utilization)
        if self.backend == "vllm":
            from framework import vllm_backend  # never imports vllm itself

            vllm_backend.require_available(prefix)


@dataclass
class GreedyConfig(BackendConfig):
    name: str = "greedy"


@dataclass
class SampleConfig(BackendConfig):
    name: str = "sample"
    temperature: float = 1.0
    top_p: float = 1.0
    samples_per_prompt: int = 4  # independent samples per prompt; pass@k is reported for k up to this
    prompts_per_batch: int = 16  # x samples_per_prompt sequences per `generate` call

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.temperature > 0 and math.isfinite(self.temperature), f"{prefix}.temperature",
                "must be > 0 (use decoder=greedy for temperature 0)", self.temperature)
        require(0 < self.top_p <= 1, f"{prefix}.top_p", "must be in (0, 1]", self.top_p)
        require(self.samples_per_prompt >= 1, f"{prefix}.samples_per_prompt", "must be >= 1",
                self.samples_per_prompt)


@dataclass
class BeamConfig(BackendConfig):
    name: str = "beam"
    num_beams: int = 5  # beam width; 1 is greedy. 5: the SOC paper's main width
    length_penalty: float = 1.0  # beam score = sum log-prob / length**length_penalty (transformers' convention)
    prompts_per_batch: int = 16  # x num_beams hypotheses per `generate` call

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.num_beams >= 1, f"{prefix}.num_beams", "must be >= 1", self.num_beams)
        require(math.isfinite(self.length_penalty), f"{prefix}.length_penalty", "must be a finite number",
                self.length_penalty)
        if self.backend == "vllm" and self.num_beams > 1:
            # vLLM divides by (prompt + generated tokens)**length_penalty, transformers by the generated
            # tokens only: the two rank beams alike only when the penalty is off.
            require(self.length_penalty == 0, f"{prefix}.length_penalty",
                    f"must be 0 with {prefix}.backend=vllm (vLLM's beam score counts the prompt's tokens in the "
                    f"length; use length_penalty=0 for the plain sum log-prob, or backend=transformers)",
                    self.length_penalty)


# ---------------------------------------------------------------------------- generation core
class TokenLogprobRecorder(LogitsProcessor):
    """Records log pi(token) of every generated token from the raw logits, one step behind: the token
    chosen at step t is only known (as input_ids[:, -1]) when step t+1 calls. Must run before any
    warper, so the decoders pass temperature/top-p as processors after it."""

    def __init__(self):
        self.previous: torch.Tensor | None = None  # log-softmax of the last step's raw logits
        self.columns: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:
            self.columns.append(self.previous.gather(1, input_ids[:, -1:]))
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def token_logprobs(self, generated: torch.Tensor) -> torch.Tensor:
        """[rows, steps] log-probs of `generated` (the new tokens of the finished `generate` call)."""
        if self.previous is not None and len(self.columns) < generated.shape[1]:
            step = len(self.columns)
            self.columns.append(self.previous.gather(1, generated[:, step : step + 1]))
        return torch.cat(self.columns, dim=1) if self.columns else generated.new_zeros(generated.shape, dtype=torch.float)


def valid_token_mask(generated: torch.Tensor, eos_token_ids: list[int]) -> torch.Tensor:
    """True up to and including the first end-of-sequence token of each row."""
    is_eos = torch.isin(generated, torch.tensor(eos_token_ids, device=generated.device))
    eos_before = torch.cumsum(is_eos.int(), dim=1) - is_eos.int()
    return eos_before == 0


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


class Decoder:
    """Shared batching; subclasses give the `generate` arguments and how many outputs per prompt."""

    config: DecoderConfig

    def __init__(self, config: DecoderConfig, seed: int = 0,
                 answer_extractor: Callable[[str], str | None] | None = None):
        self.config, self.seed = config, seed
        # text -> normalised final answer (the dataset checker's `extract`), for decoders that choose by
        # answer, e.g. majority vote; None where the caller has no checker
        self.answer_extractor = answer_extractor

    def generation_kwargs(self) -> dict:
        raise NotImplementedError

    def warpers(self) -> list[LogitsProcessor]:
        """Processors that shape sampling; they run after the log-prob recorder."""
        return []

    def outputs_per_prompt(self) -> int:
        return 1

    def choose(self, candidates: list[Candidate]) -> list[int]:
        return [0]

    @property
    def uses_beam_scores(self) -> bool:
        return self.generation_kwargs().get("num_beams", 1) > 1

    def vllm_sampling(self) -> dict:
        """backend=vllm: the SamplingParams arguments that make vLLM sample as `generation_kwargs` +
        `warpers` do (n, max_tokens, seed, log-probs and stop tokens are added by the backend)."""
        raise NotImplementedError(f"decoder {self.config.name!r} has no vLLM equivalent")

    @torch.no_grad()
    def decode(self, model, tokenizer, prompts: list[str], progress: bool = True) -> list[Decoded]:
        if getattr(self.config, "backend", "transformers") == "vllm":
            from framework import vllm_backend  # imports vllm: only ever reached with backend=vllm

            vllm_backend.check_decoder(self, _eos_ids(model, tokenizer), tokenizer)  # before the engine starts
            with vllm_backend.open_engine(model, self.config, self.seed) as engine:
                return self.decode_on_engine(engine, model, tokenizer, prompts, progress)

        from transformers import GenerationConfig

        eos_ids = _eos_ids(model, tokenizer)
        # A fresh GenerationConfig: the model's own defaults (top_k=50, repetition penalties, ...) must
        # not leak into a decoder whose config does not mention them.
        generation_config = GenerationConfig(
            max_new_tokens=self.config.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos_ids, return_dict_in_generate=True, output_scores=self.uses_beam_scores,
            **self.generation_kwargs(),
        )
        model.eval()
        torch.manual_seed(self.seed)
        # Longest prompts first and batches of similar length waste less compute on padding.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: list[Decoded | None] = [None] * len(prompts)
        step = self.config.prompts_per_batch
        batches = [order[i : i + step] for i in range(0, len(order), step)]
        for batch in tqdm(batches, desc=f"decode ({self.config.name})", disable=not progress, leave=False):
            encoded = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True,
                                return_token_type_ids=False).to(model.device)
            recorder = None if self.uses_beam_scores else TokenLogprobRecorder()
            processors = LogitsProcessorList([] if recorder is None else [recorder, *self.warpers()])
            output = model.generate(**encoded, generation_config=generation_config, logits_processor=processors)
            generated = output.sequences[:, encoded["input_ids"].shape[1]:]
            valid = valid_token_mask(generated, eos_ids)
            lengths_tensor = valid.sum(dim=1)
            if recorder is None:  # beam: undo the length normalisation of the final beam score
                sequence_logprobs = (output.sequences_scores.float()
                                     * lengths_tensor.clamp(min=1).float() ** self.config.length_penalty).tolist()
            else:
                sequence_logprobs = (recorder.token_logprobs(generated) * valid).sum(dim=1).tolist()
            lengths = lengths_tensor.tolist()
            finished = (valid & torch.isin(generated, torch.tensor(eos_ids, device=generated.device))).any(dim=1)
            texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
            generated_ids = generated.tolist()
            per_prompt = self.outputs_per_prompt()
            for position, prompt_index in enumerate(batch):
                rows = range(position * per_prompt, (position + 1) * per_prompt)
                candidates = [Candidate(texts[r], int(lengths[r]), float(sequence_logprobs[r]), bool(finished[r]),
                                        generated_ids[r][: int(lengths[r])]) for r in rows]
                results[prompt_index] = Decoded(candidates, self.choose(candidates))
        return results  # type: ignore[return-value]

    def decode_on_engine(self, engine, model, tokenizer, prompts: list[str], progress: bool = True) -> list[Decoded]:
        """backend=vllm: decode on an open engine, so that one engine can serve several decoders (bon)."""
        from framework import vllm_backend

        return vllm_backend.decode(self, engine, _eos_ids(model, tokenizer), tokenizer, prompts, progress)


@registry.decoders.register("greedy", GreedyConfig)
class GreedyDecoder(Decoder):
    def generation_kwargs(self) -> dict:
        return {"do_sample": False, "num_beams": 1}

    def vllm_sampling(self) -> dict:
        return {"temperature": 0.0}  # vLLM's greedy


@registry.decoders.register("sample", SampleConfig)
class SampleDecoder(Decoder):
    config: SampleConfig

    def generation_kwargs(self) -> dict:
        # temperature 1 / top-p 1 / top-k off here, so `generate` adds no warper of its own; ours follow
        # the recorder in `warpers()`, which therefore sees the raw logits.
        return {"do_sample": True, "num_beams": 1, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                "num_return_sequences": self.config.samples_per_prompt}

    def warpers(self) -> list[LogitsProcessor]:
        warpers: list[LogitsProcessor] = []
        if self.config.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(self.config.temperature))
        if self.config.top_p < 1.0:
            warpers.append(TopPLogitsWarper(self.config.top_p))
        return warpers

    def vllm_sampling(self) -> dict:
        # top_k 0 / min_p 0 / no penalties are vLLM's defaults, as `generation_kwargs` turns them off here
        return {"temperature": self.config.temperature, "top_p": self.config.top_p}

    def outputs_per_prompt(self) -> int:
        return self.config.samples_per_prompt

    def choose(self, candidates: list[Candidate]) -> list[int]:
        return list(range(len(candidates)))


@registry.decoders.register("beam", BeamConfig)
class BeamDecoder(Decoder):
    config: BeamConfig

    def generation_kwargs(self) -> dict:
        return {"do_sample": False, "num_beams": self.config.num_beams, "length_penalty": self.config.length_penalty,
                "num_return_sequences": 1}

    def vllm_sampling(self) -> dict:
        return {"temperature": 0.0}  # num_beams=1 is greedy; wider beams go through vLLM's beam search


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
