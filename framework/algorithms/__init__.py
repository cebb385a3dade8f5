"""Algorithm plugins and what the launcher hands them.

An algorithm is a function `run(ctx: AlgorithmContext) -> ModelHandle` registered with
`@registry.algorithms.register(name, SchemaClass)`: it receives the starting model, the data and
the stage store, runs its stages in order, and returns the model to evaluate. It never sees the
global config, only its own node (`ctx.config`).

A method module holds its paper's pseudocode and what is particular to it; the blocks it builds on:

    AlgorithmContext.stage_spec   what determines a stage's output (here)
    training.py      TRL arguments from the common keys, `train_in_stage` (a resumable, reused training stage)
    sft_stage.py     the SFT trainer and the `sft` stage (warm start, controls, SFT-trained methods)
    preference.py    `train_dpo`: DPO from a model against its frozen copy, on fixed pairs
    pipeline.py      JSONL data stages: `stored_records`, `generated_records` (sharded generation)
    sharpening.py    the label-free sampled set (`samples`) and its self-ranked pairs
    rationales.py    the Self-Explore family's rationale set, kept set and outcome pairs
    rft_stage.py     the `rft` stage on the kept correct rationales
    starting.py      the launcher's part: the SFT warm start, label stripping, the method's control
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from framework.config import ModelConfig
from framework.models import ModelHandle, Runtime
from framework.stages import StageStore

if TYPE_CHECKING:  # a type only: stage code fingerprints do not follow it into every dataset loader
    from framework.data.task import TaskData


@dataclass
class AlgorithmContext:
    config: Any  # this algorithm's schema object
    base: ModelHandle  # the model the method starts from
    data: TaskData  # train/test splits; train rows carry `gold_answer` (label-free methods must drop it)
    stages: StageStore
    runtime: Runtime
    seed: int
    report_to: str  # passed to TrainingArguments: "none" from every tracker (curves reach W&B from the stage records)
    output_dir: Path  # this job's own directory
    log: Callable[[dict], None] = lambda metrics: None  # extra metrics to the tracker
    model_config: ModelConfig = field(default_factory=ModelConfig)  # model-wide options: LoRA, checkpointing, attention
    initial: ModelHandle | None = None  # the model as `model=` builds it, when `base` is a warm start on top of it
    engine: Any = None  # the run's generation engine config (engine=); None: transformers with its defaults
    control_data: TaskData | None = None  # label-free methods: the labelled data, for their control's SFT only
    trained: list = field(default_factory=list)  # every training stage this job ran or reused, in order (train_in_stage)
    artifacts: dict = field(default_factory=dict)  # the training data a method built, for framework/premises.py
    # evaluation.during_training: the launcher's algorithms/validation.ValidationEvaluator, which train_in_stage adds to
    # every trainer; None: off
    during_training: Any = None

    @property
    def built(self) -> ModelHandle:
        """The model as `model=` builds it (before any SFT warm start): what RFT trains in the authors' scripts."""
        return self.initial or self.base

    def stage_spec(self, *, seeded: bool = True, **parts) -> dict:
        """What determines a stage's output, the one way every stage states it: each of `parts` by its name, a
        model or the data as its fingerprint, a config node as its fields, anything else (an upstream stage's
        key, a dict of keys) as it is; and the run's seed, unless the stage draws nothing at random
        (`seeded=False`). Without parts: a method's own training stage, its config, starting model and data."""
        parts = parts or {"algorithm": self.config, "base": self.base, "data": self.data}
        spec = {name: spec_value(value) for name, value in parts.items()}
        return {**spec, "seed": self.seed} if seeded else spec


def spec_value(value: Any) -> Any:
    """A part of a stage spec as the spec holds it (AlgorithmContext.stage_spec)."""
    if hasattr(value, "fingerprint"):  # a ModelHandle, TaskData: what determines the weights or the rows
        return value.fingerprint
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return dict(value) if isinstance(value, Mapping) else value
