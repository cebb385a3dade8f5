"""Every config option and sweep file composes and validates; bad values fail with the key's name."""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from framework.__main__ import CONF_DIR, composition_error_line
from framework.config import refuse_unknown_keys, to_validated
from framework.errors import ConfigError

GROUPS = ("model", "dataset", "algorithm", "decoder", "logger")
REQUIRED = {"model/hf": ["model.name_or_path=/some/local/dir"]}


def options(group):
    return sorted(path.stem for path in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group_option", [f"{g}/{o}" for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(compose_cfg, group_option):
    group, option = group_option.split("/")
    cfg = compose_cfg([f"{group}={option}", *REQUIRED.get(group_option, [])])
    run = to_validated(cfg)
    assert getattr(run, group).name in (option, "hf")  # presets of `hf` keep its name


BUDGETS = options("budget")


def test_budget_files_name_an_existing_budget_and_option():
    """conf/budget_<group>/<budget>_<option>.yaml is picked by name: a misspelt file would silently not apply."""
    files = [path for group in GROUPS for path in (Path(CONF_DIR) / f"budget_{group}").glob("*.yaml")]
    assert files, "no budget files"
    for path in files:
        group = path.parent.name.removeprefix("budget_")
        budget, option = next(((b, path.stem[len(b) + 1:]) for b in BUDGETS if path.stem.startswith(f"{b}_")),
                              (None, None))
        assert budget is not None and option in options(group), f"{path}: no budget/option {path.stem!r}"


def test_headline_budget_changes_only_what_it_says(compose_cfg):
    plain = OmegaConf.to_container(compose_cfg(["algorithm=dpo", "decoder=bon"]))
    headline = OmegaConf.to_container(compose_cfg(["budget=headline", "algorithm=dpo", "decoder=bon"]))
    assert headline["dataset"] == {**plain["dataset"], "test_size": 100}
    assert headline["model"] == {**plain["model"], "pretrain_steps": 300}
    assert headline["decoder"] == {**plain["decoder"], "samples_per_prompt": 4, "prompts_per_batch": 32,
                                   "greedy_reference": False}
    assert compose_cfg(["budget=headline", "decoder=beam"]).decoder.num_beams == 4
    assert headline["algorithm"]["samples_per_prompt"] == 4 == headline["decoder"]["samples_per_prompt"]
    assert headline["algorithm"]["sft"]["max_steps"] == 200 != plain["algorithm"]["sft"]["max_steps"]
    # a model without a headline file keeps its own keys
    hf = ["model=hf", "model.name_or_path=/some/local/dir"]
    assert compose_cfg(["budget=headline", *hf]).model == compose_cfg(hf).model


SWEEPS = sorted(path.stem for path in (Path(CONF_DIR).parent / "sweeps").glob("*.yaml"))


def test_there_are_sweep_files():
    assert {"compare", "soc_beam_widths"} <= set(SWEEPS)


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_sweep_file_composes_with_every_swept_value(compose_cfg, sweep):
    """Each job of the sweep's grid composes and validates (one value of each key at a time)."""
    to_validated(compose_cfg([f"sweeps={sweep}"]))
    params = _sweep_params(sweep)
    assert params, f"sweeps/{sweep}.yaml sets no hydra.sweeper.params"
    for key, values in params.items():
        for value in str(values).split(","):
            to_validated(compose_cfg([f"sweeps={sweep}", f"{key}={value.strip()}"]))


def _sweep_params(sweep):
    spec = OmegaConf.load(Path(CONF_DIR).parent / "sweeps" / f"{sweep}.yaml")
    return OmegaConf.select(spec, "hydra.sweeper.params", default={})


@pytest.mark.parametrize("overrides, key", [
    (["decoder=beam", "decoder.num_beams=0"], "decoder.num_beams"),
    (["decoder=sample", "decoder.temperature=-1"], "decoder.temperature"),
    (["decoder=sample", "decoder.temperature=0"], "decoder.temperature"),
    (["decoder=sample", "decoder.samples_per_prompt=0"], "decoder.samples_per_prompt"),
    (["decoder=sample", "decoder.top_p=1.5"], "decoder.top_p"),
    (["decoder.max_new_tokens=0"], "decoder.max_new_tokens"),
    (["algorithm.learning_rate=-1"], "algorithm.learning_rate"),
    (["algorithm.per_device_train_batch_size=0"], "algorithm.per_device_train_batch_size"),
    (["algorithm.max_steps=-5"], "algorithm.max_steps"),
    (["budget=headline", "algorithm=dpo", "algorithm.sft.max_steps=0"], "algorithm.sft.max_steps"),
    (["dataset.min_steps=5", "dataset.max_steps=2"], "dataset.min_steps"),
    (["dataset.operations=[add,pow]"], "dataset.operations"),
    (["dataset.value_max=5000"], "dataset.value_max"),
    (["dataset.prompt_template=no placeholder"], "dataset.prompt_template"),
    (["model.hidden_size=30", "model.num_heads=4"], "model.hidden_size"),
    (["model.precision=fp8"], "model.precision"),
    (["logger.mode=sometimes"], "logger.mode"),
    (["device=tpu"], "device"),
    (["model=hf"], "name_or_path"),
])
def test_impossible_values_raise_config_error_naming_the_key(compose_cfg, overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_validated(compose_cfg(overrides))


@pytest.mark.parametrize("overrides, line", [
    (["algorithm=nope"], "algorithm=nope: no such option; available: bon_sft, dpo, none, "),
    (["budget=fast"], "budget=fast: no such option; available: default, headline"),
    (["decoder=beam", "decoder.num_beams=abc"], "decoder.num_beams: Value 'abc' of type 'str' could not be converted"),
    (["decoder.temperature=0.5"], "decoder.temperature: unknown key; decoder=greedy has no such key"),  # greedy: none
    (["algorithm.learning_rat=0.1"], "algorithm.learning_rat: unknown key (did you mean algorithm.learning_rate?)"),
    (["algorithm=dpo", "algorithm.sft.foo=1"], "algorithm.sft.foo: unknown key; algorithm=dpo has no such key"),
])
def test_unknown_options_keys_and_wrong_types_fail_at_compose_time(compose_cfg, overrides, line):
    """Hydra refuses these while composing; the launcher turns its message into the one line shown."""
    with pytest.raises(ConfigCompositionException) as error:
        compose_cfg(overrides)
    message = composition_error_line(error.value)
    assert message.startswith(line) and "\n" not in message, message


@pytest.mark.parametrize("overrides, key, option", [
    (["+algorithm.foo=1"], "algorithm.foo", "algorithm=sft"),
    (["+algorithm._target_=os.system"], "algorithm._target_", "algorithm=sft"),
    (["+algorithm.learning_rte=1e-5"], "algorithm.learning_rte", "algorithm=sft"),
    (["algorithm=dpo", "+algorithm.sft.foo=1"], "algorithm.sft.foo", "algorithm=dpo"),
    (["+model.lora.foo=1"], "model.lora.foo", "model=tiny"),
    (["+decoder.foo=1"], "decoder.foo", "decoder=greedy"),
    (["+dataset.foo=1"], "dataset.foo", "dataset=arith"),
    (["+logger.foo=1"], "logger.foo", "logger=wandb"),
    (["+foo=1"], "foo", None),
    (["+stages.foo=1"], "stages.foo", None),
])
def test_a_key_no_schema_knows_is_refused_even_when_added_with_plus(compose_cfg, overrides, key, option):
    """`+key=value` gets past Hydra's struct check and OmegaConf.to_object would drop the key silently."""
    with pytest.raises(ConfigError) as error:
        to_validated(compose_cfg(overrides))
    owner = f"{option} has no such key" if option else "the run config has no such key"
    assert str(error.value).startswith(f"{key}: unknown key") and owner in str(error.value), str(error.value)


@dataclass
class _Inner:
    rate: float = 1.0


@dataclass
class _Node:
    inner: _Inner = field(default_factory=_Inner)
    items: list[_Inner] = field(default_factory=lambda: [_Inner()])
    extra: dict = field(default_factory=dict)
    anything: Any = None
    link: float = "${inner.rate}"


def test_the_key_walk_checks_nested_and_listed_nodes_but_not_free_form_ones():
    node = OmegaConf.structured(_Node)
    OmegaConf.update(node, "extra.whatever", 1, force_add=True)  # dict and Any fields hold data, not settings
    OmegaConf.update(node, "anything", {"free": 1}, force_add=True)
    refuse_unknown_keys(node, node)
    for bad, key in (("inner.rte", "inner.rte"), ("items.0.rte", r"items\[0\]\.rte")):
        broken = node.copy()
        OmegaConf.update(broken, bad, 1, force_add=True)
        with pytest.raises(ConfigError, match=rf"^{key}: unknown key \(did you mean"):
            refuse_unknown_keys(broken, broken)
