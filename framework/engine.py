"""What a generation engine serves and returns: the `Request` a stage asks for, the `Candidate`s it gets
back, and the `Engine` interface every engine (framework/generation.py's transformers engine,
framework/vllm_backend.py's vLLM engine) offers.

A leaf module (the standard library only), so that the engines and whatever reads their outputs share
these types without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence


@dataclass
class Candidate:
    text: str
    num_tokens: int  # generated tokens, counting the end-of-sequence token when one was produced
    logprob: float  # sum of log pi(token | prefix) over those tokens, temperature 1
    finished: bool  # ended with end-of-sequence (False: cut at max_new_tokens)
    token_ids: list[int]  # the generated ids (those num_tokens), exactly as sampled


@dataclass(frozen=True)
class Request:
    """How to continue each prompt: `samples_per_prompt` samples at `temperature` (0: greedy) and `top_p`,
    or beam search of width `num_beams` (score = sum log-prob / length^length_penalty; the top beam). A sequence
    also ends at any of `stop`, which its text then excludes."""

    max_new_tokens: int
    samples_per_prompt: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    stop: tuple[str, ...] = ()  # strings that end a sequence (excluded from its text), e.g. the next few-shot example

    @property
    def samples(self) -> bool:
        return self.temperature > 0

    @property
    def beam(self) -> bool:
        return self.num_beams > 1


class Engine(Protocol):
    def generate(self, prompts: Sequence[str], request: Request, *, seed: int, keys: Sequence[int] | None = None,
                 progress: bool = True) -> list[list[Candidate]]:
        """Candidates of every prompt (samples_per_prompt of them; one for greedy and beam). `keys`: each
        prompt's stable identity within its stage (default: its position), which its samples' noise uses. The
        engine sizes its own batches."""

    @property
    def transformers_model(self) -> Any | None:
        """The loaded transformers model the engine generates with, so that teacher-forced scoring reuses
        it; None where the engine holds none (vLLM keeps its own copy of the weights)."""

    def close(self) -> None: ...
