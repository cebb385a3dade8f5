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
from framework.algorithms.preference import PreferenceTrainingConfig, train_dpo
from framework.algorithms.rationales import (OnEmptyConfig, RationaleSamplingConfig, nothing_to_train,
                                             outcome_pair_set, rejected_for_training, sample_rationales,
                                             summary_counts)
from framework.algorithms.rft_stage import RFTStageConfig, rft_model
from framework.config import AlgorithmConfig, StartingPointConfig, require
from framework.models import ModelHandle

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- algorithm=outcome_dpo
@dataclass
class OutcomeDPOConfig(PreferenceTrainingConfig, RationaleSamplingConfig, OnEmptyConfig, StartingPointConfig,
                       AlgorithmConfig):
    name: str = "outcome_dpo"
    use_rft: bool = True  # DPO from (and against) the RFT model, as in the paper; false: the starting model
    max_pairs_per_question: int | None = None  # null: min(kept correct, distinct incorrect), the scripts'
    rft: RFTStageConfig = field(default_factory=RFTStageConfig)

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.max_pairs_per_question is None or self.max_pairs_per_question >= 1,
                f"{prefix}.max_pairs_per_question", "must be >= 1 or null", self.max_pairs_per_question)


@registry.algorithms.register("outcome_dpo", OutcomeDPOConfig)
def run(ctx: AlgorithmContext) -> ModelHandle:
    config: OutcomeDPOConfig = ctx.config
    questions, rationales_key = sample_rationales(ctx, config, "outcome_dpo")
    # the RFT model (policy, reference) or, without RFT, the starting model
    start = (rft_model(ctx, questions, rationales_key, config, config.rft, "outcome_dpo", config.on_empty)
             if config.use_rft else ctx.base)
    pairs, pairs_key, summary = outcome_pair_set(ctx, config, questions, rationales_key, config.max_pairs_per_question,
                                                 config.pair_questions)
    drops: Counter = Counter()
    training = rejected_for_training(pairs, ctx.data.checker, config.strip_rejected_answer, drops)
    trimmed = {"training_pairs": len(training), **{f"dropped_{rule}": count for rule, count in drops.items()}}
    ctx.log({f"outcome_dpo/{name}": value for name, value in trimmed.items()})
    counts = {**summary_counts(summary), **trimmed}
    if not training:
        return nothing_to_train(ctx, config.on_empty, "outcome_dpo", "algorithm=outcome_dpo: no training question has "
                                "both a correct and an incorrect rationale, so there is no pair; raise "
                                "rationales_per_question, temperature or train_prompts, or start from a stronger "
                                "model (starting_point=sft)", start)
    log.info("outcome-level DPO on %d pairs of %d questions", len(training), counts["questions_with_pairs"])
    pairs_identity = {"outcome_pairs": pairs_key, "strip_rejected_answer": config.strip_rejected_answer}
    spec = ctx.stage_spec(pairs=pairs_identity, start=start, training=config.preference_keys())
    return train_dpo(ctx, "outcome_dpo", spec, start, training, config, rejected_eos=config.rejected_eos,
                     code=__name__, metadata={"pairs": counts})
