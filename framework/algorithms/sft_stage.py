"""Supervised fine-tuning as a shared block: the SFT trainer and the `sft` stage.

    make_sft_trainer    TRL's SFTTrainer (completion-only loss) from a model on (prompt, completion) rows:
                        SFT, SOC (a subclass), BoN-SFT, RFT and every method's control train with it
    sft_model           the `sft` stage: SFT on the demonstrations with a method's keys (algorithm=sft's run)
    default_sft_model   the model `starting_point: sft` starts from: the same stage and key as an
                        `algorithm=sft` job with equal keys, so a sweep trains it once

A block of its own, not algorithms/sft.py, so that the launcher (starting.py) and the methods that train
with SFTTrainer depend on this block and not on the `sft` plugin.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from framework.algorithms import AlgorithmContext
from framework.algorithms.training import peft_config, train_in_stage, trainable_model, trainer_arguments
from framework.config import AlgorithmConfig, TrainingConfig
from framework.models import ModelHandle


@dataclass
class SFTAlgorithmConfig(TrainingConfig, AlgorithmConfig):
    name: str = "sft"


def make_sft_trainer(ctx: AlgorithmContext, config: TrainingConfig, checkpoint_dir: str, trainer_class=SFTTrainer,
                     train: Dataset | None = None, start: ModelHandle | None = None):
    """SFTTrainer from `start` (default `ctx.base`) on (prompt, completion) rows: the demonstrations unless
    `train` is given."""
    start = start or ctx.base
    tokenizer = start.load_tokenizer()
    model = trainable_model(ctx, start)
    args = SFTConfig(**trainer_arguments(config, ctx, checkpoint_dir), completion_only_loss=True)
    train = (ctx.data.train if train is None else train).select_columns(["prompt", "completion"])
    return trainer_class(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                         peft_config=peft_config(ctx))


def sft_model(ctx: AlgorithmContext) -> ModelHandle:
    """SFT from `ctx.base` on the demonstrations of `ctx.data` with the keys `ctx.config` (stage `sft`)."""
    return train_in_stage(ctx, "sft", ctx.stage_spec(),
                          lambda checkpoint_dir: make_sft_trainer(ctx, ctx.config, checkpoint_dir), code=__name__)


def default_sft_model(ctx: AlgorithmContext) -> ModelHandle:
    """SFT from `ctx.base` on `ctx.data` with the method's `sft` keys (default: algorithm=sft's defaults):
    the same stage key as an `algorithm=sft` job with equal keys (conf/algorithm/sft.yaml equals the
    defaults, checked by a test), so a sweep trains it once."""
    keys = getattr(ctx.config, "sft", None)
    config = SFTAlgorithmConfig(**asdict(keys)) if keys is not None else SFTAlgorithmConfig()
    return sft_model(replace(ctx, config=config))
