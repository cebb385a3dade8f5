"""Hydra search-path plugin: makes the repository's `sweeps/*.yaml` selectable as `sweeps=<name>`.

Hydra discovers plugins in the `hydra_plugins` namespace package; this one appends `config_root/`
to the config search path (after conf/, which always wins). That directory holds only a symlink to the
repository's `sweeps/`, so `sweeps` is a config group without living inside conf/, and Hydra does not
walk the rest of the repository (a search path at the repository root made `--help` crawl `.venv/`).
"""
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

CONFIG_ROOT = Path(__file__).resolve().parent / "config_root"


class FrameworkSweepsSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if (CONFIG_ROOT / "sweeps").is_dir():  # the symlink resolves in a source checkout (pip install -e)
            search_path.append(provider="framework-sweeps", path=f"file://{CONFIG_ROOT}")
