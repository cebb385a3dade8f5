"""`algorithm=outcome_dpo`: outcome-level DPO, the baseline of Self-Explore (Hwang et al. 2024, §4), with
its data as the authors' scripts build it (self-explore-repo.md, "Outcome-level pairs").

    y_1..y_K ~ pi_sft(. | x) per training question       (the shared rationale set, as algorithm=rft)
    pi_0 = RFT if use_rft else pi_sft                     (the shared `rft` stage)
    kept set: C(x) = deduplicated correct rationales (<= M), W(x) = distinct incorrect ones
    for each y+ in C(x): y- = the unused y in W(x) farthest from y+ (edit distance)   (stage `outcome_pairs`)
    DPO (sigmoid) from pi_0 against the frozen pi_0 on (x, y+ + EOS, y- without its answer line, no EOS)

Questions without a kept correct or without an incorrect rationale give no pair. Self-Explore
(algorithm=self_explore) explores the rejected sides of these pairs to build step-level pairs instead.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from framework import registry
from framework.algorithms import AlgorithmContext
from framework.algorithms.preference import PreferenceTrainingConfig, train_dpo_on_pairs
from framework.algorithms.rationales import (OnEmptyConfig, RationaleSamplingConfig, SampledQuestion, kept_set,
                                             nothing_to_train, outcome_pairs, rejected_for_training,
                                             resolved_pairing, sample_rationales, stored_records)
from framework.algorithms.rft import RFTStageConfig, rft_model
from framework.config import AlgorithmConfig, StartingPointConfig, require
from framework.models import ModelHandle

log = logging.getLogger(__name__)
PAIRS_FILE = "pairs.jsonl"


def outcome_pair_set(ctx: AlgorithmContext, config: RationaleSamplingConfig, questions: list[SampledQuestion],
                     rationales_key: str, max_pairs_per_question: int | None) -> tuple[list[dict], str, dict]:
    """Every question's outcome pairs (stage `outcome_pairs`: raw rationale texts, before the rejected
    side is trimmed for training), its key and its summary: pairs and what each rule dropped."""
    keys = config.kept_keys(ctx.data.checker)
    pairing = resolved_pairing(config.outcome_pairing, ctx.data.checker)

    def compute():
        kept, summary = kept_set(questions, keys)
        drops: Counter = Counter()
        pairs = [pair for k in kept for pair in outcome_pairs(k, pairing, max_pairs_per_question, drops)]
        summary = {**summary, "pairs": len(pairs), "questions_with_pairs": len({p["question_index"] for p in pairs}),
                   "distinct_chosen_per_question": _distinct_chosen_per_question(pairs),
                   **{f"dropped_{rule}": count for rule, count in sorted(drops.items())}}
        return pairs, summary

    spec = {"rationales": rationales_key, "kept": keys, "pairing": pairing, "max_pairs_per_question":
            max_pairs_per_question}
    pairs, key, summary = stored_records(ctx, "outcome_pairs", spec, PAIRS_FILE, compute, code=__name__)
    ctx.log({f"outcome_pairs/{name}": value for name, value in _summary_counts(summary).items()})
    return pairs, key, summary


def _distinct_chosen_per_question(pairs: list[dict]) -> float:
    chosen: dict[int, set] = {}
    for pair in pairs:
        chosen.setdefault(pair["question_index"], set()).add(pair["chosen"])
    return sum(map(len, chosen.values())) / max(len(chosen), 1)


def _summary_counts(summary: dict) -> dict:
    """The numbers of a stage summary (not its spec or compute record), for the tracker."""
    return {key: value for key, value in summary.items() if isinstance(value, (int, float)) and key != "finished_at"}


# ---------------------------------------------------------------------------- algorithm=outcome_dpo
@dataclass
class OutcomeDPOConfig(PreferenceTrainingConfig, RationaleSamplingConfig, OnEmptyConfig, StartingPointConfig,
                       AlgorithmConfig):
    name: str = "outcome_dpo"
    use_rft: bool = True  # DPO from (and against) the RFT model, as in the paper; false: the starting model
    max_pairs_per_question: int | None = None  # null: min(kept correct, distinct incorrect), the scripts'
    rft: RFTStageConfig = field(default_factory=RFTStageConfig)

    def checks(self, prefix: str) -> None:
        PreferenceTrainingConfig.checks(self, prefix)
        RationaleSamplingConfig.checks(self, prefix)
        OnEmptyConfig.checks(self, prefix)
        StartingPointConfig.checks(self, prefix)
        require(self.max_pairs_per_question is None or self.max_pairs_per_question >= 1,
                f"{prefix}.max_pairs_per_question", "must be >= 1 or null", self.max_pairs_per_question)


@registry.algorithms.register("outcome_dpo", OutcomeDPOConfig)
def run(ctx: AlgorithmContext) -> ModelHandle:
    config: OutcomeDPOConfig = ctx.config
    questions, rationales_key = sample_rationales(ctx, config, "outcome_dpo")
    # the RFT model (policy, reference) or, without RFT, the starting model
    start = (rft_model(ctx, questions, rationales_key, config, config.rft, "outcome_dpo", config.on_empty)
             if config.use_rft else ctx.base)
    pairs, pairs_key, summary = outcome_pair_set(ctx, config, questions, rationales_key, config.max_pairs_per_question)
    drops: Counter = Counter()
    training = rejected_for_training(pairs, ctx.data.checker, config.strip_rejected_answer, drops)
    trimmed = {"training_pairs": len(training), **{f"dropped_{rule}": count for rule, count in drops.items()}}
    ctx.log({f"outcome_dpo/{name}": value for name, value in trimmed.items()})
    counts = {**_summary_counts(summary), **trimmed}
    if not training:
        return nothing_to_train(ctx, config.on_empty, "outcome_dpo", "algorithm=outcome_dpo: no training question has "
                                "both a correct and an incorrect rationale, so there is no pair; raise "
                                "rationales_per_question, temperature or train_prompts, or start from a stronger "
                                "model (starting_point=sft)", start)
    log.info("outcome-level DPO on %d pairs of %d questions", len(training), counts["questions_with_pairs"])
    pairs_identity = {"outcome_pairs": pairs_key, "strip_rejected_answer": config.strip_rejected_answer}
    return train_dpo_on_pairs(ctx, "outcome_dpo", start, training, config, pairs_identity,
                              metadata={"pairs": counts})
