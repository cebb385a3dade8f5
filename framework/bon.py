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
from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

from framework import registry
from framework.config import DecoderConfig, require
from framework.decoding import Candidate, Correctness, Decoded, Decoding, GreedyConfig, GreedyDecoder, SampleDecoder
from framework.evaluation import chosen_accuracy, pass_k_values
# the self-reward and the pick (one definition, shared with the sharpening methods' training data)
from framework.self_reward import SCORE_SELECTORS, SELECTOR_NAMES, select, select_majority


@dataclass
class BoNConfig(DecoderConfig):
    LABEL_KEYS: ClassVar[tuple[str, ...]] = ("selector", "samples_per_prompt", "temperature")
    # the extra greedy pass and the Monte-Carlo draws of the reference curve do not change the pick
    LABEL_OMITS: ClassVar[tuple[str, ...]] = (*DecoderConfig.LABEL_OMITS, "greedy_reference", "curve_draws")
    name: str = "bon"
    samples_per_prompt: int = 50  # N (the sharpening paper's); the accuracy curve covers N' = 1, 2, 4, ... and N
    temperature: float = 1.0  # sampling temperature; log-probs stay at temperature 1 whatever this is
    top_p: float = 1.0
    selector: str = "logprob"  # logprob | length_norm | majority
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


# ---------------------------------------------------------------------------- metrics
def lift_over_greedy(accuracy: float, greedy_accuracy: float) -> float | None:
    """The paper's % lift: 100 * (acc - acc_greedy) / acc_greedy; None when greedy solves nothing."""
    if greedy_accuracy == 0:
        return None
    return 100.0 * (accuracy - greedy_accuracy) / greedy_accuracy


def lift_metrics(accuracy: float, accuracy_by_n: dict[str, float], greedy_accuracy: float) -> dict:
    """Greedy accuracy on the same prompts and the % lift over it, overall and along the curve."""
    return {"greedy_accuracy": greedy_accuracy, "lift_over_greedy": lift_over_greedy(accuracy, greedy_accuracy),
            "lift_over_greedy_by_n": {size: lift_over_greedy(value, greedy_accuracy)
                                      for size, value in accuracy_by_n.items()}}


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

    def __init__(self, config: BoNConfig, seed: int = 0, answer_extractor: Callable[[str], str | None] | None = None,
                 stop: Sequence[str] = ()):
        super().__init__(config, seed=seed, answer_extractor=answer_extractor, stop=stop)
        if config.selector == "majority" and answer_extractor is None:  # fail before any generation
            raise ValueError("decoder.selector=majority needs an answer_extractor (the dataset checker's extract)")

    def answers(self, candidates: list[Candidate]) -> list[str | None] | None:
        if self.config.selector != "majority":
            return None
        return [self.answer_extractor(candidate.text) for candidate in candidates]

    def choose(self, candidates: list[Candidate]) -> list[int]:
        return [select(self.config.selector, candidates, self.answers(candidates))]

    def greedy_reference_decoder(self) -> GreedyDecoder:
        return GreedyDecoder(GreedyConfig(max_new_tokens=self.config.max_new_tokens), seed=self.seed, stop=self.stop)

    def decode(self, engine, prompts: list[str], progress: bool = True) -> Decoding:
        """The N samples (those `sample` draws with this seed), then, on the same engine, the greedy
        reference (with `greedy_reference`)."""
        outputs = self.decode_outputs(engine, prompts, progress)
        reference = (self.greedy_reference_decoder().decode_outputs(engine, prompts, progress)
                     if self.config.greedy_reference else None)
        return Decoding(outputs, reference)

    def metrics(self, decoding: Decoding, correct: Correctness) -> dict:
        """The accuracy curve; with the greedy reference, greedy accuracy and the % lift over it."""
        metrics = self.accuracy_curve(decoding.outputs, correct.outputs)
        if decoding.reference is not None:
            metrics.update(lift_metrics(chosen_accuracy(decoding.outputs, correct.outputs), metrics["bon_accuracy_by_n"],
                                        chosen_accuracy(decoding.reference, correct.reference)))
        return metrics

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
