"""Every config option and sweep file composes and validates; bad values fail with the key's name."""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
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


EXPERIMENTS = options("experiment")
MODELS = options("model")


def test_preset_files_name_an_existing_experiment_model_and_option():
    """conf/preset_<group>/<experiment>_<model>_<option>.yaml is picked by name (conf/config.yaml): a misspelt
    file would silently not apply."""
    files = [path for group in ("algorithm", "decoder") for path in (Path(CONF_DIR) / f"preset_{group}").glob("*.yaml")]
    assert len(files) >= 20
    for path in files:
        group = path.parent.name.removeprefix("preset_")
        names = [(e, m, path.stem[len(f"{e}_{m}_"):]) for e in EXPERIMENTS for m in MODELS
                 if path.stem.startswith(f"{e}_{m}_")]
        assert any(option in options(group) for _, _, option in names), f"{path}: names no experiment/model/option"


def test_the_embedded_values_reach_the_tiny_model_only(compose_cfg):
    """model=tiny gets the embedded preset; a real model, with the same command otherwise, the papers' defaults."""
    tiny = to_validated(compose_cfg(["algorithm=dpo", "decoder=bon"]))
    hf = to_validated(compose_cfg(["algorithm=dpo", "decoder=bon", "model=hf", "model.name_or_path=/some/dir"]))
    none = to_validated(compose_cfg(["algorithm=dpo", "decoder=bon", "experiment=none"]))
    assert (tiny.algorithm.learning_rate, tiny.algorithm.loss, tiny.decoder.samples_per_prompt) == (3e-5, "sigmoid", 16)
    from framework.algorithms.dpo import DPOAlgorithmConfig
    from framework.bon import BoNConfig

    assert hf.algorithm == none.algorithm and hf.algorithm.learning_rate == DPOAlgorithmConfig().learning_rate == 1e-6
    assert hf.decoder.samples_per_prompt == BoNConfig().samples_per_prompt == 50


def test_headline_changes_only_what_it_says_on_top_of_the_embedded_preset(compose_cfg):
    plain = OmegaConf.to_container(compose_cfg(["algorithm=dpo", "decoder=bon"]), resolve=True)
    headline = OmegaConf.to_container(compose_cfg(["experiment=headline", "algorithm=dpo", "decoder=bon"]), resolve=True)
    assert headline["dataset"] == {**plain["dataset"], "test_size": 500}
    assert headline["model"] == plain["model"]
    assert headline["evaluation"] == {**plain["evaluation"], "control_decoders": ["greedy"]}
    assert headline["decoder"] == {**plain["decoder"], "samples_per_prompt": 16, "max_problems": 100,
                                   "greedy_reference": False}
    assert compose_cfg(["experiment=headline", "decoder=beam"]).decoder.num_beams == 4
    assert headline["algorithm"]["samples_per_prompt"] == 16 == headline["decoder"]["samples_per_prompt"]
    assert headline["algorithm"]["train_prompts"] == 128 != plain["algorithm"]["train_prompts"]
    assert headline["algorithm"]["sft"] == {**plain["algorithm"]["sft"], "save_steps": 100}
    assert {k: v for k, v in headline["algorithm"].items() if k not in ("sft", "samples_per_prompt", "train_prompts")} \
        == {k: v for k, v in plain["algorithm"].items() if k not in ("sft", "samples_per_prompt", "train_prompts")}


@pytest.mark.slow
def test_generation_lengths_follow_the_dataset_unless_set(compose_cfg):
    for dataset, tokens in (("gsm8k", 512), ("math", 1024), ("math500", 1024), ("gaokao2023en", 1024), ("arith", 96)):
        for algorithm in ("bon_sft", "xpo", "rft", "self_explore"):
            run = to_validated(compose_cfg([f"dataset={dataset}", f"algorithm={algorithm}", "decoder=bon",
                                            "model=hf", "model.name_or_path=/some/dir"]))
            assert run.decoder.max_new_tokens == run.algorithm.max_new_tokens == tokens, (dataset, algorithm)
    run = to_validated(compose_cfg(["dataset=gsm8k", "decoder.max_new_tokens=300", "model=hf",
                                    "model.name_or_path=/some/dir"]))
    assert run.decoder.max_new_tokens == 300


@pytest.mark.slow
def test_the_cfg_job_check_shows_the_papers_learning_rate_and_512_new_tokens():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "framework", "--cfg", "job", "model=hf",
                             "model.name_or_path=/some/dir", "dataset=gsm8k", "algorithm=sft"],
                            capture_output=True, text=True, timeout=120, env={**__import__("os").environ,
                                                                              "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    config = OmegaConf.create(result.stdout[result.stdout.index("model:"):])  # after any log line
    assert config.algorithm.learning_rate == 1e-5 and config.decoder.max_new_tokens == 512


SWEEPS_DIR = Path(CONF_DIR) / "sweeps"
SWEEPS = sorted(path.stem for path in SWEEPS_DIR.glob("*.yaml"))


def test_the_documented_sweep_files_exist():
    assert {"compare", "soc_beam_widths", "search_sft"} <= set(SWEEPS)


@pytest.mark.slow
@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_sweep_file_composes_with_every_swept_value(compose_cfg, sweep):
    """Each job of the sweep's grid composes and validates (one value of each key at a time); a search
    space's interval is checked at both ends."""
    to_validated(compose_cfg([f"sweeps={sweep}"]))
    params = _sweep_params(sweep)
    assert params, f"conf/sweeps/{sweep}.yaml sets no hydra.sweeper.params"
    for override in OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()]):
        key = override.get_key_element()
        for value in _swept_values(override):
            to_validated(compose_cfg([f"sweeps={sweep}", f"{key}={value}"]))


