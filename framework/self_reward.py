"""The self-reward r_self of sampled responses, and the pick among them: one definition for best-of-N at
inference (bon.py), the sharpening methods' training data (algorithms/sharpening.py), the premises and
the fidelity checks. No gold label enters.

    logprob       r_self(y) = log pi(y | x)                  (summed over y's tokens, temperature 1)
    length_norm   r_self(y) = log pi(y | x) / |y|            (|y| counts the EOS; 0 tokens count as 1)
    majority      r_self(y) = votes of y's extracted final answer among the N responses (0 without one)

The pick is the highest r_self, the first among ties; majority picks within the winning answer by
log-prob (`select_majority`). XPO scores its pairs with the same logprob/length_norm formulas, on the
trainer's float32 tensors (algorithms/xpo.py `self_reward`).

A leaf module: it reads only the candidates' `logprob` and `num_tokens`.
"""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # a type only: the self-reward reads two attributes of a generated candidate
    from framework.engine import Candidate

SELECTOR_NAMES = ("logprob", "length_norm", "majority")


# Tie-breaking is deterministic everywhere: among equal scores the first index wins, so a selector
# applied to a subset kept in the original order picks what bon.py's exact accuracy curve assumes.
def logprob_scores(candidates: list[Candidate]) -> list[float]:
    return [candidate.logprob for candidate in candidates]


def length_norm_scores(candidates: list[Candidate]) -> list[float]:
    # max(.., 1): an empty generation (0 tokens) must not divide by zero
    return [candidate.logprob / max(candidate.num_tokens, 1) for candidate in candidates]


def majority_votes(answers: list[str | None]) -> list[float]:
    """How many candidates share each candidate's extracted answer (0.0 for a candidate without one)."""
    votes = Counter(answer for answer in answers if answer is not None)
    return [float(votes[answer]) if answer is not None else 0.0 for answer in answers]


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


def self_rewards(selector: str, candidates: list[Candidate], answers: list[str | None]) -> list[float]:
    """r_self of each candidate under `selector` (module docstring); `answers` only matter for majority."""
    if selector == "majority":
        return majority_votes(answers)
    if selector not in SCORE_SELECTORS:
        raise ValueError(f"unknown selector {selector!r}; expected one of {SELECTOR_NAMES}")
    return SCORE_SELECTORS[selector](candidates)


def select(selector: str, candidates: list[Candidate], answers: list[str | None] | None = None) -> int:
    """Index picked by the named selector; `answers` (extracted final answers) only matter for majority."""
    if selector == "majority":
        if answers is None:
            raise ValueError("the majority selector needs the candidates' extracted answers")
        return select_majority(candidates, answers)
    return first_argmax(SCORE_SELECTORS[selector](candidates))
