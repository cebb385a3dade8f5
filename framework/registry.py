"""Name -> plugin tables for algorithms, datasets, decoders and models.

A plugin module registers itself at import time with a decorator that also stores its config schema
in Hydra's ConfigStore. `load_plugins()` imports the built-in modules (every module of
framework/algorithms/ among them, so a new method needs no list entry) and every module advertised by
an installed package under the entry-point group `framework.plugins`, so `algorithm=<name>` works for
an external method without touching this repository. Nothing is ever instantiated from a `_target_`
string in a config file: plugins are code the user installed, looked up by name.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil
from importlib.metadata import entry_points
from typing import Callable, Generic, TypeVar

from framework.config import register_schema
from framework.errors import ConfigError

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "framework.plugins"
BUILTIN_MODULES = (
    "framework.models",
    "framework.data.loaders",
    "framework.data.benchmarks",
    "framework.generation",
    "framework.decoding",
    "framework.bon",
)
# Every module of this package is imported: a method there is its module and its YAML, nothing to list.
# (The shared blocks beside the methods register nothing; importing them is harmless.)
ALGORITHMS_PACKAGE = "framework.algorithms"

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, group: str):
        self.kind, self.group = kind, group
        self._entries: dict[str, T] = {}

    def register(self, name: str, schema: type, *, as_option: bool = False,
                 label_free: bool = False, trains: bool = True) -> Callable[[T], T]:
        """Decorator: register `obj` under `name` with its config schema. Duplicate names are refused.

        `label_free=True` (algorithms): the launcher hands the plugin data without gold answers or
        demonstrations (only `question` and `prompt` columns), so it cannot use them by accident.
        `trains=False` (algorithms): needs no training split (evaluation-only datasets work with it).
        """

        def decorate(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered by {self._entries[name]!r}")
            register_schema(self.group, name, schema, as_option=as_option)
            if self.group == "algorithm":  # what the launcher asks of every algorithm, set on each
                obj.label_free, obj.trains = label_free, trains  # type: ignore[attr-defined]
            elif label_free or not trains:
                raise ValueError(f"label_free and trains describe algorithms, not a {self.kind}")
            self._entries[name] = obj
            return obj

        return decorate

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ConfigError(f"{self.group}.name: no {self.kind} named {name!r}; registered: {self.names()}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)


algorithms: Registry = Registry("algorithm", "algorithm")
datasets: Registry = Registry("dataset loader", "dataset")
decoders: Registry = Registry("decoder", "decoder")
models: Registry = Registry("model builder", "model")

_LOADED = False


def _register_sweeper_with_hydra() -> None:
    """Hydra finds plugins by scanning the directories of the `hydra_plugins` namespace package. An editable
    install (`pip install -e .`, the README's) maps hydra_plugins.framework_sweeper through setuptools' import finder
    without adding its directory to that namespace, so from any directory but the checkout's root the scan misses it
    and `-m` fails with "Unknown plugin class". Hydra's own manual registration covers that case; a wheel install is
    found by the scan, and then nothing is registered by hand."""
    from hydra.core.plugins import Plugins

    # the scan first: it re-executes the core plugin modules, and the sweeper must subclass the BasicSweeper it leaves
    plugins = Plugins.instance()
    try:
        from hydra_plugins.framework_sweeper import CheckedSweeper
    except ImportError:  # a checkout run without installing: the scan finds hydra_plugins/ under the working directory
        return
    name = f"{CheckedSweeper.__module__}.{CheckedSweeper.__name__}"
    if name not in plugins.class_name_to_class:  # found by the scan already: never register a second copy
        plugins.register(CheckedSweeper)


def load_plugins() -> None:
    """Import built-in plugins, then external ones from installed packages' entry points."""
    global _LOADED
    if _LOADED:
        return
    from framework.config import register_base_schemas

    register_base_schemas()
    # hydra/sweeper=checked (conf/default_sweeper.yaml): registered when Hydra's plugin scan imports the sweeper,
    # and here too, so that a single run still composes where the hydra_plugins package is not installed
    importlib.import_module("framework.sweeper")
    _register_sweeper_with_hydra()
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    package = importlib.import_module(ALGORITHMS_PACKAGE)
    for module in sorted(info.name for info in pkgutil.iter_modules(package.__path__)):
        importlib.import_module(f"{ALGORITHMS_PACKAGE}.{module}")
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry_point.load()
        except Exception as error:  # a broken third-party plugin must not take the framework down
            log.warning("could not load plugin %s (%s): %s", entry_point.name, entry_point.value, error)
    _LOADED = True
