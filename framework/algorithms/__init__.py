"""Algorithm plugins and what the launcher hands them.

An algorithm is a function `run(ctx: AlgorithmContext) -> ModelHandle` registered with
`@registry.algorithms.register(name, SchemaClass)`: it receives the starting model, the data and
the stage store, runs its stages in order, and returns the model to evaluate. It never sees the
global config, only its own node (`ctx.config`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable

from framework.config import ModelConfig
from framework.data.loaders import TaskData
from framework.models import ModelHandle, Runtime
from framework.stages import StageStore


@dataclass
class AlgorithmContext:
    config: Any  # this algorithm's schema object
    base: ModelHandle  # the model the method starts from
    data: TaskData  # train/test splits; train rows carry `gold_answer` (label-free methods must drop it)
    stages: StageStore
    runtime: Runtime
    seed: int
    report_to: str  # "wandb" or "none", passed to TrainingArguments
    output_dir: Path  # this job's own directory
    log: Callable[[dict], None] = lambda metrics: None  # extra metrics to the tracker
    model_config: ModelConfig = field(default_factory=ModelConfig)  # model-wide options: LoRA, checkpointing, attention

    def stage_spec(self, **extra) -> dict:
        """What determines a stage's output: the method's config, its starting model, its data, the seed."""
        config = asdict(self.config) if is_dataclass(self.config) else dict(self.config)
        return {"algorithm": config, "base": self.base.fingerprint, "data": self.data.fingerprint,
                "seed": self.seed, **extra}


def starting_context(ctx: AlgorithmContext, algorithm: Callable) -> AlgorithmContext:
    """The context an algorithm plugin runs with, the same way for every plugin.

    - `starting_point: sft` in the plugin's config: `ctx.base` becomes the default SFT model (the
      `algorithm=sft` stage, trained on the labelled split once and then reused).
    - a plugin registered with `label_free=True` gets data without gold answers or demonstrations.
    """
    if getattr(ctx.config, "starting_point", "base") == "sft":
        from framework.algorithms.sft import default_sft_model

        ctx = replace(ctx, base=default_sft_model(ctx))
    if getattr(algorithm, "label_free", False):
        ctx = replace(ctx, data=ctx.data.without_labels())
    return ctx
