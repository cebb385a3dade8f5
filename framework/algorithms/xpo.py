"""`algorithm=xpo`: XPO-Sharpening (Xie et al. 2024, arXiv 2405.21046; algorithms.md §3d), no labels.

Online DPO on self-ranked pairs, one sample from the policy and one from the frozen starting model,
plus XPO's exploration bonus:

    pi_base = the starting model, frozen;   pi = the policy, initialised to pi_base
    every step, for each training prompt x of the batch (prompts only, no gold answer anywhere):
        y  ~ pi(. | x),   y~ ~ pi_base(. | x)                 temperature T (0.9), top_p
        r_self(s) = log pi_base(s | x)                        temperature 1, summed over s's tokens
                    (self_reward=length_norm: divided by |s|, EOS counted)
        (c, r) = (y, y~) if r_self(y) >= r_self(y~) else (y~, y)      the policy sample wins ties
        h(s) = log pi(s | x) - log pi_base(s | x)
        loss(x) = -log sigmoid(beta * (h(c) - h(r)))  +  alpha_e * log pi(y~ | x)
    minimise the mean of loss(x) over the batch; alpha_e = alpha[min(epoch, len(alpha) - 1)]

Minimising alpha * log pi(y~) moves probability off what pi_base would say (the exploration bonus).
Ties: a tie on distinct sequences is measure-zero, and on identical ones (y == y~) the DPO term is
log 2 with zero gradient whichever is "chosen". Letting the policy sample win a tie means the DPO
term does not raise y~ while the alpha term lowers it; it is also TRL's old XPO rule.

TRL removed its XPOTrainer (absent in TRL >= 1.14); `XPOTrainer` below is a subclass of
`trl.experimental.online_dpo.OnlineDPOTrainer`, and everything that depends on TRL internals lives in
this module. It reuses from OnlineDPOTrainer: the frozen reference copy of the model, the generation
config and EOS ids, `_forward` (per-token log-probs of completions), the callable-reward path
(`_calculate_rewards_from_functions`), and the `self.stats` logging. It overrides `training_step`
(OnlineDPO's samples both completions from the policy and has no alpha term) and replaces the
`self.stats` keys with XPO's.
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from datasets import Dataset

with warnings.catch_warnings():  # importing trl.experimental warns once per process; this module owns the dependency
    warnings.filterwarnings("ignore", message="You are importing from 'trl.experimental'")
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer
    from trl.experimental.utils import truncate_right
    from trl.models.utils import unwrap_model_for_generation

from framework import registry
from framework.algorithms import AlgorithmContext
from framework.algorithms.training import (peft_config, reference_model, train_in_stage, trainable_model,
                                          trainer_arguments)
from framework.config import AlgorithmConfig, PromptPoolConfig, StartingPointConfig, TrainingConfig, require
from framework.models import ModelHandle
from framework.self_reward import SCORE_SELECTORS

SELF_REWARDS = tuple(SCORE_SELECTORS)  # the score self-rewards of best-of-N (majority needs answers: none here)


@dataclass
class XPOConfig(TrainingConfig, PromptPoolConfig, StartingPointConfig, AlgorithmConfig):
    """TRL's former XPOTrainer defaults (beta 0.1, alpha 1e-5, T 0.9, lr 5e-7); generation length the dataset's."""

    TRL_CONFIG: ClassVar[str] = "trl.experimental.online_dpo:OnlineDPOConfig"
    name: str = "xpo"
    beta: float = 0.1  # pull towards pi_base (TRL's XPO / DPO default)
    # exploration coefficient per epoch; the last value holds after the list ends, one value = constant.
    # A list because OmegaConf cannot type a union of float and list.
    alpha: list[float] = field(default_factory=lambda: [1e-5])
    temperature: float = 0.9  # sampling temperature of both y and y~ (TRL's XPO default); r_self uses 1
    top_p: float = 1.0
    max_new_tokens: int = 512  # per sample (TRL's 64 would cut most math solutions); YAML: the dataset's
    self_reward: str = "logprob"  # logprob (sum of log pi_base) | length_norm (per token)
    learning_rate: float = 5e-7  # TRL's XPO default
    num_train_epochs: float = 1.0
    per_device_train_batch_size: int = 8  # prompts per step; each brings two samples
    gradient_accumulation_steps: int = 1
    max_length: int = 2048  # prompt + completion: room for the dataset's generation length
    train_prompts: int | None = None  # the first N prompts of the pool (null: all); one epoch is one pass over them

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(math.isfinite(self.beta) and self.beta > 0, f"{prefix}.beta", "must be > 0", self.beta)
        require(len(self.alpha) >= 1, f"{prefix}.alpha", "must list at least one value (one value = constant)",
                self.alpha)
        for index, value in enumerate(self.alpha):
            require(math.isfinite(value) and value >= 0, f"{prefix}.alpha[{index}]", "must be a number >= 0", value)
        require(math.isfinite(self.temperature) and self.temperature > 0, f"{prefix}.temperature", "must be > 0",
                self.temperature)
        require(0 < self.top_p <= 1, f"{prefix}.top_p", "must be in (0, 1]", self.top_p)
        require(self.max_new_tokens >= 1, f"{prefix}.max_new_tokens", "must be >= 1", self.max_new_tokens)
        require(self.train_prompts is None or self.train_prompts >= 1, f"{prefix}.train_prompts", "must be >= 1 or null",
                self.train_prompts)
        require(self.max_new_tokens < self.max_length, f"{prefix}.max_new_tokens",
                f"must be < max_length ({self.max_length}), else the prompt is truncated away", self.max_new_tokens)
        require(self.self_reward in SELF_REWARDS, f"{prefix}.self_reward", f"must be one of {list(SELF_REWARDS)}",
                self.self_reward)


# ---------------------------------------------------------------------------- the method, TRL-free
def alpha_for_epoch(alpha: float | Sequence[float], epoch: float | None) -> float:
    """alpha in use during `epoch` (0-based, fractional progress allowed): alpha[floor(epoch)], the last
    value once the list has ended; a bare number is constant."""
    if isinstance(alpha, (int, float)):
        return float(alpha)
    if len(alpha) == 0:
        raise ValueError("alpha must list at least one value")
    index = min(int(math.floor(epoch or 0.0)), len(alpha) - 1)
    return float(alpha[index])


def prefer_policy_sample(policy_rewards: torch.Tensor, reference_rewards: torch.Tensor) -> torch.Tensor:
    """True where the policy sample y is chosen over y~: r_self(y) >= r_self(y~), so y wins ties."""
    return policy_rewards >= reference_rewards


def self_reward(base_logps: torch.Tensor, lengths: torch.Tensor, kind: str) -> torch.Tensor:
    """r_self from the summed log pi_base of each completion and its token count (EOS included): the
    formulas of framework/self_reward.py, on the trainer's float32 tensors (its float64 lists would round
    differently, and a tie on r_self decides which sample is chosen)."""
    if kind == "logprob":
        return base_logps
    if kind == "length_norm":
        return base_logps / lengths.clamp(min=1)
    raise ValueError(f"unknown self_reward {kind!r}; expected one of {SELF_REWARDS}")


@dataclass
class XPOTerms:
    loss: torch.Tensor  # mean over pairs of dpo + alpha term; what is minimised
    dpo_loss: torch.Tensor  # mean -log sigmoid(beta * margin)
    alpha_term: torch.Tensor  # mean alpha * log pi(y~)
    margin: torch.Tensor  # per pair h(c) - h(r), detached


def xpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, policy_ref_sample_logps: torch.Tensor, *, beta: float,
             alpha: float) -> XPOTerms:
    """XPO loss from sequence log-probs (summed over completion tokens), one entry per prompt.

    `policy_ref_sample_logps` is log pi(y~ | x) (the same tensor as the chosen or rejected one for that
    prompt, whichever y~ is); its gradient is alpha / batch, so descent lowers log pi(y~)."""
    margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    dpo = -F.logsigmoid(beta * margin)
    bonus = alpha * policy_ref_sample_logps
    return XPOTerms(loss=(dpo + bonus).mean(), dpo_loss=dpo.mean().detach(), alpha_term=bonus.mean().detach(),
                    margin=margin.detach())


# ---------------------------------------------------------------------------- the TRL side
class SelfReward:
    """OnlineDPOTrainer reward function: r_self(y | x) = log pi_base(y | x).

    No second pass over pi_base: `XPOTrainer.training_step` runs pi_base over both samples anyway (the
    reference log-probs of the DPO loss, at temperature 1, on exactly the tokens trained on) and
    hands the sums in as `base_logps`."""

    __name__ = "self_reward"  # TRL names reward functions in its logs by __name__

    def __init__(self, kind: str):
        self.kind = kind

    def __call__(self, prompts, completions, completion_ids, *, base_logps, completion_lengths,
                 **kwargs) -> list[float]:
        return self_reward(torch.tensor(base_logps), torch.tensor(completion_lengths, dtype=torch.float),
                           self.kind).tolist()


STAT_KEYS = (
    "xpo/policy_chosen",  # share of prompts whose policy sample y won (r_self(y) >= r_self(y~))
    "xpo/ties",  # share with r_self(y) == r_self(y~)
    "xpo/identical_samples",  # share with y == y~ token for token (no learning signal from DPO)
    "xpo/alpha", "xpo/alpha_term", "xpo/dpo_loss",
    "xpo/alpha_to_dpo_ratio",  # |alpha term| / DPO term: how much the exploration bonus weighs in the loss
    "xpo/logps_ref_sample",  # mean log pi(y~)
    "xpo/self_reward_policy", "xpo/self_reward_ref", "xpo/self_reward_margin",  # r_self of y, y~, chosen - rejected
    "xpo/length_policy", "xpo/length_ref",  # completion tokens, EOS included
    "objective/kl",  # mean sum_t log pi/pi_base over the policy samples (sampled at `temperature`, so an estimate)
    "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",  # DPO implicit rewards beta*h
    "logps/chosen", "logps/rejected", "val/contain_eos_token", "beta",
)


class XPOTrainer(OnlineDPOTrainer):
    """OnlineDPOTrainer whose pair is (a policy sample, a pi_base sample), plus the alpha term."""

    def __init__(self, *args, alpha: Sequence[float], **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha = list(alpha)
        # every key must get a value each step: OnlineDPO's logging averages every list it holds
        self.stats = {key: [] for key in STAT_KEYS}

    @property
    def current_alpha(self) -> float:
        return alpha_for_epoch(self.alpha, self.state.epoch)

    def _tokenize_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        # As framework.decoding tokenizes for evaluation (the tokenizer's own special tokens), not as
        # OnlineDPO's `_generate` (add_special_tokens=False), so training prompts match test prompts.
        encoded = self.processing_class(text=prompts, return_tensors="pt", padding=True, padding_side="left",
                                        return_token_type_ids=False)
        device = self.accelerator.device
        return encoded["input_ids"].to(device), encoded["attention_mask"].to(device)

    def _sample(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
        """One completion per prompt, cut after the first EOS: (ids padded right, mask incl. the EOS)."""
        with unwrap_model_for_generation(model, self.accelerator,
                                         gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                                         generation_kwargs=self.generation_kwargs) as unwrapped, torch.no_grad():
            output = unwrapped.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
                                        generation_config=self.generation_config)
        return truncate_right(output[:, prompt_ids.size(1):], self.eos_token_ids, self._tokenizer.pad_token_id)

    @contextmanager
    def _reference(self, model):
        """pi_base: the frozen copy, or under LoRA (where OnlineDPO keeps no copy) the policy with its
        adapter switched off, for both sampling y~ and scoring."""
        if self.ref_model is not None:
            yield self.ref_model
        else:
            with self.accelerator.unwrap_model(model).disable_adapter():
                yield model

    def _pad_right(self, ids: torch.Tensor, mask: torch.Tensor, width: int):
        extra = width - ids.size(1)
        return F.pad(ids, (0, extra), value=self._tokenizer.pad_token_id), F.pad(mask, (0, extra), value=0)

    def _log(self, key: str, value) -> None:
        value = torch.as_tensor(value, dtype=torch.float, device=self.accelerator.device)
        self.stats[key].append(self.accelerator.gather_for_metrics(value.reshape(-1)).mean().item())

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        model.train()
        prompts = inputs["prompt"]
        batch = len(prompts)
        prompt_ids, prompt_mask = self._tokenize_prompts(prompts)

        policy_ids, policy_mask = self._sample(model, prompt_ids, prompt_mask)  # y ~ pi
        with self._reference(model) as reference:
            ref_ids, ref_mask = self._sample(reference, prompt_ids, prompt_mask)  # y~ ~ pi_base
        width = max(policy_ids.size(1), ref_ids.size(1))
        policy_ids, policy_mask = self._pad_right(policy_ids, policy_mask, width)
        ref_ids, ref_mask = self._pad_right(ref_ids, ref_mask, width)
        # rows [0, batch) are the policy samples y, rows [batch, 2 batch) the pi_base samples y~
        completion_ids = torch.cat([policy_ids, ref_ids])
        completion_mask = torch.cat([policy_mask, ref_mask])
        both_prompt_ids, both_prompt_mask = prompt_ids.repeat(2, 1), prompt_mask.repeat(2, 1)
        # non-padding tokens of both forward passes' inputs, as TRL's SFT/DPO trainers count theirs
        step_tokens = self.accelerator.gather_for_metrics(both_prompt_mask.sum() + completion_mask.sum()).sum().item()
        self._total_train_tokens = getattr(self, "_total_train_tokens", 0) + step_tokens

        token_logps = self._forward(model, both_prompt_ids, both_prompt_mask, completion_ids, completion_mask)
        with torch.no_grad(), self._reference(model) as reference:
            ref_token_logps = self._forward(reference, both_prompt_ids, both_prompt_mask, completion_ids,
                                            completion_mask)
        valid = completion_mask.bool()
        logps = (token_logps * valid).sum(1)
        ref_logps = (ref_token_logps * valid).sum(1)
        lengths = completion_mask.sum(1)

        rewards = self._calculate_rewards_from_functions(
            prompts=2 * list(prompts),
            completions=self.processing_class.batch_decode(completion_ids, skip_special_tokens=True),
            completion_ids_list=[row[: int(n)] for row, n in zip(completion_ids.tolist(), lengths.tolist())],
            base_logps=ref_logps.tolist(), completion_lengths=lengths.tolist(),
        )
        policy_rewards, ref_rewards = rewards.split(batch)
        policy_wins = prefer_policy_sample(policy_rewards, ref_rewards)
        rows = torch.arange(batch, device=logps.device)
        chosen = torch.where(policy_wins, rows, rows + batch)
        rejected = torch.where(policy_wins, rows + batch, rows)

        alpha = self.current_alpha
        terms = xpo_loss(logps[chosen], logps[rejected], ref_logps[chosen], ref_logps[rejected], logps[batch:],
                         beta=self.beta, alpha=alpha)
        # Averaged over micro-batches: the Trainer's accelerator does not divide by gradient accumulation
        # (transformers >= 5), and OnlineDPO's own step backpropagates the undivided loss.
        loss = terms.loss / self.current_gradient_accumulation_steps
        if self.args.n_gpu > 1:
            loss = loss.mean()
        self.accelerator.backward(loss)

        with torch.no_grad():
            eos = torch.tensor(self.eos_token_ids, device=completion_ids.device)
            contains_eos = (torch.isin(completion_ids, eos) & valid).any(1)
            identical = (policy_ids == ref_ids).all(1) & (policy_mask == ref_mask).all(1)
            chosen_rewards = self.beta * (logps[chosen] - ref_logps[chosen])
            rejected_rewards = self.beta * (logps[rejected] - ref_logps[rejected])
            for key, value in (
                ("xpo/policy_chosen", policy_wins.float()), ("xpo/ties", (policy_rewards == ref_rewards).float()),
                ("xpo/identical_samples", identical.float()), ("xpo/alpha", alpha),
                ("xpo/alpha_term", terms.alpha_term), ("xpo/dpo_loss", terms.dpo_loss),
                ("xpo/alpha_to_dpo_ratio", terms.alpha_term.abs() / terms.dpo_loss.clamp(min=1e-12)),
                ("xpo/logps_ref_sample", logps[batch:]),
                ("xpo/self_reward_policy", policy_rewards), ("xpo/self_reward_ref", ref_rewards),
                ("xpo/self_reward_margin", rewards[chosen] - rewards[rejected]),
                ("xpo/length_policy", lengths[:batch].float()), ("xpo/length_ref", lengths[batch:].float()),
                ("objective/kl", logps[:batch] - ref_logps[:batch]),
                ("rewards/chosen", chosen_rewards), ("rewards/rejected", rejected_rewards),
                ("rewards/margins", chosen_rewards - rejected_rewards),
                ("rewards/accuracies", (chosen_rewards > rejected_rewards).float()),
                ("logps/chosen", logps[chosen]), ("logps/rejected", logps[rejected]),
                ("val/contain_eos_token", contains_eos.float()), ("beta", self.beta),
            ):
                self._log(key, value)
        return loss.detach()


def make_xpo_trainer(ctx: AlgorithmContext, config: XPOConfig, checkpoint_dir: str) -> XPOTrainer:
    """XPOTrainer from `ctx.base` (the policy, and pi_base loaded again and frozen) on the training prompts only."""
    tokenizer = ctx.base.load_tokenizer()
    model = trainable_model(ctx, ctx.base)
    args = OnlineDPOConfig(
        **trainer_arguments(config, ctx, checkpoint_dir),
        beta=config.beta,  # a bare float: OnlineDPO's list-of-beta schedule indexes a list with a float epoch
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=0,  # no top-k cut: only temperature and top_p shape the samples
        max_new_tokens=config.max_new_tokens,
        loss_type="sigmoid",
    )
    train = Dataset.from_dict({"prompt": config.pool_prompts(ctx.data, config.train_prompts)})  # prompts only
    # pi_base loaded explicitly (None under LoRA: the adapter-free policy), not OnlineDPO's copy of the policy,
    # which would be a second fp32 copy of the master weights
    return XPOTrainer(model=model, ref_model=reference_model(ctx, ctx.base), reward_funcs=SelfReward(config.self_reward),
                      args=args, train_dataset=train,
                      processing_class=tokenizer, alpha=config.alpha, peft_config=peft_config(ctx))


@registry.algorithms.register("xpo", XPOConfig, label_free=True)
def run(ctx: AlgorithmContext) -> ModelHandle:
    return train_in_stage(ctx, "xpo", ctx.stage_spec(),
                          lambda checkpoint_dir: make_xpo_trainer(ctx, ctx.config, checkpoint_dir), code=__name__)
