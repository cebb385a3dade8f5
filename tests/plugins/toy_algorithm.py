"""A stand-in for a third-party package's algorithm plugin (loaded through an entry point in a test)."""
from dataclasses import dataclass

from framework import registry
from framework.config import AlgorithmConfig


@dataclass
class ToyConfig(AlgorithmConfig):
    name: str = "toy"
    marker: int = 0


@registry.algorithms.register("toy", ToyConfig, as_option=True)
def run(ctx):
    (ctx.output_dir / "toy_marker.txt").write_text(str(ctx.config.marker))
    return ctx.base
