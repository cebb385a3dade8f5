"""What every training method shares: TRL arguments from the common keys, and a resumable stage.

`train_in_stage` runs a trainer whose checkpoints live in the stage directory, so re-running an
interrupted command resumes from the last checkpoint (optimizer, scheduler and RNG state included)
and a finished stage is reused by any later run with the same spec.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from transformers import TrainingArguments

from framework import console
from framework.algorithms import AlgorithmContext
from framework.checkpoints import last_complete_checkpoint  # noqa: F401  (also this module's, as before)
from framework.config import TrainingConfig
from framework.models import ModelHandle

log = logging.getLogger(__name__)


# transformers >= 5.x renamed gradient_checkpointing (kept as a deprecated alias that warns when set)
CHECKPOINTING_KEY = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                     else "gradient_checkpointing")


def trainer_arguments(config: TrainingConfig, ctx: AlgorithmContext, checkpoint_dir: str) -> dict:
    """Keyword arguments for any TRL config class (SFTConfig, DPOConfig, ...): the framework's own keys,
    the run's precision, and `config.trainer` (e.g. optim, lr_scheduler_kwargs, bf16) on top."""
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
        CHECKPOINTING_KEY: ctx.model_config.gradient_checkpointing,  # TRL's default is on; ours is off
        "max_length": config.max_length,
        "logging_steps": config.logging_steps,
        "logging_first_step": True,  # the first step's loss: where the report's "first loss" starts
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": config.save_total_limit,
        "seed": ctx.seed,
        "data_seed": ctx.seed,
        "report_to": ctx.report_to,
        "dataloader_num_workers": 0,
        **ctx.runtime.trainer_kwargs(),
        **config.trainer,  # any other field of the TRL config class, checked against it at validation
    }


def peft_config(ctx: AlgorithmContext):
    """The `peft.LoraConfig` every trainer gets when `model.lora.enabled`, else None (full fine-tuning)."""
    lora = ctx.model_config.lora
    if not lora.enabled:
        return None
    from peft import LoraConfig

    modules = list(lora.target_modules)
    return LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type="CAUSAL_LM",
                      target_modules=modules[0] if modules == ["all-linear"] else modules)


def trainable_model(ctx: AlgorithmContext, start: ModelHandle):
    """`start` loaded to be trained: fp32 master weights for full fine-tuning under bf16/fp16 autocast, the run's
    dtype under LoRA (Runtime.training_dtype)."""
    return start.load_model(ctx.runtime, ctx.runtime.training_dtype(adapters=ctx.model_config.lora.enabled))


def reference_model(ctx: AlgorithmContext, start: ModelHandle, precompute: bool = False):
    """The frozen reference of a DPO-style trainer: a second copy of `start`; or None, one model in memory
    instead of two, under LoRA (TRL scores the reference with the adapter switched off) and with
    `precompute` (TRL scores every pair with the starting model once, before training, and keeps the numbers).
    It is loaded in the run's dtype (bf16 on a GPU): it takes no update, so it needs no fp32 master copy; under
    autocast it computes what the fp32 policy computes at step 0 except for the bf16 rounding of the norm and
    embedding weights, which autocast leaves in fp32."""
    if ctx.model_config.lora.enabled or precompute:
        return None
    return start.load_model(ctx.runtime).requires_grad_(False).eval()  # frozen: no gradient is ever kept for it


