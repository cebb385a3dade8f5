"""What every training method shares: TRL arguments from the common keys, and a resumable stage.

`train_in_stage` runs a trainer whose checkpoints live in the stage directory, so re-running an
interrupted command resumes from the last checkpoint (optimizer, scheduler and RNG state included)
and a finished stage is reused by any later run with the same spec.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Callable

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from framework.algorithms import AlgorithmContext
from framework.config import TrainingConfig
from framework.models import ModelHandle

log = logging.getLogger(__name__)


def trainer_arguments(config: TrainingConfig, ctx: AlgorithmContext, checkpoint_dir: str) -> dict:
    """Keyword arguments for any TRL config class (SFTConfig, DPOConfig, ...)."""
    return {
        "output_dir": checkpoint_dir,
        "learning_rate": config.learning_rate,
        "max_steps": config.max_steps,
        "num_train_epochs": config.num_train_epochs,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "lr_scheduler_type": config.lr_scheduler_type,
        "warmup_steps": config.warmup_ratio,  # transformers 5 takes a ratio here when the value is < 1
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "gradient_checkpointing": config.gradient_checkpointing,  # TRL turns it on by default; we do not
        "max_length": config.max_length,
        "logging_steps": config.logging_steps,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": config.save_total_limit,
        "seed": ctx.seed,
        "data_seed": ctx.seed,
        "report_to": ctx.report_to,
        "dataloader_num_workers": 0,
        **ctx.runtime.trainer_kwargs(),
    }


def last_complete_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest `checkpoint-<step>` that was fully written, after deleting newer partial ones.

    A kill during a save leaves a directory without `trainer_state.json` (the Trainer writes it
    last), and resuming from it fails; transformers' `get_last_checkpoint` does not check this.
    """
    if not checkpoint_dir.is_dir():
        return None
    steps = {int(m.group(1)): path for path in checkpoint_dir.iterdir()
             if path.is_dir() and (m := re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", path.name))}
    for step in sorted(steps, reverse=True):
        path = steps[step]
        try:
            json.loads((path / TRAINER_STATE_NAME).read_text())
            return str(path)
        except (OSError, ValueError):
            log.warning("removing incomplete checkpoint %s (interrupted while saving)", path)
            shutil.rmtree(path, ignore_errors=True)
    return None


def train_in_stage(ctx: AlgorithmContext, kind: str, spec: dict, make_trainer: Callable[[str], object]) -> ModelHandle:
    """Run `make_trainer(checkpoint_dir).train()` once per spec, resuming, and store the trained model."""
    with ctx.stages.open(kind, spec) as stage:
        if stage.done:
            log.info("reusing %s model %s (stages.reuse=false retrains)", kind, stage.output)
        else:
            trainer = make_trainer(str(stage.checkpoints))
            last = last_complete_checkpoint(stage.checkpoints)
            if last:
                log.info("resuming %s from %s", kind, last)
            result = trainer.train(resume_from_checkpoint=last)
            output = stage.new_output_dir()
            trainer.save_model(str(output))
            trainer.processing_class.save_pretrained(str(output))
            stage.commit({"global_step": result.global_step, "train_metrics": result.metrics})
    return ModelHandle(str(stage.output), {"stage": kind, "key": stage.key})
