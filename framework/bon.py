"""Best-of-N sharpening at inference (algorithms.md 3a): N samples, one answer picked by self-reward.

The N samples and their log-probs come from one `generate` pass (the `sample` decoder's); a selector
then picks one: the highest log pi(y|x) (`logprob`), the highest log pi(y|x) / |y| (`length_norm`), or
the most frequent extracted final answer (`majority`). No gold label is used to choose.

Evaluation adds the curve the paper plots, accuracy against N' <= N, simulated by subsampling the N
samples instead of decoding again for every N': `bon_accuracy_by_n[N']` is the expected accuracy of the
selector applied to a uniformly random N'-subset. For the two score selectors it is exact (a closed
form over the rank order); majority is enumerated when the subsets are few and Monte-Carlo otherwise.
`pass@N'` for the same N' comes from `evaluation.score`. With `greedy_reference` the decoder also
decodes greedily once, so the run reports `greedy_accuracy` and the paper's % lift over greedy.
"""
from __future__ import annotations

import functools
import itertools
import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from framework import registry
from framework.config import require
from framework.config import DecoderConfig
from framework.decoding import Candidate, Decoded, GreedyConfig, GreedyDecoder, SampleDecoder
from framework.evaluation import pass_k_values, score

SELECTOR_NAMES = ("logprob", "length_norm", "majority")


@dataclass
class BoNConfig(DecoderConfig):
    name: str = "bon"
    samples_per_prompt: int = 50  # N (the sharpening paper's); the accuracy curve covers N' = 1, 2, 4, ... and N
    temperature: float = 1.0  # sampling temperature; log-probs stay at temperature 1 whatever this is
    top_p: float = 1.0
    selector: str = "logprob"  # logprob | length_norm | majority
    prompts_per_batch: int = 4  # x samples_per_prompt sequences per `generate` call
    curve_draws: int = 200  # random N'-subsets per problem and N' where the curve is Monte-Carlo (majority)
    greedy_reference: bool = True  # also decode greedily (one extra pass) to report the lift over greedy

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.samples_per_prompt >= 1, f"{prefix}.samples_per_prompt", "must be >= 1",
                self.samples_per_prompt)
        require(self.selector in SELECTOR_NAMES, f"{prefix}.selector", f"must be one of {', '.join(SELECTOR_NAMES)}",
                self.selector)
        require(math.isfinite(self.temperature), f"{prefix}.temperature", "must be a finite number", self.temperature)
        require(self.temperature > 0, f"{prefix}.temperature", "must be > 0 (use decoder=greedy for temperature 0)",
                self.temperature)
        require(0 < self.top_p <= 1, f"{prefix}.top_p", "must be in (0, 1]", self.top_p)
        require(self.curve_draws >= 1, f"{prefix}.curve_draws", "must be >= 1", self.curve_draws)


# ---------------------------------------------------------------------------- selectors
# Tie-breaking is deterministic everywhere: among equal scores the first index wins, so a selector
# applied to a subset kept in the original order picks what the exact curve below assumes.
def logprob_scores(candidates: list[Candidate]) -> list[float]:
    return [candidate.logprob for candidate in candidates]


def length_norm_scores(candidates: list[Candidate]) -> list[float]:
    # max(.., 1): an empty generation (0 tokens) must not divide by zero
    return [candidate.logprob / max(candidate.num_tokens, 1) for candidate in candidates]


def first_argmax(scores: list[float]) -> int:
    """Index of the highest score; the first one among ties."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def select_logprob(candidates: list[Candidate]) -> int:
    return first_argmax(logprob_scores(candidates))


def select_length_norm(candidates: list[Candidate]) -> int:
    return first_argmax(length_norm_scores(candidates))


def select_majority(candidates: list[Candidate], answers: list[str | None]) -> int:
    """A candidate carrying the most frequent non-None answer.

    Ties between answers: the higher summed log-prob of the answer's candidates, then the answer that
    occurs first. Within the winning answer the highest-log-prob candidate is returned (first among
    ties): every one of them is equally right or wrong, this one is the model's own favourite. When no
    candidate has an answer, votes say nothing and the log-prob selector decides.
    """
    counts = Counter(answer for answer in answers if answer is not None)
    if not counts:
        return select_logprob(candidates)
    summed_logprob = {answer: 0.0 for answer in counts}
    first_seen: dict[str, int] = {}
    for index, (candidate, answer) in enumerate(zip(candidates, answers)):
        if answer is not None:
            summed_logprob[answer] += candidate.logprob
            first_seen.setdefault(answer, index)
    winner = max(counts, key=lambda answer: (counts[answer], summed_logprob[answer], -first_seen[answer]))
    members = [i for i, answer in enumerate(answers) if answer == winner]
    return max(members, key=lambda i: (candidates[i].logprob, -i))


SCORE_SELECTORS: dict[str, Callable[[list[Candidate]], list[float]]] = {
    "logprob": logprob_scores, "length_norm": length_norm_scores,
}


def select(selector: str, candidates: list[Candidate], answers: list[str | None] | None = None) -> int:
    """Index picked by the named selector; `answers` (extracted final answers) only matter for majority."""
    if selector == "majority":
        if answers is None:
            raise ValueError("the majority selector needs the candidates' extracted answers")
        return select_majority(candidates, answers)
    return first_argmax(SCORE_SELECTORS[selector](candidates))


# ---------------------------------------------------------------------------- metrics
def lift_over_greedy(accuracy: float, greedy_accuracy: float) -> float | None:
    """The paper's % lift: 100 * (acc - acc_greedy) / acc_greedy; None when greedy solves nothing."""
    if greedy_accuracy == 0:
        return None
    return 100.0 * (accuracy - greedy_accuracy) / greedy_accuracy


