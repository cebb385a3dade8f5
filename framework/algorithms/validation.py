"""Evaluation during training (`evaluation.during_training`): greedy accuracy on the validation split every N
optimizer steps and/or at each epoch's end, and the checkpoint that scored best kept beside the last one.

    ValidationEvaluator   built by the launcher from the labelled validation split (dataset.validation_size): the
                          first `max_problems` prompts, the answer checker, the generation length; `spec()` is what
                          it adds to a training stage's key (nothing is added when it is off)
    ValidationCallback    a transformers `TrainerCallback` that training.train_in_stage adds to every trainer: it
                          decodes the validation prompts greedily with the framework's own engine
                          (generation.TransformersEngine, batched) on the in-memory model, adds `validation_accuracy`
                          to the trainer's log_history (restored on resume, kept in the stage's record, replayed to
                          W&B as a curve against the optimizer step, train/<stage kind>/validation_accuracy), and
                          saves the model whenever it beats every earlier point (ties keep the earlier step)

Evaluating does not change training: greedy decoding draws no random numbers and runs under
`torch.random.fork_rng` all the same, the model goes back to the mode it was in, and the engine never compiles the
training model. The curve is scored in the trainer's dtype (fp32 master weights), the test evaluation in the run's
(bf16 on a GPU), so on a GPU the two can differ by rounding. The vLLM engine keeps its own copy of the weights: the
curve always uses the transformers engine, whatever `engine=` says.

The trainer's own evaluation loop computes a loss, not generations (TRL's trainers have no generating evaluate),
and its best-model bookkeeping follows that loop: hence this callback.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from framework.config import DuringTrainingConfig, EngineConfig
from framework.stages import code_fingerprint

log = logging.getLogger(__name__)

BEST_DIR = "best_on_validation"  # in the stage's checkpoints/ while training, then in its output/
STEP_FILE = "step.json"  # beside the kept weights: the step and validation accuracy they scored


class ValidationEvaluator:
    """Scores a model's greedy outputs on the first `config.max_problems` validation problems."""

    def __init__(self, config: DuringTrainingConfig, validation, checker, max_new_tokens: int,
                 stop: tuple[str, ...] = (), engine: EngineConfig | None = None, data_fingerprint: dict | None = None):
        rows = validation if config.max_problems is None else validation.select(
            range(min(config.max_problems, len(validation))))
        self.config, self.checker, self.max_new_tokens, self.stop = config, checker, max_new_tokens, tuple(stop)
        self.prompts, self.golds = list(rows["prompt"]), list(rows["gold_answer"])
        self.engine = engine
        self.data_fingerprint = data_fingerprint or {}

    def spec(self) -> dict:
        """What the curve and the kept checkpoint depend on beyond the training itself: a training stage's spec
        holds it when evaluation during training is on (and nothing new when off: keys stay as they were)."""
        return {**asdict(self.config), "problems": len(self.prompts), "max_new_tokens": self.max_new_tokens,
                "stop": list(self.stop), "data": self.data_fingerprint, "code": code_fingerprint(__name__)}

    def accuracy(self, model, tokenizer) -> float:
        """Greedy accuracy of `model` (in memory, as it is now) on the validation prompts; no RNG consumed, the
        model's train/eval mode restored."""
        from framework.generation import Request, TransformersEngine, TransformersEngineConfig

        # the transformers engine's batching keys, never torch.compile on the model being trained
        config = self.engine if self.engine is not None and self.engine.name == "transformers" \
            else TransformersEngineConfig()
        config = replace(config, compile=False)
        if hasattr(model, "get_base_model"):  # peft: the adapters are injected into the base model's layers
            model = model.get_base_model()
        was_training = model.training
        devices = [model.device] if model.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                engine = TransformersEngine(model, tokenizer, config)
                outputs = engine.generate(self.prompts, Request(max_new_tokens=self.max_new_tokens, stop=self.stop),
                                          seed=0, progress=False)
        finally:
            model.train(was_training)
        correct = [self.checker.check(candidates[0].text, gold).correct for candidates, gold in
                   zip(outputs, self.golds)]
        return sum(correct) / max(len(correct), 1)

    def callback(self, trainer, checkpoint_dir: Path) -> "ValidationCallback":
        return ValidationCallback(self, trainer, Path(checkpoint_dir) / BEST_DIR)

    def finish(self, log_history: list[dict], checkpoint_dir: Path, output: Path) -> dict | None:
        return finish(log_history, checkpoint_dir, output)


