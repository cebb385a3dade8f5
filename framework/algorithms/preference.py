"""DPO on a fixed set of (prompt, chosen, rejected) pairs, with TRL's DPOTrainer: the one DPO helper
(`train_dpo`) behind algorithm=dpo (its pairs ranked by self-reward, its own loss as a DPOTrainer
subclass), outcome_dpo (outcome pairs) and self_explore (step-level pairs); and the Self-Explore
family's DPO keys (`PreferenceTrainingConfig`).

    policy pi = start, reference = a frozen copy of start
    minimise over the pairs  -log sigmoid(beta * ((log pi - log pi_ref)(y+) - (log pi - log pi_ref)(y-)))

One rule of the authors' scripts TRL does not have: EOS is appended to the chosen side only. TRL appends
it to both; a rejected step is a partial text, and with an EOS after it DPO can widen the margin by
lowering "EOS after a line" instead of learning the step (measured on the embedded task: the EOS was
77% of a rejected step's log-prob). `RejectedWithoutEOS` is TRL's own preference collator with that EOS
taken off every rejected row, so training and the precomputed reference see the same tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from datasets import Dataset
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from framework.algorithms import AlgorithmContext
from framework.algorithms.training import (peft_config, reference_model, train_in_stage, trainable_model,
                                          trainer_arguments)
from framework.config import TrainingConfig, require
from framework.models import ModelHandle


@dataclass
class PreferenceTrainingConfig(TrainingConfig):
    """DPO's keys on top of the training keys: the Self-Explore scripts' DPO (lr 1e-6, 3 epochs, RMSprop,
    linear with 10% warmup, global batch 32 = 4 x 8 accumulation; their max length 384 for GSM8K, 1024 for
    MATH; 1024 here). Mistral-7B used lr 1e-7."""

    TRL_CONFIG: ClassVar[str] = "trl:DPOConfig"
    beta: float = 0.1  # DPO sigmoid temperature (Self-Explore paper: 0.1)
    rejected_eos: bool = False  # false: EOS after the chosen side only (the scripts'); true: both sides (TRL's)
    # true: the reference's log-probs of every pair are computed once before training (TRL) instead of a second
    # model held in memory for the whole run: one model's memory less, one extra pass over the pairs
    precompute_ref_log_probs: bool = False
    learning_rate: float = 1e-6
    num_train_epochs: float = 3.0
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 8
    warmup_ratio: float = 0.1
    trainer: dict[str, Any] = field(default_factory=lambda: {"optim": "rmsprop"})  # the scripts' optimizer

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(math.isfinite(self.beta) and self.beta > 0, f"{prefix}.beta", "must be > 0", self.beta)

    def preference_keys(self) -> dict:
        return {item.name: getattr(self, item.name) for item in fields(PreferenceTrainingConfig)}


@dataclass
class RejectedWithoutEOS(DataCollatorForPreference):
    """TRL's preference collator, with the EOS TRL appended to each rejected side removed first."""

    eos_token_id: int | None = None

    def torch_call(self, examples):
        trimmed = [{**example, "rejected_ids": example["rejected_ids"][:-1]}
                   if example["rejected_ids"] and example["rejected_ids"][-1] == self.eos_token_id else example
                   for example in examples]
        return super().torch_call(trimmed)


def train_dpo(ctx: AlgorithmContext, kind: str, spec: dict, start: ModelHandle, pairs: list[dict],
              config: TrainingConfig, *, code: str, rejected_eos: bool = True, trainer_class: type = DPOTrainer,
              metadata: dict | None = None) -> ModelHandle:
    """DPO from `start` against a frozen copy of `start` (policy = reference = start) on the (prompt, chosen,
    rejected) of `pairs`, in stage `kind` keyed by `spec` (it must determine the pairs: their stage key, say).

    `config`: the training keys plus `beta` and `precompute_ref_log_probs`. `rejected_eos=False`: no EOS after
    a rejected side (the Self-Explore scripts'); true: TRL's, after both. `trainer_class`: DPOTrainer (sigmoid)
    or a subclass with the method's own loss. `code`: the method's module (train_in_stage)."""
    train = Dataset.from_list([{key: pair[key] for key in ("prompt", "chosen", "rejected")} for pair in pairs])

    def make_trainer(checkpoint_dir: str):
        args = DPOConfig(**trainer_arguments(config, ctx, checkpoint_dir), beta=config.beta, loss_type=["sigmoid"],
                         precompute_ref_log_probs=config.precompute_ref_log_probs)
        tokenizer = start.load_tokenizer()
        collator = None
        if not rejected_eos:
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            collator = RejectedWithoutEOS(pad_token_id=pad, max_length=args.max_length,
                                          truncation_mode=args.truncation_mode,
                                          pad_to_multiple_of=args.pad_to_multiple_of,
                                          eos_token_id=tokenizer.eos_token_id)
        # the reference is the starting model, loaded explicitly rather than guessed from a config path
        return trainer_class(model=trainable_model(ctx, start),
                             ref_model=reference_model(ctx, start, config.precompute_ref_log_probs), args=args,
                             data_collator=collator, train_dataset=train, processing_class=tokenizer,
                             peft_config=peft_config(ctx))

    return train_in_stage(ctx, kind, spec, make_trainer, code=code, start=start, metadata=metadata)