def train_in_stage(ctx: AlgorithmContext, kind: str, spec: dict, make_trainer: Callable[[str], object], *,
                   code: str | tuple[str, ...], start: ModelHandle | None = None,
                   metadata: dict | None = None, training: TrainingConfig | None = None) -> ModelHandle:
    """Run `make_trainer(checkpoint_dir).train()` once per spec, resuming, and store the trained model.

    `start` is the model the trainer starts from (default `ctx.base`); an adapter-only LoRA stage is
    loaded on top of it later. `code`: the module(s) whose code computes the model (the method's module;
    framework/stages.py fingerprints their import closure into the key). `metadata` (what the training data
    kept and dropped, say) goes into the stage's record beside the trainer's own. `training`: the keys this
    stage trains with (default `ctx.config`), which the method's control (`train_control`) copies."""
    start = start or ctx.base
    if (lora := ctx.model_config.lora.spec()) is not None:
        spec = {**spec, "lora": lora}  # absent when off, so full fine-tuning keys do not change
    # evaluation.during_training (algorithms/validation.py, reached through the context so that its code joins the
    # keys of the stages it scores only): the curve and the kept checkpoint are part of the stage; absent when off
    validation = ctx.during_training
    if validation is not None:
        spec = {**spec, "during_training": validation.spec()}
    with ctx.stages.open(kind, spec, collective=True, code=code) as stage:  # every process trains (DDP/DeepSpeed/FSDP)
        if stage.done:
            log.info("reusing %s model %s (stages.reuse=false retrains)", kind, stage.output)
        else:
            trainer = make_trainer(str(stage.checkpoints))
            console.stage_progress(trainer, f"train {kind}")
            if validation is not None:
                trainer.add_callback(validation.callback(trainer, stage.checkpoints))
            last = last_complete_checkpoint(stage.checkpoints)
            if last:
                log.info("resuming %s from %s", kind, last)
            else:
                log.info("training %s in %s", kind, stage.dir)
            with console.tied_weights_not_missing(trainer.model):
                result = trainer.train(resume_from_checkpoint=last)
            output = stage.new_output_dir()
            save_trained_model(trainer, output, ctx.model_config.lora.checkpoint)
            if validation is not None:  # the best-on-validation weights move into the output, or are the output
                best = validation.finish(trainer.state.log_history, stage.checkpoints, output)
                metadata = {**(metadata or {}), "best_on_validation": best}
            # TRL's SFT/DPO trainers (and SOC, XPO here) count non-padding tokens; since the last resume
            tokens = getattr(trainer, "_total_train_tokens", None)
            # log_history: the trainer's logged steps (loss, learning rate, ...; restored on resume), so that a job
            # reusing this model can show its training curve and the report its first and last loss
            stage.commit({**(metadata or {}), "global_step": result.global_step, "train_metrics": result.metrics,
                          "log_history": trainer.state.log_history,
                          "budget": training_budget(trainer, result.global_step, training or ctx.config),
                          "compute": {"train_tokens": tokens, "train_seconds": result.metrics.get("train_runtime")}})
    adapter_only = lora is not None and ctx.model_config.lora.checkpoint == "adapter"
    trained = ModelHandle(str(stage.output), {"stage": kind, "key": stage.key}, ctx.model_config.load_options(),
                          adapter_base=start if adapter_only else None)
    # what the method's control copies (starting.train_control): the stage's start, steps and keys; and the
    # checkpoint that scored best on validation (evaluation.during_training), which the launcher evaluates too
    ctx.trained.append({"kind": kind, "start": start, "steps": stage.metadata()["global_step"],
                        "training": training or ctx.config, "key": stage.key,
                        "best_on_validation": best_on_validation(stage, trained, start, adapter_only)})
    return trained


def best_on_validation(stage, trained: ModelHandle, start: ModelHandle, adapter_only: bool) -> dict | None:
    """The stage record's `best_on_validation` with `model`: the handle of the kept checkpoint (the trained model
    itself when the last point scored best). None when the stage was trained without evaluation during training."""
    best = stage.metadata().get("best_on_validation")
    if not best:
        return None
    if best["checkpoint"] is None:
        return {**best, "model": trained}
    # a peft model's kept checkpoint is its adapter alone, whatever model.lora.checkpoint says of the final one
    adapter = stage.output / best["checkpoint"] / "adapter_config.json"
    model = ModelHandle(str(stage.output / best["checkpoint"]),
                        {**trained.fingerprint, "checkpoint": best["checkpoint"], "step": best["step"]},
                        trained.load_kwargs, adapter_base=start if adapter.is_file() or adapter_only else None)
    return {**best, "model": model}


def training_budget(trainer, steps: int, keys: TrainingConfig) -> dict:
    """What a training stage got, for the report's budget columns and its undertrained flag: optimizer steps,
    sequences (or pairs, or prompts) per step and in all, epochs, warmup steps, learning rate, the first and last
    logged training loss, and the loss's kind (`preference`: a DPO-style sigmoid loss, which starts at ln 2)."""
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    batch = keys.per_device_train_batch_size * keys.gradient_accumulation_steps * trainer.args.world_size
    return {"steps": steps, "global_batch": batch, "examples": steps * batch, "epochs": trainer.state.epoch,
            "warmup_steps": trainer.args.get_warmup_steps(trainer.state.max_steps),
            "learning_rate": keys.learning_rate, "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "loss_kind": "dpo_sigmoid" if _starts_at_ln2(trainer) else type(trainer).__name__}


def _starts_at_ln2(trainer) -> bool:
    """A DPO-style sigmoid loss, which is ln 2 while the policy equals its reference (and stays there if nothing
    moved): DPOTrainer's own sigmoid loss, and XPO's (its alpha term is ~1e-4 beside it)."""
    from trl import DPOTrainer

    if type(trainer).__name__ == "XPOTrainer":
        return True
    return (isinstance(trainer, DPOTrainer) and type(trainer).compute_loss is DPOTrainer.compute_loss
            and list(trainer.args.loss_type) == ["sigmoid"])


def save_trained_model(trainer, output: Path, lora_checkpoint: str) -> None:
    """Full weights (LoRA folded in when `merged`), or the adapter alone; the tokenizer beside them.

    `trainer.save_model` runs on every rank (it gathers sharded DeepSpeed/FSDP weights and writes on the
    main process); the LoRA merge is a local operation on the main process's full copy."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    main = trainer.accelerator.is_main_process
    if hasattr(model, "merge_and_unload") and lora_checkpoint == "merged":
        if main:
            model.merge_and_unload().save_pretrained(str(output))  # merges in place: training is over
    else:
        trainer.save_model(str(output))  # a PeftModel saves its adapter only
    if main:
        trainer.processing_class.save_pretrained(str(output))
