"""Every config option and sweep file composes and validates; bad values fail with the key's name."""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from framework.__main__ import CONF_DIR, composition_error_line
from framework.paths import SWEEPS_DIR
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
    assert (tiny.algorithm.learning_rate, tiny.algorithm.pair_strategy, tiny.decoder.samples_per_prompt) == \
        (1e-4, "random_pairs", 16)
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
    assert headline["decoder"] == {**plain["decoder"], "samples_per_prompt": 16, "max_problems": 256,
                                   "greedy_reference": False}
    assert compose_cfg(["experiment=headline", "decoder=beam"]).decoder.num_beams == 4
    assert headline["algorithm"]["samples_per_prompt"] == 16 == headline["decoder"]["samples_per_prompt"]
    # the headline trains every method as the embedded scale model does (docs/scale-model.md)
    assert headline["algorithm"] == plain["algorithm"]


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


SWEEPS = sorted(path.stem for path in SWEEPS_DIR.glob("*.yaml"))


def test_the_documented_sweep_files_exist():
    assert {"compare", "soc_beam_widths", "search_sft"} <= set(SWEEPS)


def _compose_with_hydra(overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def test_a_sweep_is_found_from_any_working_directory(tmp_path, monkeypatch):
    """sweeps/ sits beside conf/, on Hydra's search path by an absolute path: a relative one would find it only
    from the repository root."""
    monkeypatch.chdir(tmp_path)
    cfg = _compose_with_hydra(["sweeps=headline"])
    assert cfg.hydra.sweeper.params.experiment == "headline"
    assert cfg.hydra.runtime.choices.sweeps == "headline"


def test_help_lists_every_sweep():
    """--help's group listing (framework/help.py) reads the sweeps from the top-level sweeps/, which is on the
    primary config's search path but not on the loader --help sees."""
    from framework import help as framework_help

    assert framework_help.options("sweeps") == SWEEPS
    assert framework_help.description("sweeps", "headline")


@pytest.mark.slow
@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_sweep_file_composes_with_every_swept_value(compose_cfg, sweep):
    """Each job of the sweep's grid composes and validates (one value of each key at a time); a search
    space's interval is checked at both ends."""
    to_validated(compose_cfg([f"sweeps={sweep}"]))
    params = _sweep_params(sweep)
    assert params, f"sweeps/{sweep}.yaml sets no hydra.sweeper.params"
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
    (["algorithm=nope"], "algorithm=nope: no such option; available: bon_sft, dpo, grpo, none, "),
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


@pytest.mark.parametrize("algorithm, overrides, message", [
    ("sft", ["+algorithm.trainer.optim=adafactorr"],
     "algorithm.trainer.optim is not a valid OptimizerNames (did you mean adafactor?); one of adamw_torch, "),
    ("xpo", ["+algorithm.trainer.lr_scheduler_kwargs={power: 2.0}", "+algorithm.trainer.optim=sgdd"],
     "algorithm.trainer.optim is not a valid OptimizerNames (did you mean sgd?)"),
    ("self_explore", ["+algorithm.rft.trainer.optim=adamw"], "algorithm.rft.trainer.optim is not a valid OptimizerNames"),
    ("sft", ["+algorithm.trainer.load_best_model_at_end=true"],
     "algorithm.trainer.load_best_model_at_end is refused by the trainer's config: --load_best_model_at_end requires"),
    # refused together only: no single key is at fault, so the node is named with both values
    ("dpo", ["+algorithm.trainer.fp16=true", "+algorithm.trainer.bf16=true"],
     "algorithm.trainer is refused by the trainer's config: At most one of fp16 and bf16 can be True"),
])
def test_a_bad_trainer_value_is_refused_before_anything_is_built_naming_its_key(compose_cfg, algorithm, overrides,
                                                                               message):
    """The TRL config class judges the values under `trainer` at validation, as it would when the trainer is made
    (after the W&B run has started and the model has loaded)."""
    with pytest.raises(ConfigError) as error:
        to_validated(compose_cfg([f"algorithm={algorithm}", *overrides]))
    assert str(error.value).startswith(message) and "\n" not in str(error.value), str(error.value)


@pytest.mark.parametrize("value", ["bf16=true", "tf32=true", "optim=adamw_torch_fused", "dataloader_pin_memory=true"])
def test_trainer_values_fine_on_another_machine_are_not_judged_on_this_one(compose_cfg, monkeypatch, value):
    """bf16 without a bf16 GPU and tf32 without an Ampere GPU are refused by TrainingArguments on this CPU, but a
    sweep is checked where it is launched (a login node) for jobs that run on GPUs: only the values are judged,
    without setting up a device (accelerate's process state is never touched)."""
    import accelerate.state

    set_up, original = [], accelerate.state.PartialState.__init__

    def recorded(self, *args, **kwargs):
        set_up.append(kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(accelerate.state.PartialState, "__init__", recorded)
    config = to_validated(compose_cfg([f"+algorithm.trainer.{value}"])).algorithm
    assert value.split("=")[0] in config.trainer and set_up == []


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


# The full-fine-tuning rates of the recipes here run from 5e-7 (XPO, TRL) to 1e-5 (SFT, the Self-Explore
# scripts); the one rate above this bound, BoN-SFT's 3e-4, is the sharpening paper's rate for LoRA adapters.
FULL_WEIGHTS_RATE_BOUND = 1e-4


def _learning_rates(node, prefix: str = "algorithm") -> dict[str, float]:
    """Every learning rate of an algorithm node: its own and its nested training nodes' (sft, rft)."""
    from dataclasses import fields as dataclass_fields, is_dataclass

    from framework.config import TrainingConfig

    rates = {f"{prefix}.learning_rate": node.learning_rate} if isinstance(node, TrainingConfig) else {}
    for item in dataclass_fields(node):
        value = getattr(node, item.name)
        if is_dataclass(value):
            rates.update(_learning_rates(value, f"{prefix}.{item.name}"))
    return rates


REAL_MODEL_RUNS = ([[f"algorithm={option}", f"experiment={experiment}", "model=hf", "model.name_or_path=/some/dir"]
                    for option in options("algorithm") for experiment in ("embedded", "none")]
                   + [[f"algorithm={option}", "model=smollm2_gguf"] for option in options("algorithm")]
                   + [[f"experiment={experiment}", f"algorithm={option}"] for experiment in
                      ("soc_paper", "sharpening_paper", "self_explore_paper")
                      for option in options("algorithm")])


@pytest.mark.parametrize("overrides", REAL_MODEL_RUNS, ids=" ".join)
def test_no_adapter_learning_rate_reaches_the_full_weights_of_a_real_model(compose_cfg, overrides):
    """On a real model every method either trains LoRA adapters (what BoN-SFT's paper trained, and the rate it
    gives is for) or trains full weights at a full-fine-tuning rate: model=hf algorithm=bon_sft once trained
    every weight at 3e-4."""
    run = to_validated(compose_cfg(overrides))
    if run.model.lora.enabled:
        return
    too_high = {key: rate for key, rate in _learning_rates(run.algorithm).items() if rate > FULL_WEIGHTS_RATE_BOUND}
    assert not too_high, f"full weights at an adapter's rate: {too_high}"


def test_bon_sft_trains_the_papers_adapters_on_a_real_model_and_the_user_can_turn_them_off(compose_cfg):
    real = to_validated(compose_cfg(["algorithm=bon_sft", "model=hf", "model.name_or_path=/some/dir"]))
    assert (real.model.lora.enabled, real.model.lora.rank, real.algorithm.learning_rate) == (True, 16, 3e-4)
    assert not to_validated(compose_cfg(["algorithm=sft", "model=hf", "model.name_or_path=/some/dir"])).model.lora.enabled
    off = to_validated(compose_cfg(["algorithm=bon_sft", "model=hf", "model.name_or_path=/some/dir",
                                    "model.lora.enabled=false", "algorithm.learning_rate=1e-5"]))
    assert not off.model.lora.enabled and off.algorithm.learning_rate == 1e-5


def test_method_model_files_name_an_existing_algorithm_and_model():
    """conf/method_model/<algorithm>_<model>.yaml is picked by name (conf/config.yaml): a misspelt file would
    silently not apply."""
    files = list((Path(CONF_DIR) / "method_model").glob("*.yaml"))
    assert files
    for path in files:
        assert any(path.stem == f"{algorithm}_{model}" for algorithm in options("algorithm") for model in MODELS), path
