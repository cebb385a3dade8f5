"""`algorithm=dpo`: RLHF-Sharpening offline (Huang et al. 2025, algorithms.md §3c), no labels.

    for each training prompt x:
        y_1..y_N ~ pi_base(. | x)                        (the shared, cached sampled set)
        (y+, y-) = a pair with r_self(y+) > r_self(y-)    (`pair_strategy`: best vs worst by default)
    minimise over the pairs, against the frozen pi_base (TRL DPOTrainer):
        h(y) = log pi(y|x) - log pi_base(y|x)
        sigmoid:  -log sigmoid(beta * (h(y+) - h(y-)))                                        (DPO)
        squared:  (beta * (h(y+) - h(y-)) - (r_self(y+) - r_self(y-)))^2                      (the paper's)

The squared regression is the sharpening paper's objective: with r_self = log pi_base its optimum is
pi proportional to pi_base^(1 + 1/beta). TRL has no such loss type, so `SquaredSharpeningDPOTrainer`
replaces only the loss, taking r_self(y+) - r_self(y-) from the reference pass the loss needs anyway
(r_self = log pi_base on exactly the tokens trained on). It therefore needs `selector: logprob`.
The paper ran no RLHF-Sharpening experiments: there is no number to reproduce. The sampled set and the
pair rules are sharpening.py's, the DPO training preference.py's `train_dpo`.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import ClassVar

import torch
from trl import DPOTrainer

from framework import registry
from framework.algorithms import AlgorithmContext
from framework.algorithms.preference import train_dpo
from framework.algorithms.sharpening import PAIR_STRATEGIES, SelfRewardSamplingConfig, build_pairs, sample_training_set
from framework.config import AlgorithmConfig, StartingPointConfig, TrainingConfig, require
from framework.errors import ConfigError
from framework.models import ModelHandle

log = logging.getLogger(__name__)
LOSSES = ("sigmoid", "squared")


@dataclass
class DPOAlgorithmConfig(TrainingConfig, SelfRewardSamplingConfig, StartingPointConfig, AlgorithmConfig):
    """The sharpening paper's RLHF-Sharpening is theory only: two independent samples ranked by r_self
    (random_pair) and the squared regression are its choices; the training keys are TRL's DPO defaults."""

    TRL_CONFIG: ClassVar[str] = "trl:DPOConfig"
    name: str = "dpo"
    beta: float = 0.1  # strength of the pull towards pi_base (TRL's and the DPO paper's default)
    loss: str = "squared"  # squared (the paper's regression; needs selector=logprob) | sigmoid (DPO)
    pair_strategy: str = "random_pair"  # random_pair (the paper's (y, y') ~ pi_base) | random_pairs (N // 2 of them) | best_vs_worst | best_vs_random
    learning_rate: float = 1e-6  # TRL's DPOConfig default
    precompute_ref_log_probs: bool = False  # true: pi_base's log-probs of every pair once, no second model in memory
    num_train_epochs: float = 1.0
    gradient_accumulation_steps: int = 1

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(math.isfinite(self.beta) and self.beta > 0, f"{prefix}.beta", "must be > 0", self.beta)
        require(self.loss in LOSSES, f"{prefix}.loss", f"must be one of {list(LOSSES)}", self.loss)
        require(self.pair_strategy in PAIR_STRATEGIES, f"{prefix}.pair_strategy",
                f"must be one of {list(PAIR_STRATEGIES)}", self.pair_strategy)
        require(self.loss != "squared" or self.selector == "logprob", f"{prefix}.selector",
                "must be logprob with loss=squared (it regresses on log pi_base differences)", self.selector)
        require(self.samples_per_prompt >= 2, f"{prefix}.samples_per_prompt", "must be >= 2 to form pairs",
                self.samples_per_prompt)


