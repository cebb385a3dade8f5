"""W&B sweep specs (sweeps/wandb/*.yaml): every grid point composes and validates as the Hydra overrides a
W&B agent would pass, and each spec runs the same grid as the Hydra sweep file (sweeps/<name>.yaml) it mirrors."""
import itertools

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from framework import registry
from framework.__main__ import CONF_DIR
from framework.config import to_validated
from framework.paths import SWEEPS_DIR

SPECS_DIR = SWEEPS_DIR / "wandb"
SPECS = sorted(path.stem for path in SPECS_DIR.glob("*.yaml"))
HYDRA_SWEEPS = sorted(path.stem for path in SWEEPS_DIR.glob("*.yaml"))
# Hydra sweeps that deliberately have no W&B counterpart: name -> why
WITHOUT_WANDB_SPEC = {
    "search_sft": "an Optuna search: TPE proposes each trial from the finished ones inside the Hydra process, so a "
                  "W&B spec (method: bayes) would be a different search, not a mirror of this one",
}


def load_spec(name):
    return yaml.safe_load((SPECS_DIR / f"{name}.yaml").read_text())


def grid(parameters: dict) -> list[dict]:
    """Every run of a `method: grid` spec as {name: value}. Hand-written: W&B's own engine (the `sweeps`
    package) would pull in a numpy downgrade; a grid is the product of each parameter's values."""
    names = list(parameters)
    choices = [spec["values"] if "values" in spec else [spec["value"]] for spec in parameters.values()]
    return [dict(zip(names, combination)) for combination in itertools.product(*choices)]


def agent_overrides(run: dict) -> list[str]:
    """The arguments a W&B agent puts in place of ${args_no_hyphens} (W&B's own code)."""
    command = {"args": {name: {"value": value} for name, value in run.items()}}
    return create_sweep_command_args(command)["args_no_hyphens"]


def test_every_hydra_sweep_has_a_wandb_spec():
    missing = set(HYDRA_SWEEPS) - set(SPECS) - WITHOUT_WANDB_SPEC.keys()
    assert not missing, f"add sweeps/wandb/<name>.yaml for {sorted(missing)} (or list them in WITHOUT_WANDB_SPEC)"


def test_sweeps_listed_without_a_spec_exist_and_have_none():
    """A stale entry (a renamed sweep, or one that has since got a spec) would hide a missing mirror."""
    assert WITHOUT_WANDB_SPEC.keys() <= set(HYDRA_SWEEPS) - set(SPECS)


@pytest.mark.parametrize("name", SPECS)
def test_spec_runs_the_launcher_with_hydra_overrides(name):
    spec = load_spec(name)
    assert spec["method"] == "grid" and spec["metric"] == {"name": "eval/accuracy", "goal": "maximize"}
    assert spec["command"] == ["${env}", "${interpreter}", "-m", "framework", "${args_no_hyphens}"]
    fixed = spec["parameters"]
    assert fixed["sweeps"] == {"value": name} and fixed["logger.mode"] == {"value": "online"}
    assert fixed["logger.group"] == {"value": f"wandb-{name}"}


@pytest.mark.parametrize("name", SPECS)
def test_spec_grid_is_the_hydra_sweep_grid(name):
    """Same swept keys and values as sweeps/<name>.yaml's hydra.sweeper.params (parsed by Hydra)."""
    params = OmegaConf.select(OmegaConf.load(SWEEPS_DIR / f"{name}.yaml"), "hydra.sweeper.params", default={})
    hydra_grid = {}
    for override in OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()]):
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() \
            else [override.get_value_element_as_str()]
        hydra_grid[override.get_key_element()] = values
    swept = {key: [str(v) for v in spec.get("values", [spec.get("value")])]
             for key, spec in load_spec(name)["parameters"].items() if "values" in spec or key in hydra_grid}
    assert swept == hydra_grid, f"sweeps/wandb/{name}.yaml no longer sweeps what sweeps/{name}.yaml does"


@pytest.mark.slow
@pytest.mark.parametrize("name", SPECS)
def test_every_grid_point_composes_and_validates(name):
    registry.load_plugins()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):  # once: compose is the cheap part
        configs = [(run, compose(config_name="config", overrides=agent_overrides(run)))
                   for run in grid(load_spec(name)["parameters"])]
    for run, cfg in configs:
        settings = to_validated(cfg)
        for key, value in run.items():  # each override landed where it says (a group: its option's name)
            if key not in ("sweeps", "experiment"):  # groups of package _global_: no node of their own (experiment's
                # effect is tested in test_configs.py)
                node = OmegaConf.select(cfg, key)
                assert (node.name if isinstance(node, DictConfig) else node) == value, (run, key)
        assert settings.logger.mode == "online"


def test_a_misspelt_key_fails_to_compose(compose_cfg):
    overrides = agent_overrides({"sweeps": "bon_vs_n", "decoder.selektor": "majority"})
    assert overrides == ["sweeps=bon_vs_n", "decoder.selektor=majority"]
    with pytest.raises(ConfigCompositionException):
        compose_cfg(overrides)
