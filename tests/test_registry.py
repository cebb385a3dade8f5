"""The plugin tables: one object per name, and a lookup of an unknown name that says what exists."""
from dataclasses import dataclass

import pytest

from framework.config import AlgorithmConfig
from framework.errors import ConfigError
from framework.registry import Registry


@dataclass
class ProbeConfig(AlgorithmConfig):
    name: str = "registry_probe"


def _plugin(ctx):
    return ctx


def test_a_second_object_under_a_taken_name_is_refused_and_the_first_kept():
    table = Registry("algorithm", "algorithm")  # a fresh table: the real one stays as it is
    table.register("registry_probe", ProbeConfig)(_plugin)
    table.register("registry_probe", ProbeConfig)(_plugin)  # the same object again (a re-import) is fine
    with pytest.raises(ValueError, match=r"^algorithm 'registry_probe' is already registered by <function _plugin"):
        table.register("registry_probe", ProbeConfig)(lambda ctx: ctx)
    assert table.get("registry_probe") is _plugin and table.names() == ["registry_probe"]


def test_an_unknown_name_raises_config_error_listing_the_registered_names():
    table = Registry("algorithm", "algorithm")
    table.register("registry_probe_b", ProbeConfig)(_plugin)
    table.register("registry_probe_a", ProbeConfig)(lambda ctx: ctx)
    with pytest.raises(ConfigError) as error:
        table.get("nope")
    assert str(error.value) == ("algorithm.name: no algorithm named 'nope'; "
                                "registered: ['registry_probe_a', 'registry_probe_b']")