def squared_sharpening_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
                            ref_rejected_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair (beta * (h+ - h-) - (r+ - r-))^2 with h = log pi - log pi_base and r = log pi_base."""
    margin = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
    target = ref_chosen_logps - ref_rejected_logps
    return (beta * margin - target) ** 2


def completion_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     completion_mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probs of the completion tokens of right-padded rows (TRL's DPO batch layout)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
    token_logps = torch.log_softmax(logits.float(), dim=-1).gather(2, input_ids[:, 1:, None]).squeeze(2)
    return (token_logps * completion_mask[:, 1:]).sum(dim=1)


class SquaredSharpeningDPOTrainer(DPOTrainer):
    """DPOTrainer whose loss is the squared regression above; data, batching, reference model,
    checkpointing and logging stay TRL's. Written here because TRL has no such loss type.

    It overrides the Trainer's public `compute_loss` (not a TRL-private helper that a TRL release could
    rename, silently restoring the sigmoid loss) and reads only the collated batch: `input_ids`,
    `attention_mask`, `completion_mask`, the chosen rows first, then the rejected ones (TRL's DPO layout;
    a change there fails with a KeyError or a shape error, not silently). Like TRL's DPO loss it is a
    mean over the micro-batch's pairs, which the Trainer divides by the accumulation steps."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        args = (inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"])
        chosen_logps, rejected_logps = completion_logps(model, *args).chunk(2)
        if "ref_chosen_logps" in inputs:  # precompute_ref_log_probs
            ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen_logps, ref_rejected_logps = self._reference_logps(model, args).chunk(2)
        per_pair = squared_sharpening_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
                                           self.beta)
        chosen_rewards = self.beta * (chosen_logps - ref_chosen_logps).detach()
        rejected_rewards = self.beta * (rejected_logps - ref_rejected_logps).detach()
        metrics = {
            "rewards/chosen": chosen_rewards.mean(), "rewards/rejected": rejected_rewards.mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
            "sharpening/target_margin": (ref_chosen_logps - ref_rejected_logps).mean(),
            "logps/chosen": chosen_logps.detach().mean(), "logps/rejected": rejected_logps.detach().mean(),
        }
        for key, value in metrics.items():
            self._metrics[mode][key].append(self.accelerator.gather(value).mean().item())
        if mode == "train":
            self._total_train_tokens += self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
        loss = per_pair.mean()
        return (loss, None) if return_outputs else loss

    @torch.no_grad()
    def _reference_logps(self, model, args) -> torch.Tensor:
        """log pi_base of every row: the frozen copy, or under LoRA (no copy) the policy with its adapter off."""
        if self.ref_model is not None:
            return completion_logps(self.ref_model, *args)
        unwrapped = self.accelerator.unwrap_model(model)
        if not hasattr(unwrapped, "disable_adapter"):
            raise RuntimeError("squared DPO needs a reference: a ref_model, a LoRA adapter to switch off, or "
                               "precompute_ref_log_probs")
        with unwrapped.disable_adapter():
            return completion_logps(model, *args)


def preference_pairs(ctx: AlgorithmContext, config: DPOAlgorithmConfig) -> list[dict]:
    """(prompt, chosen, rejected) rows from the sampled set, ranked by self-reward only."""
    rng = random.Random(ctx.seed)
    rows = []
    for sampled in sample_training_set(ctx, config):
        usable = sampled.usable(config.require_finished)
        for chosen, rejected in build_pairs(config.selector, usable.candidates, usable.answers,
                                            config.pair_strategy, rng):
            rows.append({"prompt": sampled.prompt, "chosen": usable.candidates[chosen].text,
                         "rejected": usable.candidates[rejected].text})
    if not rows:
        raise ConfigError("algorithm=dpo: no training prompt gave a pair with distinct self-rewards; raise "
                          "algorithm.samples_per_prompt or algorithm.temperature")
    ctx.log({"dpo/pairs": len(rows)})
    ctx.artifacts["pairs"] = rows
    log.info("DPO on %d self-ranked pairs (%s, selector %s)", len(rows), config.pair_strategy, config.selector)
    return rows


@registry.algorithms.register("dpo", DPOAlgorithmConfig, label_free=True)
def run(ctx: AlgorithmContext) -> ModelHandle:
    config: DPOAlgorithmConfig = ctx.config
    pairs = preference_pairs(ctx, config)
    trainer_class = SquaredSharpeningDPOTrainer if config.loss == "squared" else DPOTrainer
    return train_dpo(ctx, "dpo", ctx.stage_spec(), ctx.base, pairs, config, trainer_class=trainer_class,
                     code=__name__)
