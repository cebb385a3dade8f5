"""The RFT model as a shared stage (`rft`): SFT on the kept correct rationales of a rationale set.

RFT (algorithm=rft) is this stage alone; outcome DPO and Self-Explore start from it (`use_rft`), as the
authors' scripts do (self-explore-repo.md). Its key holds only what determines the model (the rationale
set, the kept-set keys, the starting model and the training keys), so Self-Explore's explorer is the very
model an `algorithm=rft` job evaluates whenever those are equal.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, fields

from datasets import Dataset

from framework.algorithms import AlgorithmContext
from framework.algorithms.rationales import RationaleSamplingConfig, SampledQuestion, kept_set, nothing_to_train
from framework.algorithms.sft_stage import make_sft_trainer
from framework.algorithms.training import train_in_stage
from framework.config import TrainingConfig, require
from framework.models import ModelHandle

log = logging.getLogger(__name__)
RFT_STARTS = ("base", "sampler")


@dataclass
class RFTStageConfig(TrainingConfig):
    """The RFT stage's keys: which model it fine-tunes, and how (TrainingConfig's names). The authors'
    scripts fine-tune the base model with the SFT recipe, so the learning rate is algorithm=sft's."""

    train_from: str = "base"  # base: the model as `model=` builds it (the scripts') | sampler: the model that sampled the rationales
    num_train_epochs: float = 1.0  # the paper's RFT epochs

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.train_from in RFT_STARTS, f"{prefix}.train_from", f"must be one of {list(RFT_STARTS)}",
                self.train_from)


def rft_keys(config: RFTStageConfig) -> dict:
    """What determines the RFT model besides the rationale set, read from either config layout."""
    return {name: getattr(config, name) for name in [item.name for item in fields(TrainingConfig)] + ["train_from"]}


def rft_model(ctx: AlgorithmContext, questions: list[SampledQuestion], rationales_key: str,
              sampling: RationaleSamplingConfig, training: RFTStageConfig, method: str,
              on_empty: str = "error") -> ModelHandle:
    """The RFT model on the kept correct rationales of the rationale set `rationales_key` (the `rft`
    stage, shared by every method with equal keys)."""
    keys = sampling.kept_keys(ctx.data.checker)
    kept, summary = kept_set(questions, keys)
    targets = [{"prompt": k.question.prompt, "completion": k.text(index)} for k in kept for index in k.correct]
    ctx.log({f"rft/{name}": value for name, value in summary.items()})
    start = ctx.built if training.train_from == "base" else ctx.base
    if not targets:
        return nothing_to_train(
            ctx, on_empty, "rft", f"algorithm={method}: none of the sampled rationales reaches its gold answer, so "
            "RFT has nothing to train on; raise rationales_per_question or train_prompts, start from a stronger "
            "model (starting_point=sft)" + ("" if method == "rft" else ", or set use_rft=false"), start)
    log.info("RFT from the %s model on %d correct rationales of %d questions (%s dedup)", training.train_from,
             len(targets), summary["questions_with_a_kept_correct"], keys["correct_dedup"])
    spec = ctx.stage_spec(rationales=rationales_key, kept=keys, start=start, rft=rft_keys(training))
    train = Dataset.from_list(targets)
    return train_in_stage(ctx, "rft", spec,
                          lambda checkpoint_dir: make_sft_trainer(ctx, training, checkpoint_dir, train=train,
                                                                  start=start),
                          code=__name__, start=start, metadata={"kept_set": summary}, training=training)
