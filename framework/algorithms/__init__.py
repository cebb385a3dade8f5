"""Algorithm plugins and what the launcher hands them.

An algorithm is a function `run(ctx: AlgorithmContext) -> ModelHandle` registered with
`@registry.algorithms.register(name, SchemaClass)`: it receives the starting model, the data and
the stage store, runs its stages in order, and returns the model to evaluate. It never sees the
global config, only its own node (`ctx.config`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from framework.config import ModelConfig
from framework.models import ModelHandle, Runtime
from framework.stages import StageStore

if TYPE_CHECKING:  # a type only: stage code fingerprints do not follow it into every dataset loader
    from framework.data.loaders import TaskData


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
    initial: ModelHandle | None = None  # the model as `model=` builds it, when `base` is a warm start on top of it
    engine: Any = None  # the run's generation engine config (engine=); None: transformers with its defaults
    control_data: TaskData | None = None  # label-free methods: the labelled data, for their control's SFT only
    trained: list = field(default_factory=list)  # every training stage this job ran or reused, in order (train_in_stage)
    artifacts: dict = field(default_factory=dict)  # the training data a method built, for framework/premises.py

    @property
    def built(self) -> ModelHandle:
        """The model as `model=` builds it (before any SFT warm start): what RFT trains in the authors' scripts."""
        return self.initial or self.base

    def stage_spec(self, **extra) -> dict:
        """What determines a stage's output: the method's config, its starting model, its data, the seed."""
        config = asdict(self.config) if is_dataclass(self.config) else dict(self.config)
        return {"algorithm": config, "base": self.base.fingerprint, "data": self.data.fingerprint,
                "seed": self.seed, **extra}
