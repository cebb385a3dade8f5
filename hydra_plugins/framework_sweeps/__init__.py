"""Hydra search-path plugin: makes the repository's `sweeps/*.yaml` selectable as `sweeps=<name>`.

Hydra discovers plugins in the `hydra_plugins` namespace package; this one appends the repository
root to the config search path (after conf/, which always wins), so the folder `sweeps/` is a config
group without living inside conf/.
"""
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

REPOSITORY = Path(__file__).resolve().parents[2]


class FrameworkSweepsSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if (REPOSITORY / "sweeps").is_dir():
            search_path.append(provider="framework-sweeps", path=f"file://{REPOSITORY}")
