"""`algorithm=none`: evaluate the starting model as it is (the reference row of every comparison)."""
from dataclasses import dataclass

from framework import registry
from framework.algorithms import AlgorithmContext
from framework.config import AlgorithmConfig
from framework.models import ModelHandle


@dataclass
class NoneConfig(AlgorithmConfig):
    name: str = "none"


@registry.algorithms.register("none", NoneConfig, trains=False)
def run(ctx: AlgorithmContext) -> ModelHandle:
    return ctx.base
