"""`algorithm=sft`: supervised fine-tuning on the demonstrations, loss on completion tokens only.

    for each (prompt x, demonstration y) in the training split:
        minimise  - (1/|y|) sum_t log pi(y_t | x, y_<t)        (token mean over the batch)

TRL's SFTTrainer does all of it with prompt/completion data (`completion_only_loss=True`). The stage is
the shared `sft` block (sft_stage.py): the SFT warm start of other methods (`starting_point: sft`) is
this very stage, reused when the keys are equal.
"""
from framework import registry
from framework.algorithms import AlgorithmContext
from framework.algorithms.sft_stage import SFTAlgorithmConfig, sft_model
from framework.models import ModelHandle


@registry.algorithms.register("sft", SFTAlgorithmConfig)
def run(ctx: AlgorithmContext) -> ModelHandle:
    return sft_model(ctx)
