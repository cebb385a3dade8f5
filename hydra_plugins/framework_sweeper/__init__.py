"""The framework's sweeper as Hydra sees it: Hydra instantiates plugins only from the `hydra_plugins` namespace.
What it does is in framework/sweeper.py."""
import hydra._internal.core_plugins.basic_sweeper as basic

from framework import sweeper


class CheckedSweeper(sweeper.CheckedSweeperMixin, basic.BasicSweeper):
    """Hydra's basic sweeper, checking every job of the grid before the first runs (framework/sweeper.py)."""
