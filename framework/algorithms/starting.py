"""The context every algorithm plugin starts from, prepared the same way for all of them by the launcher,
and the control of the method that ran in it.

A module of its own so that the stage code fingerprints of the methods (framework/stages.py) do not
all include the SFT warm start: only the launcher imports this. It imports no method plugin: the SFT
warm start and the controls train with the shared SFT block (sft_stage.py).
"""
from __future__ import annotations

import logging
from dataclasses import fields, replace
from typing import Callable

from framework.algorithms import AlgorithmContext
from framework.config import TrainingConfig, trl_config_fields
from framework.errors import ConfigError
from framework.models import ModelHandle

log = logging.getLogger(__name__)


def starting_context(ctx: AlgorithmContext, algorithm: Callable) -> AlgorithmContext:
    """The context an algorithm plugin runs with, the same way for every plugin.

    - `starting_point: sft` in the plugin's config: `ctx.base` becomes the default SFT model (the
      `algorithm=sft` stage, trained on the labelled split once and then reused).
    - a plugin registered with `label_free=True` gets data without gold answers or demonstrations.
    """
    if getattr(ctx.config, "starting_point", "base") == "sft":
        from framework.algorithms.sft_stage import default_sft_model

        ctx = replace(ctx, base=default_sft_model(ctx), initial=ctx.built)
    if algorithm.label_free:
        # the method sees prompts only; its control (train_control) trains on the gold demonstrations
        ctx = replace(ctx, data=ctx.data.without_labels(), control_data=ctx.data)
    return ctx


def train_control(ctx: AlgorithmContext) -> tuple[ModelHandle, ModelHandle] | None:
    """The control of the method that just ran in `ctx` (evaluation.control_decoders): SFT on the gold
    demonstrations from the model the method's last training stage started from, for as many optimizer steps,
    with its batch (sequences here, where XPO counts prompts), learning rate, schedule, warmup, weight decay
    and clipping. It separates what the method's data does from what more optimizer steps on the same model do.
    It is an `sft` stage keyed like `algorithm=sft`'s: a method that trains from the model as built with SFT's
    own keys and steps (SOC) has the SFT model itself as its control, reused, not trained twice; RFT, which
    trains from the model as built with its own steps, gets SFT from the base for as many steps.
    Returns (control model, the model it started from); None when the method trained nothing of its own."""
    from framework.algorithms.sft_stage import SFTAlgorithmConfig, sft_model

    own = [stage for stage in ctx.trained if stage["kind"] == ctx.config.name]
    if not own:  # algorithm=none, sft, or on_empty=skip_training
        return None
    start, steps, training = own[-1]["start"], own[-1]["steps"], own[-1]["training"]
    data = ctx.control_data or ctx.data
    if "completion" not in data.train.column_names:
        raise ConfigError("evaluation.control_decoders: a control trains on the gold demonstrations, and the "
                          "training split has none")
    keys = {item.name: getattr(training, item.name) for item in fields(TrainingConfig)}
    # of the method's other trainer fields, those SFT has too (its optimizer: RMSprop for the Self-Explore DPO)
    sft_fields = trl_config_fields(SFTAlgorithmConfig.TRL_CONFIG)
    keys["trainer"] = {key: value for key, value in keys["trainer"].items() if key in sft_fields}
    config = SFTAlgorithmConfig(**{**keys, "max_steps": max(int(steps), 1)})
    log.info("control of %s: SFT on the demonstrations for %d steps from %s", ctx.config.name, steps, start.path)
    return sft_model(replace(ctx, config=config, base=start, data=data, trained=[])), start
