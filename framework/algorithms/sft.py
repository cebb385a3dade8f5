"""`algorithm=sft`: supervised fine-tuning on the demonstrations, loss on completion tokens only.

    for each (prompt x, demonstration y) in the training split:
        minimise  - (1/|y|) sum_t log pi(y_t | x, y_<t)        (token mean over the batch)

TRL's SFTTrainer does all of it with prompt/completion data (`completion_only_loss=True`).
"""
from dataclasses import asdict, dataclass, replace

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from framework import registry
from framework.algorithms import AlgorithmContext
from framework.algorithms.training import peft_config, train_in_stage, trainer_arguments
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
    model = start.load_model(ctx.runtime)
    args = SFTConfig(**trainer_arguments(config, ctx, checkpoint_dir), completion_only_loss=True)
    train = (ctx.data.train if train is None else train).select_columns(["prompt", "completion"])
    return trainer_class(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                         peft_config=peft_config(ctx))


@registry.algorithms.register("sft", SFTAlgorithmConfig)
def run(ctx: AlgorithmContext) -> ModelHandle:
    return train_in_stage(ctx, "sft", ctx.stage_spec(),
                          lambda checkpoint_dir: make_sft_trainer(ctx, ctx.config, checkpoint_dir), code=__name__)


def default_sft_model(ctx: AlgorithmContext) -> ModelHandle:
    """SFT from `ctx.base` on `ctx.data` with the method's `sft` keys (default: algorithm=sft's defaults):
    the same stage key as an `algorithm=sft` job with equal keys (conf/algorithm/sft.yaml equals the
    defaults, checked by a test), so a sweep trains it once."""
    keys = getattr(ctx.config, "sft", None)
    config = SFTAlgorithmConfig(**asdict(keys)) if keys is not None else SFTAlgorithmConfig()
    return run(replace(ctx, config=config))
