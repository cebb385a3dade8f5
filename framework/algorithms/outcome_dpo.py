"""`algorithm=outcome_dpo`: outcome-level DPO, the baseline of Self-Explore (Hwang et al. 2024, §4).

    y_1..y_K ~ pi_sft(. | x) per training question       (the shared rationale set, as algorithm=rft)
    pi_0 = RFT(pi_sft) if use_rft else pi_sft             (the shared `rft` stage)
    pairs: (x, y+ = a correct rationale, y- = an incorrect rationale of the same question)
    DPO (sigmoid) from pi_0 against the frozen pi_0

Every distinct incorrect rationale of a question is paired with one of its distinct correct ones,
cycling through them (so K samples give as many pairs as Self-Explore can build at most, one per
incorrect rationale); `max_pairs_per_question` caps that. Questions with no correct or no incorrect
rationale give no pair. Self-Explore (algorithm=self_explore) replaces these pairs with step-level ones.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields

from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from framework import registry
from framework.algorithms import AlgorithmContext
from framework.algorithms.rft import (OnEmptyConfig, RationaleSamplingConfig, RFTStageConfig, SampledQuestion,
                                      distinct_correct, normalized, nothing_to_train, rft_model, sample_rationales,
                                      stored_records)
from framework.algorithms.training import peft_config, reference_model, train_in_stage, trainer_arguments
from framework.config import AlgorithmConfig, StartingPointConfig, TrainingConfig, require
from framework.models import ModelHandle

log = logging.getLogger(__name__)
PAIRS_FILE = "pairs.jsonl"


@dataclass
class PreferenceTrainingConfig(TrainingConfig):
    """DPO's keys on top of the training keys (TrainingConfig's names)."""

    beta: float = 0.1  # DPO sigmoid temperature (Self-Explore paper: 0.1)

    def checks(self, prefix: str) -> None:
        TrainingConfig.checks(self, prefix)
        require(math.isfinite(self.beta) and self.beta > 0, f"{prefix}.beta", "must be > 0", self.beta)

    def preference_keys(self) -> dict:
        return {item.name: getattr(self, item.name) for item in fields(PreferenceTrainingConfig)}


def train_dpo_on_pairs(ctx: AlgorithmContext, kind: str, start: ModelHandle, pairs: list[dict],
                       config: PreferenceTrainingConfig, pairs_key: str) -> ModelHandle:
    """Sigmoid DPO from `start` against a frozen copy of `start` (as algorithm=dpo calls TRL)."""
    spec = {"pairs": pairs_key, "start": start.fingerprint, "training": config.preference_keys(), "seed": ctx.seed}
    train = Dataset.from_list([{key: pair[key] for key in ("prompt", "chosen", "rejected")} for pair in pairs])

    def make_trainer(checkpoint_dir: str):
        args = DPOConfig(**trainer_arguments(config, ctx, checkpoint_dir), beta=config.beta, loss_type=["sigmoid"])
        # the reference is the starting model (the RFT model when enabled), loaded explicitly
        return DPOTrainer(model=start.load_model(ctx.runtime), ref_model=reference_model(ctx, start), args=args,
                          train_dataset=train, processing_class=start.load_tokenizer(), peft_config=peft_config(ctx))

    return train_in_stage(ctx, kind, spec, make_trainer, start=start)


# ---------------------------------------------------------------------------- pairs
def outcome_pairs(question: SampledQuestion, require_finished: bool,
                  max_pairs_per_question: int | None = None) -> list[dict]:
    """(prompt, chosen = correct rationale, rejected = incorrect rationale) of one question.

    The j-th distinct incorrect rationale (sampling order) is paired with the (j mod |C|)-th distinct
    correct one, at most `max_pairs_per_question` pairs."""
    usable = question.usable(require_finished)
    correct = distinct_correct(usable)
    seen, incorrect = set(), []
    for rationale in usable:
        key = normalized(rationale.text)
        if not rationale.correct and key and key not in seen:
            seen.add(key)
            incorrect.append(rationale.text)
    if not correct:
        return []
    if max_pairs_per_question is not None:
        incorrect = incorrect[:max_pairs_per_question]
    return [{"question_index": question.question_index, "prompt": question.prompt,
             "chosen": correct[j % len(correct)], "rejected": rejected} for j, rejected in enumerate(incorrect)]


# ---------------------------------------------------------------------------- algorithm=outcome_dpo
@dataclass
class OutcomeDPOConfig(PreferenceTrainingConfig, RationaleSamplingConfig, OnEmptyConfig, StartingPointConfig,
                       AlgorithmConfig):
    name: str = "outcome_dpo"
    use_rft: bool = True  # DPO from (and against) the RFT model, as in the paper; false: the starting model
    max_pairs_per_question: int | None = None  # null: one pair per distinct incorrect rationale
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

    def compute():
        pairs = [pair for q in questions
                 for pair in outcome_pairs(q, config.require_finished, config.max_pairs_per_question)]
        return pairs, {"pairs": len(pairs), "questions_with_pairs": len({p["question_index"] for p in pairs})}

    spec = {"rationales": rationales_key, "max_pairs_per_question": config.max_pairs_per_question,
            "require_finished": config.require_finished}
    pairs, pairs_key = stored_records(ctx, "outcome_pairs", spec, PAIRS_FILE, compute)
    ctx.log({"outcome_dpo/pairs": len(pairs)})
    if not pairs:
        return nothing_to_train(ctx, config.on_empty, "outcome_dpo", "algorithm=outcome_dpo: no training question has "
                                "both a correct and an incorrect rationale, so there is no pair; raise "
                                "rationales_per_question, temperature or train_prompts, or start from a stronger "
                                "model (starting_point=sft)", start)
    ctx.log({"outcome_dpo/pairs": len(pairs), "outcome_dpo/questions_with_pairs":
             len({p["question_index"] for p in pairs})})
    log.info("outcome-level DPO on %d pairs", len(pairs))
    return train_dpo_on_pairs(ctx, "outcome_dpo", start, pairs, config, pairs_key)
