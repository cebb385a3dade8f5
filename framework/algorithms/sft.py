"""`algorithm=sft`: supervised fine-tuning on the demonstrations, loss on completion tokens only.

    for each (prompt x, demonstration y) in the training split:
        minimise  - (1/|y|) sum_t log pi(y_t | x, y_<t)        (token mean over the batch)

TRL's SFTTrainer does all of it with prompt/completion data (`completion_only_loss=True`).
"""
from dataclasses import dataclass, replace

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from framework import registry
from framework.algorithms import AlgorithmContext
from framework.algorithms.training import train_in_stage, trainer_arguments
from framework.config import AlgorithmConfig, TrainingConfig
from framework.models import ModelHandle


@dataclass
class SFTAlgorithmConfig(TrainingConfig, AlgorithmConfig):
    name: str = "sft"


def make_sft_trainer(ctx: AlgorithmContext, config: TrainingConfig, checkpoint_dir: str, trainer_class=SFTTrainer,
                     train: Dataset | None = None):
    """SFTTrainer on (prompt, completion) rows: the demonstrations unless `train` is given."""
    tokenizer = ctx.base.load_tokenizer()
    model = ctx.base.load_model(ctx.runtime)
    args = SFTConfig(**trainer_arguments(config, ctx, checkpoint_dir), completion_only_loss=True)
    train = (ctx.data.train if train is None else train).select_columns(["prompt", "completion"])
    return trainer_class(model=model, args=args, train_dataset=train, processing_class=tokenizer)


@registry.algorithms.register("sft", SFTAlgorithmConfig)
def run(ctx: AlgorithmContext) -> ModelHandle:
    return train_in_stage(ctx, "sft", ctx.stage_spec(),
                          lambda checkpoint_dir: make_sft_trainer(ctx, ctx.config, checkpoint_dir))


def default_sft_model(ctx: AlgorithmContext) -> ModelHandle:
    """`algorithm=sft` with its default keys from `ctx.base` on `ctx.data`: the same stage key as an
    `algorithm=sft` job (conf/algorithm/sft.yaml equals these defaults, checked by a test)."""
    return run(replace(ctx, config=SFTAlgorithmConfig()))
