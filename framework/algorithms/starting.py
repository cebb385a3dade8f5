"""The context every algorithm plugin starts from, prepared the same way for all of them by the launcher.

A module of its own so that the stage code fingerprints of the methods (framework/stages.py) do not
all include the SFT warm start: only the launcher imports this.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from framework.algorithms import AlgorithmContext


def starting_context(ctx: AlgorithmContext, algorithm: Callable) -> AlgorithmContext:
    """The context an algorithm plugin runs with, the same way for every plugin.

    - `starting_point: sft` in the plugin's config: `ctx.base` becomes the default SFT model (the
      `algorithm=sft` stage, trained on the labelled split once and then reused).
    - a plugin registered with `label_free=True` gets data without gold answers or demonstrations.
    """
    if getattr(ctx.config, "starting_point", "base") == "sft":
        from framework.algorithms.sft import default_sft_model

        ctx = replace(ctx, base=default_sft_model(ctx), initial=ctx.built)
    if getattr(algorithm, "label_free", False):
        ctx = replace(ctx, data=ctx.data.without_labels())
    return ctx
