"""`algorithm=rft`: rejection-sampling fine-tuning (Yuan et al. 2023), as Self-Explore's stage 3
(Hwang et al. 2024, algorithms.md §4; the authors' scripts, self-explore-repo.md). Uses gold final answers.

    for each training question x with gold answer a:
        y_1..y_K ~ pi_sft(. | x)                          (the shared, cached rationale set)
        C(x) = the correct y_i, deduplicated (equation signature / edit distance), at most M
    SFT pi_0 on {(x, y) : y in C(x)},  pi_0 = the model as built (the scripts') or pi_sft  (TRL SFTTrainer)

The rationale set and the kept-set rules are rationales.py's, the RFT model the shared `rft` stage
(rft_stage.py): outcome DPO and Self-Explore start from this very model.
"""
from __future__ import annotations

from dataclasses import dataclass

from framework import registry
from framework.algorithms import AlgorithmContext
from framework.algorithms.rationales import OnEmptyConfig, RationaleSamplingConfig, sample_rationales
from framework.algorithms.rft_stage import RFTStageConfig, rft_model
from framework.config import AlgorithmConfig, StartingPointConfig
from framework.models import ModelHandle


@dataclass
class RFTAlgorithmConfig(RFTStageConfig, RationaleSamplingConfig, OnEmptyConfig, StartingPointConfig,
                         AlgorithmConfig):
    name: str = "rft"


@registry.algorithms.register("rft", RFTAlgorithmConfig)
def run(ctx: AlgorithmContext) -> ModelHandle:
    config: RFTAlgorithmConfig = ctx.config
    questions, rationales_key = sample_rationales(ctx, config, "rft")
    return rft_model(ctx, questions, rationales_key, config, config, "rft", config.on_empty)
