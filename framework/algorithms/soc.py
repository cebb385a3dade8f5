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
from typing import ClassVar

import torch
from trl import SFTTrainer

from framework import registry
from framework.algorithms import AlgorithmContext
from framework.algorithms.sft_stage import make_sft_trainer
from framework.algorithms.training import train_in_stage
from framework.config import AlgorithmConfig, TrainingConfig, require
from framework.models import ModelHandle

STATE_SETS = ("response", "all")  # response: the states the SFT loss uses; all: prompt states too
NORMALISATIONS = ("token_mean", "sequence_mean")


@dataclass
class SOCConfig(TrainingConfig, AlgorithmConfig):
    # the memory plan (framework/plan.py): soc_loss's fp32 logits, softmax and their product at the loss,
    # bytes per token and vocabulary entry beyond an SFT loss's
    PLAN_EXTRA_LOGIT_BYTES: ClassVar[int] = 4
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
    loss: torch.Tensor  # what is minimised: both terms over the step's counts
    sft_loss: torch.Tensor  # logged: this batch's own mean
    value_loss: torch.Tensor  # logged: this batch's own mean of -V
    mean_value: torch.Tensor
    mean_entropy: torch.Tensor


@dataclass
class StateCounts:
    """How many of each unit one optimizer step's loss averages over: every micro-batch of the step and,
    when `average_tokens_across_devices`, every process. Dividing each micro-batch's sums by these (not
    by the micro-batch's own counts) makes the update independent of how the step is split."""

    tokens: float | torch.Tensor  # supervised response tokens (the SFT loss's positions)
    states: float | torch.Tensor  # the states whose value is raised (`value_states`)
    sequences: float | torch.Tensor  # sequences with at least one such token or state


def count_states(labels: torch.Tensor, state_mask: torch.Tensor | None) -> StateCounts:
    """Counts of one micro-batch (shifted labels [batch, positions]; state_mask: None = the supervised ones)."""
    supervised = labels != -100
    states = supervised if state_mask is None else state_mask
    return StateCounts(tokens=supervised.sum(), states=states.sum(), sequences=supervised.any(1).sum())


def _reduce(per_token: torch.Tensor, mask: torch.Tensor, normalisation: str, tokens, sequences) -> torch.Tensor:
    """Sum over `mask`, divided by the step's token count (token_mean) or, after a per-sequence token
    mean, by its sequence count (sequence_mean)."""
    if normalisation == "sequence_mean":
        per_sequence = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1)
        return per_sequence.sum() / torch.as_tensor(sequences).clamp(min=1)
    return (per_token * mask).sum() / torch.as_tensor(tokens).clamp(min=1)


def soc_loss(logits: torch.Tensor, labels: torch.Tensor, *, value_coef: float, beta: float = 1.0,
             state_mask: torch.Tensor | None = None, normalisation: str = "token_mean",
             counts: StateCounts | None = None) -> SOCTerms:
    """SOC loss from next-token logits [batch, positions, vocab] aligned with labels [batch, positions]
    (already shifted: labels[:, t] is the token that follows state t; -100 = not supervised).
    `state_mask` picks the states whose value is raised (default: the supervised ones). `counts` are the
    denominators of the whole optimizer step (default: this batch's own, i.e. a plain mean)."""
    logits = logits.float()
    supervised = labels != -100
    states = supervised if state_mask is None else state_mask
    own = count_states(labels, state_mask)
    counts = counts or own
    log_partition = torch.logsumexp(logits, dim=-1)
    target_logits = logits.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    value = log_partition if beta == 1.0 else beta * torch.logsumexp(logits / beta, dim=-1)
    token_nll = log_partition - target_logits

    def terms(denominators: StateCounts) -> tuple[torch.Tensor, torch.Tensor]:
        return (_reduce(token_nll, supervised, normalisation, denominators.tokens, denominators.sequences),
                -_reduce(value, states, normalisation, denominators.states, denominators.sequences))

    sft_loss, value_loss = terms(counts)
    with torch.no_grad():  # logged as this batch's own means, whatever the step's split
        logged_sft, logged_value = terms(own) if counts is not own else (sft_loss.detach(), value_loss.detach())
        probabilities = torch.softmax(logits, dim=-1)
        entropy = log_partition - (probabilities * logits).sum(-1)
        mean_value = (value * states).sum() / states.sum().clamp(min=1)
        mean_entropy = (entropy * supervised).sum() / supervised.sum().clamp(min=1)
    return SOCTerms(sft_loss + value_coef * value_loss, logged_sft, logged_value, mean_value, mean_entropy)


class SOCTrainer(SFTTrainer):
    """TRL's SFTTrainer with the SOC loss: same data pipeline, one forward pass per step.

    Both terms are normalised by the whole optimizer step's counts (`StateCounts`, taken in
    `get_batch_samples` when the Trainer collects the step's micro-batches), so the update does not
    depend on the split into micro-batches and processes: the loss arrives already scaled for gradient
    accumulation, and is multiplied by the process count because DDP averages the processes' gradients.
    """

    soc: SOCConfig
    loss_is_scaled_for_ga = True  # transformers: compute_loss already divides by the step's counts
    _step_counts: StateCounts | None = None

    def _state_mask(self, inputs) -> torch.Tensor | None:
        if self.soc.value_states == "all" and "attention_mask" in inputs:
            return inputs["attention_mask"][:, 1:].bool()
        return None  # the supervised states

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        totals = [count_states(batch["labels"][:, 1:], self._state_mask(batch)) for batch in batch_samples]
        local = torch.tensor([[float(sum(c.tokens for c in totals)), float(sum(c.states for c in totals)),
                               float(sum(c.sequences for c in totals))]], device=device)
        summed = self._global_sum(local)[0]
        self._step_counts = StateCounts(tokens=summed[0], states=summed[1], sequences=summed[2])
        return batch_samples, num_items_in_batch

    def _global_sum(self, local: torch.Tensor) -> torch.Tensor:
        if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
            return self.accelerator.gather(local).sum(0, keepdim=True)
        return local

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        labels = inputs["labels"]
        forward_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "completion_mask")}
        outputs = model(**forward_inputs, use_cache=False)
        # training: the step's counts; evaluation (one batch, no accumulation): the batch's own
        counts = self._step_counts if mode == "train" else None
        terms = soc_loss(outputs.logits[:, :-1], labels[:, 1:], value_coef=self.soc.value_coef, beta=self.soc.beta,
                         state_mask=self._state_mask(inputs), normalisation=self.soc.normalisation, counts=counts)
        loss = terms.loss
        if counts is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes  # the counts span every process; DDP averages gradients
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

    return train_in_stage(ctx, "soc", ctx.stage_spec(), make_trainer, code=__name__)