def validation_points(log_history: list[dict]) -> list[dict]:
    """The curve's points in a trainer's log_history: {"step", "validation_accuracy", ...} in step order."""
    return [entry for entry in log_history if "validation_accuracy" in entry]


def best_point(log_history: list[dict]) -> dict | None:
    """The point that scored best (the earliest of equals), or None without any."""
    best = None
    for entry in validation_points(log_history):
        if best is None or entry["validation_accuracy"] > best["validation_accuracy"]:
            best = entry
    return best


class ValidationCallback(TrainerCallback):
    """Scores the model at the configured steps, at each epoch's end when asked, and after the last step."""

    def __init__(self, evaluator: ValidationEvaluator, trainer, best_dir: Path):
        self.evaluator, self.trainer, self.best_dir = evaluator, trainer, best_dir

    def on_train_begin(self, args, state, control, **kwargs):
        # resumed from checkpoint-<step>: the kept weights are the ones that checkpoint holds (on_save), the best of
        # the log_history it restored; a best kept after it was saved belongs to points the rerun scores again
        shutil.rmtree(self.best_dir, ignore_errors=True)
        saved = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}" / BEST_DIR
        if state.global_step > 0 and saved.is_dir():
            _link_tree(saved, self.best_dir)

    def on_save(self, args, state, control, **kwargs):
        # the trainer has written checkpoint-<step>: the best so far goes with it, so that a resume from it has
        # the weights of the best point in the log_history it restores (hard links: kept files are never rewritten)
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if self.best_dir.is_dir() and checkpoint.is_dir():
            _link_tree(self.best_dir, checkpoint / BEST_DIR)

    def on_step_end(self, args, state, control, **kwargs):
        every = self.evaluator.config.every_steps
        if every is not None and state.global_step % every == 0:
            self._score(state)

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.evaluator.config.each_epoch:
            self._score(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._score(state)  # the last model is always a point of the curve (and a candidate for the best)

    def _score(self, state) -> None:
        if any(entry["step"] == state.global_step for entry in validation_points(state.log_history)):
            return  # this step is scored already (an epoch's end on a multiple of every_steps, the last step)
        before = best_point(state.log_history)
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        accuracy = self.evaluator.accuracy(model, self.trainer.processing_class)
        log.info("step %d: validation accuracy %.3f on %d problems", state.global_step, accuracy,
                 len(self.evaluator.prompts))
        # into log_history as Trainer.log would put it, but not through it: TRL's trainers override `log` to flush
        # their own running means (entropy, token accuracy) into whatever is logged, which would move them off
        # the training-loss entries of a run without evaluation
        state.log_history.append({"validation_accuracy": accuracy, "validation_problems": len(self.evaluator.prompts),
                                  "epoch": state.epoch, "step": state.global_step})
        if before is None or accuracy > before["validation_accuracy"]:
            self._keep(state.global_step, accuracy)

    def _keep(self, step: int, accuracy: float) -> None:
        """Save the model as the best so far: written beside, then swapped in, so a kill leaves one whole copy."""
        partial = self.best_dir.with_name(self.best_dir.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        self.trainer.save_model(str(partial))  # weights (a peft model: its adapter) and the tokenizer
        (partial / STEP_FILE).write_text(json.dumps({"step": step, "validation_accuracy": accuracy}))
        shutil.rmtree(self.best_dir, ignore_errors=True)
        partial.rename(self.best_dir)


def _link_tree(source: Path, target: Path) -> None:
    """`target` becomes a copy of `source` made of hard links (a copy where links fail), written beside and renamed."""
    import os

    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, partial, copy_function=link)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def finish(log_history: list[dict], checkpoint_dir: Path, output: Path) -> dict | None:
    """After training: move the kept weights into the stage's output (unless the last model is the best, which the
    output itself is) and return the stage record's `best_on_validation`: the best point's step and accuracy, the
    last point's, and `checkpoint` (the kept weights' directory inside the output; None: the output itself)."""
    points = validation_points(log_history)
    kept = Path(checkpoint_dir) / BEST_DIR
    best = best_point(log_history)
    if best is None:
        return None
    record = {"step": best["step"], "validation_accuracy": best["validation_accuracy"],
              "last_step": points[-1]["step"], "last_validation_accuracy": points[-1]["validation_accuracy"],
              "points": len(points), "checkpoint": None}
    if best["step"] == points[-1]["step"]:
        shutil.rmtree(kept, ignore_errors=True)
    else:
        shutil.move(str(kept), str(Path(output) / BEST_DIR))
        record["checkpoint"] = BEST_DIR
    return record