def curve_sizes(num_samples: int) -> list[int]:
    """N' = 1, 2, 4, ... up to N, and N itself: the pass@k grid of `evaluation.score`."""
    return pass_k_values(num_samples)


def expected_accuracy_of_argmax(scores: list[float], correct: list[bool], subset_size: int) -> float:
    """Exact expected correctness of `first_argmax` over a uniformly random subset of `subset_size`.

    Order the candidates as the selector ranks them (score descending, index ascending). The one at
    rank r is picked exactly when it is in the subset and the other subset_size - 1 members all rank
    below it: C(n - 1 - r, subset_size - 1) of the C(n, subset_size) subsets.
    """
    count = len(scores)
    order = sorted(range(count), key=lambda i: (-scores[i], i))
    favourable = sum(math.comb(count - 1 - rank, subset_size - 1) for rank, i in enumerate(order) if correct[i])
    return favourable / math.comb(count, subset_size)


def _majority_within(candidates: list[Candidate], answers: list[str | None], subset: list[int]) -> int:
    """Majority over the candidates at `subset`; returns a position within `subset`."""
    return select_majority([candidates[i] for i in subset], [answers[i] for i in subset])


def subsampled_accuracy(pick: Callable[[list[int]], int], correct: list[bool], subset_size: int, draws: int,
                        rng: random.Random) -> float:
    """Expected correctness of `pick` (subset of indices, in order -> chosen position) over random subsets
    of `subset_size`: every subset when there are at most `draws` of them, else `draws` random ones."""
    count = len(correct)
    if math.comb(count, subset_size) <= draws:
        subsets = list(itertools.combinations(range(count), subset_size))
    else:  # sorted: a subset keeps the original order, so first-index tie-breaking means the same thing
        subsets = [sorted(rng.sample(range(count), subset_size)) for _ in range(draws)]
    return sum(correct[subset[pick(list(subset))]] for subset in subsets) / len(subsets)


# ---------------------------------------------------------------------------- decoder
@registry.decoders.register("bon", BoNConfig)
class BoNDecoder(SampleDecoder):
    """Samples exactly as `sample` does (same seed, same samples); `choose` keeps one of them."""

    config: BoNConfig  # type: ignore[assignment]

    def __init__(self, config: BoNConfig, seed: int = 0, answer_extractor: Callable[[str], str | None] | None = None):
        super().__init__(config, seed=seed, answer_extractor=answer_extractor)
        if config.selector == "majority" and answer_extractor is None:  # fail before any generation
            raise ValueError("decoder.selector=majority needs an answer_extractor (the dataset checker's extract)")
        self.greedy_decoded: list[Decoded] | None = None  # set by `decode` when greedy_reference is on

    def answers(self, candidates: list[Candidate]) -> list[str | None] | None:
        if self.config.selector != "majority":
            return None
        return [self.answer_extractor(candidate.text) for candidate in candidates]

    def choose(self, candidates: list[Candidate]) -> list[int]:
        return [select(self.config.selector, candidates, self.answers(candidates))]

    def greedy_reference_decoder(self) -> GreedyDecoder:
        # as many sequences per `generate` call as the sampling pass used
        return GreedyDecoder(GreedyConfig(
            max_new_tokens=self.config.max_new_tokens,
            prompts_per_batch=self.config.prompts_per_batch * self.config.samples_per_prompt), seed=self.seed)

    def decode(self, engine, prompts: list[str], progress: bool = True) -> list[Decoded]:
        """The N samples (those `sample` draws with this seed), then, on the same engine, the greedy reference."""
        self.greedy_decoded = None
        decoded = super().decode(engine, prompts, progress)
        if self.config.greedy_reference:
            self.greedy_decoded = self.greedy_reference_decoder().decode(engine, prompts, progress)
        return decoded

    def accuracy_curve(self, decoded: list[Decoded], correct: list[list[bool]]) -> dict:
        """`bon_accuracy_by_n`: {str(N'): mean over problems of the selector's expected accuracy on
        random N'-subsets of the N samples}. Keys are strings so results.json round-trips unchanged."""
        rng = random.Random(self.seed)
        sizes = curve_sizes(min(len(result.candidates) for result in decoded)) if decoded else []
        per_size: dict[int, list[float]] = {size: [] for size in sizes}
        for result, problem_correct in zip(decoded, correct):
            candidates = result.candidates
            if self.config.selector in SCORE_SELECTORS:
                scores = SCORE_SELECTORS[self.config.selector](candidates)
                for size in sizes:
                    per_size[size].append(expected_accuracy_of_argmax(scores, problem_correct, size))
                continue
            pick = functools.partial(_majority_within, candidates, self.answers(candidates))
            for size in sizes:
                per_size[size].append(subsampled_accuracy(pick, problem_correct, size, self.config.curve_draws, rng))
        return {"bon_accuracy_by_n": {str(size): sum(values) / len(values) for size, values in per_size.items()}}

    def reference_metrics(self, problems, checker, metrics: dict) -> dict:
        """Greedy accuracy on the same prompts and the % lift over it, overall and along the curve."""
        if self.greedy_decoded is None:
            return {}
        greedy_accuracy = score(problems, self.greedy_decoded, checker)[0]["accuracy"]
        reference = {"greedy_accuracy": greedy_accuracy,
                     "lift_over_greedy": lift_over_greedy(metrics["accuracy"], greedy_accuracy)}
        if "bon_accuracy_by_n" in metrics:
            reference["lift_over_greedy_by_n"] = {size: lift_over_greedy(accuracy, greedy_accuracy)
                                                  for size, accuracy in metrics["bon_accuracy_by_n"].items()}
        return reference
