"""The framework's sweeper as Hydra sees it: Hydra instantiates plugins only from the `hydra_plugins` namespace.
Everything it does is in framework/sweeper.py."""
from framework import sweeper


class CheckedSweeper(sweeper.CheckedSweeperBase):
    """Hydra's basic sweeper that checks every job of the grid before the first runs (framework/sweeper.py)."""
