"""`algorithm=bon_sft`: SFT-Sharpening (Huang et al. 2025, algorithms.md §3b), no labels.

    for each training prompt x:
        y_1..y_N ~ pi_base(. | x)                       (the shared, cached sampled set)
        y* = the selector's pick among y_1..y_N          (argmax log pi_base(y|x) by default)
    SFT pi_base on {(x, y*)}                             (TRL SFTTrainer, completion-only loss)

The paper: N = 50, temperature 1, one round, LoRA, lr 3e-4 decayed linearly to 0, grad clip 0.1.
Here the training keys are `algorithm=sft`'s, so BoN-SFT and SFT differ only in their targets.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from datasets import Dataset

from framework import registry
from framework.algorithms import AlgorithmContext
from framework.algorithms.sft_stage import make_sft_trainer
from framework.algorithms.sharpening import SelfRewardSamplingConfig, sample_training_set
from framework.algorithms.training import train_in_stage
from framework.config import AlgorithmConfig, StartingPointConfig, TrainingConfig
from framework.errors import ConfigError
from framework.models import ModelHandle
from framework.self_reward import select

log = logging.getLogger(__name__)


@dataclass
class BoNSFTConfig(TrainingConfig, SelfRewardSamplingConfig, StartingPointConfig, AlgorithmConfig):
    """The sharpening paper's SFT-Sharpening recipe (Phi-3.5-mini): LoRA rank 16 (model.lora; on by default on a
    real model, conf/method_model/bon_sft_hf.yaml: 3e-4 is an adapter's rate), batch 4,
    30 epochs, lr 3e-4 linear to 0, gradient clip 0.1, weight decay 0.1 (MATH; GSM8K 0.5, ProntoQA 0)."""

    name: str = "bon_sft"
    learning_rate: float = 3e-4
    num_train_epochs: float = 30.0
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.1
    max_grad_norm: float = 0.1


def best_of_n_targets(ctx: AlgorithmContext, config: BoNSFTConfig) -> Dataset:
    """(prompt, completion = the self-reward's pick) for every prompt with at least one usable sample."""
    rows = []
    for sampled in sample_training_set(ctx, config):
        usable = sampled.usable(config.require_finished)
        if usable.candidates:
            best = usable.candidates[select(config.selector, usable.candidates, usable.answers)]
            rows.append({"prompt": sampled.prompt, "completion": best.text})
    if not rows:
        raise ConfigError("algorithm=bon_sft: no training prompt has a finished sample; raise "
                          "algorithm.max_new_tokens or set algorithm.require_finished=false")
    ctx.log({"bon_sft/targets": len(rows)})
    ctx.artifacts["targets"] = rows
    log.info("BoN-SFT on %d best-of-%d targets", len(rows), config.samples_per_prompt)
    return Dataset.from_list(rows)


@registry.algorithms.register("bon_sft", BoNSFTConfig, label_free=True)
def run(ctx: AlgorithmContext) -> ModelHandle:
    config: BoNSFTConfig = ctx.config
    targets = best_of_n_targets(ctx, config)
    return train_in_stage(ctx, "bon_sft", ctx.stage_spec(),
                          lambda checkpoint_dir: make_sft_trainer(ctx, config, checkpoint_dir, train=targets),
                          code=__name__)
