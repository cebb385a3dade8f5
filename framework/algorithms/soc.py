"""`algorithm=soc`: Supervised Optimism Correction (Zhang et al., ACL Findings 2025, arXiv 2504.07527).

An SFT model's logits z(s) act as an implicit Q-function; beam search ranks partial answers by them
and over-rates steps where supervision was thin. SOC adds an implicit-value term to SFT that raises
V(s) = beta * logsumexp(z(s) / beta) on the states of the demonstrations:

    for each batch of demonstrations (x, y):
        L_SFT = mean over response tokens t of  -log softmax(z(s_t))[y_t]
        L_V   = mean over the chosen states s of  -V(s)
        minimise  L_SFT + value_coef * L_V

Both terms come from the one logits tensor of the forward pass (logsumexp in fp32). With beta = 1
the per-token loss is -z_y + (1 - value_coef) * logsumexp(z), whose gradient on the logits is
(1 - value_coef) * softmax(z) - onehot(y); with value_coef = 0 it is exactly the SFT loss.
The primary text was not available (see ../shared/docs/algorithms.md §2): the state set, the
normalisation and beta are keys, with the secondary sources' choices as defaults.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from trl import SFTTrainer

from framework import registry
from framework.algorithms import AlgorithmContext
from framework.algorithms.sft import make_sft_trainer
from framework.algorithms.training import train_in_stage
from framework.config import AlgorithmConfig, TrainingConfig, require
from framework.models import ModelHandle

STATE_SETS = ("response", "all")  # response: the states the SFT loss uses; all: prompt states too
NORMALISATIONS = ("token_mean", "sequence_mean")


@dataclass
class SOCConfig(TrainingConfig, AlgorithmConfig):
    name: str = "soc"
    value_coef: float = 0.2  # lambda; the paper reports 0.1-0.3 as stable
    beta: float = 1.0  # temperature of the implicit value V(s) = beta * logsumexp(z / beta)
    value_states: str = "response"  # which states' V is raised: response | all (non-padding)
    normalisation: str = "token_mean"  # token_mean | sequence_mean, for both terms

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(math.isfinite(self.value_coef) and self.value_coef >= 0, f"{prefix}.value_coef",
                "must be a non-negative number", self.value_coef)
        require(math.isfinite(self.beta) and self.beta > 0, f"{prefix}.beta", "must be > 0", self.beta)
        require(self.value_states in STATE_SETS, f"{prefix}.value_states", f"must be one of {list(STATE_SETS)}",
                self.value_states)
        require(self.normalisation in NORMALISATIONS, f"{prefix}.normalisation",
                f"must be one of {list(NORMALISATIONS)}", self.normalisation)


@dataclass
class SOCTerms:
    loss: torch.Tensor
    sft_loss: torch.Tensor
    value_loss: torch.Tensor
    mean_value: torch.Tensor
    mean_entropy: torch.Tensor


def _reduce(per_token: torch.Tensor, mask: torch.Tensor, normalisation: str, num_items: torch.Tensor | None = None):
    if normalisation == "sequence_mean":
        per_sequence = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1)
        return per_sequence[mask.any(1)].mean() if mask.any() else per_token.sum() * 0
    denominator = num_items if num_items is not None else mask.sum()
    return (per_token * mask).sum() / torch.as_tensor(denominator).clamp(min=1)


def soc_loss(logits: torch.Tensor, labels: torch.Tensor, *, value_coef: float, beta: float = 1.0,
             state_mask: torch.Tensor | None = None, normalisation: str = "token_mean",
             num_items: torch.Tensor | None = None) -> SOCTerms:
    """SOC loss from next-token logits [batch, positions, vocab] aligned with labels [batch, positions]
    (already shifted: labels[:, t] is the token that follows state t; -100 = not supervised).
    `state_mask` picks the states whose value is raised (default: the supervised ones)."""
    logits = logits.float()
    supervised = labels != -100
    states = supervised if state_mask is None else state_mask
    log_partition = torch.logsumexp(logits, dim=-1)
    target_logits = logits.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    sft_loss = _reduce(log_partition - target_logits, supervised, normalisation, num_items)
    value = log_partition if beta == 1.0 else beta * torch.logsumexp(logits / beta, dim=-1)
    value_loss = -_reduce(value, states, normalisation)
    with torch.no_grad():
        probabilities = torch.softmax(logits, dim=-1)
        entropy = log_partition - (probabilities * logits).sum(-1)
        mean_value = _reduce(value.detach(), states, "token_mean")
        mean_entropy = _reduce(entropy, supervised, "token_mean")
    return SOCTerms(sft_loss + value_coef * value_loss, sft_loss, value_loss, mean_value, mean_entropy)


class SOCTrainer(SFTTrainer):
    """TRL's SFTTrainer with the SOC loss: same data pipeline, one forward pass per step."""

    soc: SOCConfig

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        labels = inputs["labels"]
        forward_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "completion_mask")}
        outputs = model(**forward_inputs, use_cache=False)
        shifted_labels = labels[:, 1:]
        if self.soc.value_states == "all":
            state_mask = inputs["attention_mask"][:, 1:].bool() if "attention_mask" in inputs else None
        else:
            state_mask = None
        terms = soc_loss(outputs.logits[:, :-1], shifted_labels, value_coef=self.soc.value_coef, beta=self.soc.beta,
                         state_mask=state_mask, normalisation=self.soc.normalisation,
                         num_items=num_items_in_batch if self.soc.normalisation == "token_mean" else None)
        loss = terms.loss
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as TRL's SFT loss: DDP averages gradients
        for key, value in (("soc/sft_loss", terms.sft_loss), ("soc/value_loss", terms.value_loss),
                           ("soc/mean_value", terms.mean_value), ("entropy", terms.mean_entropy)):
            self._metrics[mode][key].append(self.accelerator.gather_for_metrics(value.detach()).mean().item())
        if mode == "train":
            self._total_train_tokens += self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, outputs) if return_outputs else loss


@registry.algorithms.register("soc", SOCConfig)
def run(ctx: AlgorithmContext) -> ModelHandle:
    def make_trainer(checkpoint_dir: str) -> SOCTrainer:
        trainer = make_sft_trainer(ctx, ctx.config, checkpoint_dir, trainer_class=SOCTrainer)
        trainer.soc = ctx.config
        return trainer

    return train_in_stage(ctx, "soc", ctx.stage_spec(), make_trainer)