def _sweep_params(sweep):
    spec = OmegaConf.load(SWEEPS_DIR / f"{sweep}.yaml")
    return OmegaConf.select(spec, "hydra.sweeper.params", default={})


def _swept_values(override):
    """The values a sweep override gives its key, parsed as Hydra parses them: each element of a list or
    range (basic sweeper), an interval's two ends (Optuna's continuous search spaces, which have no list)."""
    if not override.is_sweep_override():
        return [override.get_value_element_as_str()]
    if override.is_interval_sweep():
        interval = override.value()
        return [str(interval.start), str(interval.end)]
    return list(override.sweep_string_iterator())


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
    (["experiment=headline", "algorithm=dpo", "algorithm.sft.max_steps=0"], "algorithm.sft.max_steps"),
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
    (["experiment=fast"], "experiment=fast: no such option; available: embedded, headline, none"),
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


@pytest.mark.parametrize("algorithm, key, value", [
    ("sft", "optim", "sgd"), ("sft", "lr_scheduler_kwargs", "{power: 2.0}"), ("soc", "bf16", "false"),
    ("dpo", "ld_alpha", "0.5"), ("xpo", "missing_eos_penalty", "1.0"), ("grpo", "mask_truncated_completions", "true"),
    ("self_explore", "rft.trainer.optim", "adafactor"), ("outcome_dpo", "sft.trainer.optim", "sgd"),
])
def test_any_field_of_the_methods_trl_config_is_reachable_under_trainer(compose_cfg, algorithm, key, value):
    node, _, name = (key if "." in key else f"trainer.{key}").rpartition(".")
    config = to_validated(compose_cfg([f"algorithm={algorithm}", f"+algorithm.{node}.{name}={value}"])).algorithm
    target = OmegaConf.select(OmegaConf.structured(config), node)
    assert name in target


@pytest.mark.parametrize("algorithm, override, message", [
    ("sft", "+algorithm.trainer.optimm=sgd", "algorithm.trainer.optimm is not a field of trl.SFTConfig"),
    ("sft", "+algorithm.trainer.precompute_ref_log_probs=true", "is not a field of trl.SFTConfig"),  # DPO's, not SFT's
    ("dpo", "+algorithm.trainer.learning_rate=1.0", "has a key of its own: set algorithm.learning_rate"),
    ("dpo", "+algorithm.trainer.output_dir=/tmp/x", "algorithm.trainer.output_dir is set by the framework"),
    ("self_explore", "+algorithm.rft.trainer.beta=0.5", "algorithm.rft.trainer.beta is not a field of trl.SFTConfig"),
])
def test_trainer_fields_are_checked_against_the_trl_config_class(compose_cfg, algorithm, override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        to_validated(compose_cfg([f"algorithm={algorithm}", override]))


def test_a_trainer_field_reaches_the_trl_config(tmp_path):
    from types import SimpleNamespace

    from framework.algorithms.training import trainer_arguments
    from framework.algorithms.sft_stage import SFTAlgorithmConfig
    from framework.models import Runtime
    from trl import SFTConfig

    config = SFTAlgorithmConfig(trainer={"optim": "sgd", "lr_scheduler_kwargs": {"power": 2.0}})
    ctx = SimpleNamespace(model_config=SimpleNamespace(gradient_checkpointing=False), seed=0, report_to="none",
                          runtime=Runtime("cpu", "fp32"))
    args = SFTConfig(**trainer_arguments(config, ctx, str(tmp_path)))
    assert args.optim == "sgd" and args.lr_scheduler_kwargs == {"power": 2.0} and args.learning_rate == 1e-5


@pytest.mark.parametrize("group_option", [f"{g}/{o}" for g in ("algorithm", "decoder") for o in options(g)])
def test_each_yaml_restates_its_schema_defaults(compose_cfg, group_option):
    """Without a preset and on a dataset whose generation length is the schemas' (GSM8K, 512), every option
    YAML equals its schema's defaults: the numbers docs/methods.md's defaults table cites are the ones that run."""
    group, option = group_option.split("/")
    node = getattr(to_validated(compose_cfg([f"{group}={option}", "experiment=none", "dataset=gsm8k", "model=hf",
                                             "model.name_or_path=/some/dir"])), group)
    assert node == type(node)(), group_option
