"""Typed schemas for every config group, registered in Hydra's ConfigStore.

Each YAML option in conf/<group>/ starts from its schema (`defaults: [<name>_schema, _self_]`), so a
misspelt key or a string where a number belongs fails at compose time, naming the key (a key added with
`+`, which Hydra lets through, fails in `to_validated`, before anything is built). Value checks
that a type cannot express (num_beams >= 1, temperature > 0, ...) live in each schema's `validate`,
which the launcher runs on the composed config before anything is built or trained.

Plugins (algorithms, datasets, decoders, models) register their schema through `register_schema`;
this module only holds the shared parts and the top-level run config.
"""
from __future__ import annotations

import difflib
import functools
import importlib
import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from framework.errors import ConfigError


# numpy's seed range: transformers' set_seed (and the Trainer's) seeds numpy, which refuses anything outside it
MAX_SEED = 2**32 - 1


def require_seed(value: int, key: str) -> None:
    require(0 <= value <= MAX_SEED, key, f"must be in [0, {MAX_SEED}] (numpy's seed range)", value)


def require(condition: bool, key: str, message: str, value: Any = None) -> None:
    """Raise one readable ConfigError naming the full key when a value check fails."""
    if not condition:
        raise ConfigError(f"{key} {message} (got {value!r})")


class Validated:
    """Mixin: `validate(prefix)` checks this node; subclasses extend `checks`.

    `checks` is cooperative: every class's `checks` calls `super().checks(prefix)` once, then checks its
    own fields, so a schema that mixes several (TrainingConfig, TrainingSamplingConfig, ...) runs each
    exactly once, in reverse method resolution order: the bases' checks before their subclasses'."""

    def checks(self, prefix: str) -> None:
        """The end of the chain: nothing of its own to check."""

    def validate(self, prefix: str) -> None:
        self.checks(prefix)
        for item in fields(self):  # nested schema nodes check themselves too
            value = getattr(self, item.name)
            if isinstance(value, Validated):
                value.validate(f"{prefix}.{item.name}")


# ---------------------------------------------------------------------------- shared training keys
# What the framework itself sets on every TRL config (from its own keys or the run): not settable under `trainer`.
FRAMEWORK_TRAINER_FIELDS = ("output_dir", "report_to", "seed", "data_seed", "save_strategy", "use_cpu",
                            "dataloader_num_workers", "gradient_checkpointing", "activation_checkpointing",
                            "warmup_steps", "beta", "loss_type", "completion_only_loss", "temperature", "top_p",
                            "top_k", "max_new_tokens", "precompute_ref_log_probs")


@functools.lru_cache(maxsize=None)
def trl_config_fields(target: str) -> frozenset[str]:
    """The dataclass fields of a TRL config class named `module:Class` (imported on first use)."""
    module, _, name = target.partition(":")
    return frozenset(item.name for item in fields(getattr(importlib.import_module(module), name)))


def check_trainer_fields(trainer: dict, target: str, prefix: str, own_keys: list[str],
                         own_values: dict | None = None) -> None:
    """`trainer` may set any field of the TRL config class except those the framework sets itself; its values
    are then judged by building that class (`check_trainer_values`), so a bad one fails here, not after the
    model has loaded."""
    if not trainer:
        return
    known = trl_config_fields(target)
    for key in trainer:
        require(key in known, f"{prefix}.{key}", f"is not a field of {target.replace(':', '.')} (see its docs for "
                "the fields it has)", trainer[key])
        require(key not in own_keys, f"{prefix}.{key}", f"has a key of its own: set {prefix.rsplit('.', 1)[0]}.{key}",
                trainer[key])
        require(key not in FRAMEWORK_TRAINER_FIELDS, f"{prefix}.{key}",
                "is set by the framework (from the run, the model or the method's own keys)", trainer[key])
    check_trainer_values(trainer, target, prefix, own_values or {})


# Fields whose checks in TrainingArguments depend on the machine that runs the job (its GPU's TF32 support, an
# installed DeepSpeed): a sweep is checked where it is launched, a login node say, so the trainer judges these.
MACHINE_CHECKED_TRAINER_FIELDS = ("tf32", "deepspeed")


@functools.lru_cache(maxsize=None)
def _trial_config_class(target: str) -> type:
    """The TRL config class named `module:Class`, minus its device set-up: building TrainingArguments starts
    accelerate's process state for the device (and resets it), which a check must neither do nor depend on."""
    import torch

    module, _, name = target.partition(":")
    base = getattr(importlib.import_module(module), name)

    class Trial(base):  # inherits the dataclass's fields, __init__ and __post_init__ checks
        @functools.cached_property
        def _setup_devices(self):
            self._n_gpu = 0
            return torch.device("cpu")

    return Trial


def _build_trial(target: str, values: dict) -> Exception | None:
    """The error building `target` from `values` raises, or None. Training on the CPU in full precision: the
    precision flags and the device are the run's (the framework sets them), not the user's to be judged on."""
    import warnings

    arguments = {"output_dir": "unused", "report_to": "none", "use_cpu": True, "bf16": False, "fp16": False,
                 **values}
    with warnings.catch_warnings():  # deprecations of the library's own defaults; the run shows the user's
        warnings.simplefilter("ignore")
        try:
            _trial_config_class(target)(**arguments)
        except Exception as error:  # TrainingArguments raises ValueError, TypeError, ImportError, ...
            return error
    return None


def _error_line(error: Exception) -> str:
    """A library's refusal on one line; for an enum (optim, lr_scheduler_type, ...) the closest valid value."""
    import re

    text = " ".join(str(error).split()) or type(error).__name__
    enum = re.fullmatch(r"(.+?) is not a valid (\w+), please select one of \[(.*)\]\.?", text)
    if enum:
        value, kind, options = enum.group(1), enum.group(2), [o.strip(" '\"") for o in enum.group(3).split(",")]
        close = difflib.get_close_matches(value, options, n=1)
        guess = f" (did you mean {close[0]}?)" if close else ""
        return f"is not a valid {kind}{guess}; one of {', '.join(options)}"
    return f"is refused by the trainer's config: {text}"


def check_trainer_values(trainer: dict, target: str, prefix: str, own_values: dict) -> None:
    """Build the TRL config class from the node's own TrainingArguments keys (`own_values`) and `trainer` and
    raise ConfigError for what it refuses, naming the `trainer` key at fault. Only the user's values are
    judged: whatever the build refuses without them (this machine, the environment) is left to the run."""
    judged = {key: value for key, value in trainer.items() if key not in MACHINE_CHECKED_TRAINER_FIELDS}
    known = trl_config_fields(target)
    own_values = {key: value for key, value in own_values.items() if key in known}  # a plugin's class may lack one
    if not judged or _build_trial(target, own_values) is not None:
        return
    error = _build_trial(target, {**own_values, **judged})
    if error is None:
        return
    for key, value in judged.items():  # the key that fails on its own, else the combination
        alone = _build_trial(target, {**own_values, key: value})
        if alone is not None:
            raise ConfigError(f"{prefix}.{key} {_error_line(alone)} (got {value!r})")
    raise ConfigError(f"{prefix} {_error_line(error)} (got {judged!r})")

@dataclass
class TrainingConfig(Validated):
    """Keys every training algorithm shares; names follow transformers.TrainingArguments.

    Defaults are the SFT recipe of the Self-Explore scripts (the one paper here that states it for
    1.5B-7B models, ../shared/docs/paper-recipes.md): AdamW at 1e-5, global batch 64, linear decay, no
    warmup, 2 epochs. Every other field of the method's TRL config class goes under `trainer`."""

    # the TRL config class this node's keys and `trainer` are handed to (a method schema names its own)
    TRL_CONFIG: ClassVar[str] = "trl:SFTConfig"

    learning_rate: float = 1e-5
    max_steps: int = -1  # optimizer steps; wins over num_train_epochs when > 0
    num_train_epochs: float = 2.0
    per_device_train_batch_size: int = 8  # sequences (prompt+completion) per device per micro-batch
    gradient_accumulation_steps: int = 8  # 8 x 8 = the scripts' global batch of 64 on one device
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 1024  # tokens per training sequence; longer ones are truncated (MATH: 1024)
    logging_steps: int = 10
    save_steps: int = 100  # checkpoint interval (optimizer steps); an interrupted run resumes from the last
    save_total_limit: int = 2
    # any other field of TRL_CONFIG (optim, lr_scheduler_kwargs, bf16, precompute_ref_log_probs, ...), checked
    # against that class; new keys are added with `+algorithm.trainer.<field>=<value>`
    trainer: dict[str, Any] = field(default_factory=dict)

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.learning_rate > 0 and math.isfinite(self.learning_rate), f"{prefix}.learning_rate",
                "must be a positive number", self.learning_rate)
        require(self.max_steps == -1 or self.max_steps >= 1, f"{prefix}.max_steps",
                "must be >= 1, or -1 to train num_train_epochs", self.max_steps)
        require(self.max_steps > 0 or self.num_train_epochs > 0, f"{prefix}.max_steps",
                "or num_train_epochs must be positive", self.max_steps)
        for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "logging_steps",
                    "save_steps", "save_total_limit"):
            require(getattr(self, key) >= 1, f"{prefix}.{key}", "must be >= 1", getattr(self, key))
        require(0 <= self.warmup_ratio < 1, f"{prefix}.warmup_ratio", "must be in [0, 1)", self.warmup_ratio)
        require(self.weight_decay >= 0, f"{prefix}.weight_decay", "must be >= 0", self.weight_decay)
        require(self.max_grad_norm > 0, f"{prefix}.max_grad_norm", "must be > 0", self.max_grad_norm)
        own = [item.name for item in fields(self)]
        # the node's keys that are TrainingArguments fields, as training.trainer_arguments hands them over
        own_values = {item.name: getattr(self, item.name) for item in fields(TrainingConfig)
                      if item.name not in ("trainer", "warmup_ratio")}
        own_values["warmup_steps"] = self.warmup_ratio
        check_trainer_fields(self.trainer, self.TRL_CONFIG, f"{prefix}.trainer", own, own_values)


@dataclass
class TrainingSamplingConfig(Validated):
    """Keys of a method that samples from its starting model on the training prompts before training
    (bon_sft, dpo: N self-scored samples; rft, outcome_dpo, self_explore: K rationales)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512  # the YAMLs follow the dataset (${dataset.max_new_tokens}): GSM8K 512, MATH 1024
    train_prompts: int | None = None  # sample the first N training prompts only (null: all)
    require_finished: bool = True  # drop samples cut off by max_new_tokens: training would add an EOS they never had

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(math.isfinite(self.temperature) and self.temperature > 0, f"{prefix}.temperature",
                "must be > 0 (several samples at temperature 0 would all be the greedy output)", self.temperature)
        require(0 < self.top_p <= 1, f"{prefix}.top_p", "must be in (0, 1]", self.top_p)
        require(self.max_new_tokens >= 1, f"{prefix}.max_new_tokens", "must be >= 1", self.max_new_tokens)
        require(self.train_prompts is None or self.train_prompts >= 1, f"{prefix}.train_prompts",
                "must be >= 1 or null", self.train_prompts)

    def draw_keys(self) -> dict:
        """The keys that change what is drawn for each prompt: a sampled stage's spec holds these (with its
        sample count, the model, the data and how many prompts), not `prompts_per_batch` (the engine's noise is
        per prompt, so batching changes no sample), `train_prompts` (the spec counts the prompts themselves) or
        `require_finished` (a filter applied when the stored samples are read)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens}


STARTING_POINTS = ("base", "sft")


@dataclass
class StartingPointConfig(Validated):
    """For methods that improve an already-capable model (sharpening, Self-Explore).

    `base`: the model as `model=` builds it (an instruct model, say). `sft`: that model after SFT with
    the training keys under `sft` (defaults: `algorithm=sft`'s), trained once and reused from the stage
    cache, so that the `algorithm=sft` job of a sweep and every method starting from it share one SFT
    model whenever their keys are equal (set `algorithm.sft.<key>` like `algorithm.<key>` of algorithm=sft).
    """

    starting_point: str = "base"
    sft: TrainingConfig = field(default_factory=TrainingConfig)  # the SFT stage's keys when starting_point=sft

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.starting_point in STARTING_POINTS, f"{prefix}.starting_point",
                f"must be one of {list(STARTING_POINTS)}", self.starting_point)


PROMPT_POOLS = ("test", "heldout", "train")


@dataclass
class PromptPoolConfig(Validated):
    """Which prompts a label-free method sharpens (it never sees their labels):

    test     the evaluation prompts: the sharpening paper's protocol (it sharpens the very prompts it reports on)
    heldout  a pool disjoint from SFT's training data and from the test prompts (`dataset.heldout_size`): what a
             comparison across methods uses, so that no method trains on the prompts it is scored on
    train    SFT's own training prompts
    """

    prompt_pool: str = "test"

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.prompt_pool in PROMPT_POOLS, f"{prefix}.prompt_pool", f"must be one of {list(PROMPT_POOLS)}",
                self.prompt_pool)

    def pool_prompts(self, data, limit: int | None) -> list[str]:
        """The first `limit` prompts (None: all) of the chosen pool of `data` (a TaskData)."""
        from framework.errors import ConfigError

        split = {"test": data.test, "heldout": data.heldout, "train": data.train}[self.prompt_pool]
        if split is None:
            raise ConfigError("algorithm.prompt_pool=heldout: this dataset has no held-out pool (the embedded task "
                              "makes one with dataset.heldout_size=<N>); use prompt_pool=test or train")
        prompts = list(split["prompt"])
        return prompts if limit is None else prompts[:limit]


# ---------------------------------------------------------------------------- group bases
@dataclass
class AlgorithmConfig(Validated):
    name: str = MISSING  # registry key of the algorithm plugin


@dataclass
class DecoderConfig(Validated):
    name: str = MISSING  # registry key of the decoder
    max_new_tokens: int = 512  # generated tokens per response, at most; the YAMLs follow ${dataset.max_new_tokens}
    # the first max_problems problems of the test split (null: all); an expensive decoder can score fewer
    # problems than greedy and beam search in the same sweep (the report pairs comparisons on common problems)
    max_problems: int | None = None

    # Keys this decoder's label always shows; any other key appears only when it differs from its default.
    # Keys shown in the label even at their defaults (a decoder's defining keys: beam's width, say).
    LABEL_KEYS: ClassVar[tuple[str, ...]] = ()
    # Keys left out of labels: the option name (the label's head) and the generation length, which follows the
    # dataset (a subclass adds its own, as bon does).
    LABEL_OMITS: ClassVar[tuple[str, ...]] = ("name", "max_new_tokens")

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.max_new_tokens >= 1, f"{prefix}.max_new_tokens", "must be >= 1", self.max_new_tokens)
        require(self.max_problems is None or self.max_problems >= 1, f"{prefix}.max_problems",
                "must be >= 1, or null for the whole test split", self.max_problems)

    def label(self) -> str:
        """A short label for tables and run names: `bon(selector=logprob, samples_per_prompt=16, temperature=1.0)`."""
        defaults = type(self)()
        shown = {key: value for key, value in vars(self).items()
                 if key not in self.LABEL_OMITS and (key in self.LABEL_KEYS or value != getattr(defaults, key, None))}
        return self.name + (f"({', '.join(f'{k}={v}' for k, v in shown.items())})" if shown else "")


@dataclass
class EngineConfig(Validated):
    """The generation engine every stage that generates uses (framework/generation.py)."""

    name: str = MISSING
    # sequences (prompts x samples) per shard of a generating stage: the unit an interrupted stage resumes from and
    # that several processes split; the engine batches within a shard by its own budget
    rows_per_shard: int = 4096

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.rows_per_shard >= 1, f"{prefix}.rows_per_shard", "must be >= 1", self.rows_per_shard)


@dataclass
class DatasetConfig(Validated):
    name: str = MISSING  # registry key of the dataset loader
    path: str | None = None  # local directory with train.jsonl / test.jsonl; overrides the built-in source
    train_size: int | None = None  # first N training rows (None: all)
    test_size: int | None = None  # first N test rows (None: all)
    # problems held out for validation (evaluation.during_training, evaluation.objective=validation); 0: none. The
    # embedded task generates fresh ones; a real dataset takes the last N rows of its training split, out of training
    validation_size: int = 0
    prompt_template: str = "{question}\n"  # how a question becomes the model's prompt
    # generation length of every decoder and sampling stage unless set there (their YAMLs interpolate it);
    # the papers': GSM8K 512, MATH / MATH-500 / GAOKAO 1024 new tokens (a truncated solution is wrong)
    max_new_tokens: int = 512

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        for key in ("train_size", "test_size"):
            value = getattr(self, key)
            require(value is None or value >= 1, f"{prefix}.{key}", "must be >= 1 or null", value)
        require(self.validation_size >= 0, f"{prefix}.validation_size", "must be >= 0 (0: no validation split)",
                self.validation_size)
        require("{question}" in self.prompt_template, f"{prefix}.prompt_template",
                "must contain the placeholder {question}", self.prompt_template)
        require(self.max_new_tokens >= 1, f"{prefix}.max_new_tokens", "must be >= 1", self.max_new_tokens)


LORA_CHECKPOINTS = ("merged", "adapter")


@dataclass
class LoraSettings(Validated):
    """LoRA (peft) for every training algorithm: the trainers get a `peft.LoraConfig` and train adapters only.

    DPO-style methods then need no second model in memory: TRL scores the reference with the adapter
    switched off. `checkpoint: merged` stores the stage as full weights (adapter folded in: later stages
    and vLLM load it like any model); `adapter` stores only the adapter (megabytes), merged on load.
    """

    enabled: bool = False
    rank: int = 16  # r: the adapter's inner dimension
    alpha: float = 32.0  # scaling: the update is (alpha / rank) * B A
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])  # peft names; all-linear: every Linear but the LM head
    checkpoint: str = "merged"  # merged | adapter

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.rank >= 1, f"{prefix}.rank", "must be >= 1", self.rank)
        require(math.isfinite(self.alpha) and self.alpha > 0, f"{prefix}.alpha", "must be > 0", self.alpha)
        require(0 <= self.dropout < 1, f"{prefix}.dropout", "must be in [0, 1)", self.dropout)
        require(bool(self.target_modules) and all(str(m).strip() for m in self.target_modules),
                f"{prefix}.target_modules", "must be a non-empty list of module names", list(self.target_modules))
        require(self.checkpoint in LORA_CHECKPOINTS, f"{prefix}.checkpoint", f"must be one of {list(LORA_CHECKPOINTS)}",
                self.checkpoint)

    def spec(self) -> dict | None:
        """What LoRA changes about a trained stage's weights (None when off, so full-weight keys stay put)."""
        if not self.enabled:
            return None
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout,
                "target_modules": sorted(self.target_modules), "checkpoint": self.checkpoint}


ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


@dataclass
class ModelConfig(Validated):
    name: str = MISSING  # registry key of the model builder
    precision: str = "auto"  # the dtype: auto (bf16 on a bf16-capable GPU, else fp32) | fp32 | bf16 | fp16
    attn_implementation: str | None = None  # null: transformers' default (sdpa) | eager | flash_attention_2 | ...
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~10-30% slower
    lora: LoraSettings = field(default_factory=LoraSettings)

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.precision in ("auto", "fp32", "bf16", "fp16"), f"{prefix}.precision",
                "must be one of auto, fp32, bf16, fp16", self.precision)
        require(self.attn_implementation is None or self.attn_implementation in ATTENTION_IMPLEMENTATIONS,
                f"{prefix}.attn_implementation", f"must be null or one of {list(ATTENTION_IMPLEMENTATIONS)}",
                self.attn_implementation)

    def architecture(self):
        """(transformers config, tokenizer or None) of the model this node builds, read without its weights or any
        stage: what the pre-flight plan (framework/plan.py) computes with. A model plugin that cannot say refuses."""
        raise ConfigError(f"model={self.name}: this model plugin gives no architecture, so no memory plan "
                          "(plan.check=false runs without one)")

    def load_options(self) -> dict:
        """from_pretrained keyword arguments every model of this run is loaded with."""
        return {"attn_implementation": self.attn_implementation} if self.attn_implementation else {}


@dataclass
class LoggerConfig(Validated):
    name: str = MISSING


@dataclass
class WandbLoggerConfig(LoggerConfig):
    name: str = "wandb"
    project: str = "reasoning-posttrain"
    entity: str | None = None
    mode: str = "offline"  # offline (sync later with `wandb sync`) | online | disabled
    group: str | None = None  # default: the multirun sweep directory's name, so a sweep's runs group
    tags: list[str] = field(default_factory=list)
    log_generations: bool = True  # the scored generations as a wandb.Table
    max_table_rows: int = 500

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.mode in ("offline", "online", "disabled"), f"{prefix}.mode",
                "must be one of offline, online, disabled", self.mode)
        require(self.max_table_rows >= 0, f"{prefix}.max_table_rows", "must be >= 0", self.max_table_rows)


@dataclass
class NoLoggerConfig(LoggerConfig):
    name: str = "none"


@dataclass
class StagesConfig(Validated):
    """Where trained models and other stage outputs are stored, and whether to reuse them."""

    cache_dir: str = MISSING  # resolved from FRAMEWORK_CACHE_DIR or ./.cache/framework in conf/config.yaml
    reuse: bool = True  # false: recompute every stage and overwrite its stored output


@dataclass
class DuringTrainingConfig(Validated):
    """Greedy accuracy on the validation split while a method trains (framework/algorithms/validation.py): a curve
    against the optimizer step, and the checkpoint that scored best kept beside the last one. Off unless
    `every_steps` or `each_epoch` is set."""

    every_steps: int | None = None  # score every N optimizer steps; null: not by steps
    each_epoch: bool = False  # score at the end of each epoch
    max_problems: int | None = None  # the first N problems of the validation split (null: all of it)

    @property
    def enabled(self) -> bool:
        return self.every_steps is not None or self.each_epoch

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.every_steps is None or self.every_steps >= 1, f"{prefix}.every_steps",
                "must be >= 1, or null (not by steps)", self.every_steps)
        require(self.max_problems is None or self.max_problems >= 1, f"{prefix}.max_problems",
                "must be >= 1, or null for the whole validation split", self.max_problems)


OBJECTIVES = ("test", "validation")


@dataclass
class EvaluationConfig(Validated):
    """What evaluation measures beyond accuracy."""

    diagnostics: bool = True  # over-optimism: gold-demonstration log-probs (one forward pass per test problem)
    sequences_per_forward: int = 32  # batch of the gold-demonstration scoring pass
    # Decoders (names) under which a job of a method that trains after SFT also trains the method's control
    # (SFT on the gold demonstrations from the same model, with the method's steps, learning rate and schedule;
    # framework/algorithms/starting.py) and evaluates it beside the method, into <job dir>/control/.
    control_decoders: list[str] = field(default_factory=list)
    # whether the method's training data meets its premises (framework/premises.py), scored with the gold
    # answers after training: one greedy pass over the sharpening methods' sampled prompts, cached
    premises: bool = True
    # More datasets the job's model is scored on, beside its training dataset's test split: name -> a dataset
    # option placed here by Hydra (`+dataset@evaluation.datasets.gsm8k=gsm8k`), each with its own prompts, checker
    # and generation length. The name heads its table in the report, results.json's `evaluations` and W&B's
    # `eval/<name>/` keys. Empty: the training dataset only.
    datasets: dict[str, Any] = field(default_factory=dict)
    during_training: DuringTrainingConfig = field(default_factory=DuringTrainingConfig)
    # what a job returns to a sweeper that optimises (sweeps/search_sft.yaml): its decoder's accuracy on the test
    # split, or on the validation split (dataset.validation_size), so that a search does not select on test prompts
    objective: str = "test"

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.objective in OBJECTIVES, f"{prefix}.objective", f"must be one of {list(OBJECTIVES)}",
                self.objective)
        require(self.sequences_per_forward >= 1, f"{prefix}.sequences_per_forward", "must be >= 1",
                self.sequences_per_forward)
        for name, dataset in self.datasets.items():
            key = f"{prefix}.datasets.{name}"
            # the name becomes a directory (<job dir>/evaluations/<name>/) and a W&B key
            require(re.fullmatch(r"[A-Za-z0-9_-]+", name) is not None, key,
                    "must be named with letters, digits, _ and - only", name)
            if not isinstance(dataset, DatasetConfig):
                raise ConfigError(f"{key}: is not a dataset option (got {dataset!r}); add one with "
                                  f"+dataset@{key}=<option>, e.g. +dataset@{prefix}.datasets.gsm8k=gsm8k")
            dataset.validate(key)


@dataclass
class PlanConfig(Validated):
    """The pre-flight plan (framework/plan.py): which GPU a plan is for, how many, how training is sharded."""

    gpu: str = "auto"  # auto: the GPU this run is on (on a CPU: no plan, no check) | a key of framework.plan.GPUS
    gpus: int | None = None  # GPUs (processes) of the job; null: the processes it runs as (WORLD_SIZE)
    sharding: str = "auto"  # auto: from `accelerate launch`'s config (DeepSpeed ZeRO stage, FSDP) | none | zero2 | zero3 | fsdp
    check: bool = True  # a real run refuses, before any work, a stage whose estimated peak cannot fit

    def checks(self, prefix: str) -> None:
        from framework.plan import GPUS, SHARDINGS

        super().checks(prefix)
        require(self.gpu == "auto" or self.gpu in GPUS, f"{prefix}.gpu", f"must be auto or one of {sorted(GPUS)}",
                self.gpu)
        require(self.gpus is None or self.gpus >= 1, f"{prefix}.gpus", "must be >= 1 or null", self.gpus)
        require(self.sharding in SHARDINGS, f"{prefix}.sharding", f"must be one of {list(SHARDINGS)}", self.sharding)


@dataclass
class RunConfig(Validated):
    model: Any = MISSING
    dataset: Any = MISSING
    algorithm: Any = MISSING
    decoder: Any = MISSING
    engine: Any = MISSING
    logger: Any = MISSING
    stages: StagesConfig = field(default_factory=StagesConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    seed: int = 0  # seeds training, sampling and data order
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    run_name: str | None = None  # W&B run name; default: "<algorithm>-<decoder>-seed<seed>"

    def validate(self, prefix: str = "") -> None:
        """Top-level keys have no prefix: each group node is checked under its own name."""
        require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
                "device", "must be auto, cpu, cuda or cuda:N", self.device)
        require_seed(self.seed, "seed")
        for group in GROUP_BASES:
            getattr(self, group).validate(group)
        if self.engine.name == "vllm":  # vLLM loads weights from a directory itself
            require(not (self.model.lora.enabled and self.model.lora.checkpoint == "adapter"), "engine",
                    "vllm needs full weights on disk; with LoRA set model.lora.checkpoint=merged", "vllm")
            require(not getattr(self.model, "gguf_file", None) or getattr(self.model, "cache_dequantized", True),
                    "engine", "vllm cannot read GGUF here; set model.cache_dequantized=true", "vllm")
            require(not (self.model.lora.enabled and self.evaluation.during_training.enabled),
                    "evaluation.during_training", "keeps a LoRA checkpoint as its adapter, which vllm cannot load; "
                    "use engine=transformers or turn it off", "on")
        self.check_decoding(self.dataset, self.decoder, "dataset")
        self.stages.validate("stages")
        self.evaluation.validate("evaluation")
        validation = getattr(self.dataset, "validation_size", 0)
        require(not self.evaluation.during_training.enabled or validation > 0, "evaluation.during_training",
                "scores a validation split, and dataset.validation_size is 0; set dataset.validation_size=<N>",
                {"every_steps": self.evaluation.during_training.every_steps,
                 "each_epoch": self.evaluation.during_training.each_epoch})
        require(self.evaluation.objective != "validation" or validation > 0, "evaluation.objective",
                "=validation needs a validation split; set dataset.validation_size=<N>", self.evaluation.objective)
        # sharded weights (ZeRO-3, FSDP) cannot decode on one process, and the kept checkpoint's save needs every
        # process at the same point: the curve is scored in single-process jobs only
        from framework import distributed

        processes = distributed.launched_world_size()
        require(not self.evaluation.during_training.enabled or processes == 1, "evaluation.during_training",
                f"runs in a single process, and this job runs as {processes}; launch it without accelerate/torchrun "
                "or turn it off", "on")
        self.plan.validate("plan")

    def check_decoding(self, dataset, decoder, dataset_key: str) -> None:
        """What the engine cannot decode on this dataset with this decoder (the training dataset's, and each of
        evaluation.datasets's with the decoder as it runs there)."""
        if self.engine.name != "vllm":
            return
        # the engine refuses it too (vllm_backend.check_request), but only at decoding, after training
        require(getattr(decoder, "num_beams", 1) <= 1 or getattr(decoder, "length_penalty", 0) == 0,
                "decoder.length_penalty", "must be 0 for beam search with engine=vllm (vLLM's length counts "
                "the prompt's tokens)", getattr(decoder, "length_penalty", None))
        require(getattr(decoder, "num_beams", 1) <= 1 or getattr(dataset, "prompt_format", "") != "few_shot",
                f"{dataset_key}.prompt_format", "must not be few_shot for beam search with engine=vllm (vLLM's beam "
                "search cannot stop at the next exemplar; engine=transformers can)",
                getattr(dataset, "prompt_format", None))


GROUP_BASES = {
    "model": ModelConfig,
    "dataset": DatasetConfig,
    "algorithm": AlgorithmConfig,
    "decoder": DecoderConfig,
    "engine": EngineConfig,
    "logger": LoggerConfig,
}


def register_schema(group: str, name: str, schema: type, *, as_option: bool = False) -> None:
    """Store `schema` as `<group>/<name>_schema`; YAML options extend it. `as_option` also makes the
    bare schema selectable as `<group>=<name>`, for plugins that ship no YAML (external packages)."""
    if group not in GROUP_BASES:
        raise ValueError(f"unknown config group {group!r}; expected one of {sorted(GROUP_BASES)}")
    if not (is_dataclass(schema) and issubclass(schema, GROUP_BASES[group])):
        raise TypeError(f"{schema!r} must be a dataclass subclassing {GROUP_BASES[group].__name__}")
    store = ConfigStore.instance()
    store.store(group=group, name=f"{name}_schema", node=schema)
    if as_option:
        store.store(group=group, name=name, node=schema)


_BASE_REGISTERED = False


def register_base_schemas() -> None:
    global _BASE_REGISTERED
    if _BASE_REGISTERED:
        return
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    register_schema("logger", "wandb", WandbLoggerConfig)
    register_schema("logger", "none", NoLoggerConfig)
    _BASE_REGISTERED = True


def unknown_key_message(root: DictConfig | None, full_key: str, schema: type) -> str:
    """One line for a key that `schema` (the node holding it) has no field for: the full key, a close
    field name if there is one, and which option lacks it (`root` holds the chosen options' names)."""
    parent, _, key = full_key.rpartition(".")
    known = [item.name for item in fields(schema)] if is_dataclass(schema) else []
    close = difflib.get_close_matches(key, known, n=1)
    guess = f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else ""
    group = full_key.split(".")[0]
    name = (OmegaConf.select(root, f"{group}.name", default=None, throw_on_missing=False)
            if group in GROUP_BASES and root is not None else None)
    entry = re.match(r"evaluation\.datasets\.[^.]+", full_key)  # a dataset option placed in the evaluation list
    entry_name = (OmegaConf.select(root, f"{entry.group(0)}.name", default=None, throw_on_missing=False)
                  if entry and root is not None else None)
    if parent and isinstance(entry_name, str):
        owner, listing = (f"{entry.group(0)} (dataset={entry_name}) has no such key",
                          f"python -m framework --cfg job dataset={entry_name}")
    elif parent and isinstance(name, str):
        owner, listing = f"{group}={name} has no such key", f"python -m framework --cfg job {group}={name}"
    elif group == "hydra" and parent:
        owner, listing = "Hydra's config has no such key", "python -m framework --cfg hydra"
    else:
        owner, listing = "the run config has no such key", "python -m framework --cfg job"
    return f"{full_key}: unknown key{guess}; {owner} ({listing} lists its keys)"


def refuse_unknown_keys(node, root: DictConfig, prefix: str = "") -> None:
    """Raise ConfigError for the first key no schema field holds. `+key=value` adds a key even to a typed
    node (Hydra opens struct mode for it) and OmegaConf.to_object silently drops it, so a misspelt or
    stray key (`+algorithm.learning_rte`, `+algorithm._target_`) would otherwise do nothing.

    Walks nodes, not values (omegaconf's `_get_node`/`_is_*`): reading a value would resolve interpolations."""
    if node._is_none() or node._is_missing() or node._is_interpolation():
        return  # no keys of its own (an interpolation's target is checked where it lives)
    if isinstance(node, ListConfig):
        for index in range(len(node)):
            refuse_unknown_keys(node._get_node(index), root, f"{prefix[:-1]}[{index}].")
        return
    schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    if not is_dataclass(schema):  # a value, or a plain dict (a field typed dict or Any): its keys are data,
        if isinstance(node, DictConfig):  # but a schema node among its values (evaluation.datasets') is checked
            for key in node:
                child = node._get_node(key)
                if isinstance(child, DictConfig) and is_dataclass(OmegaConf.get_type(child)):
                    refuse_unknown_keys(child, root, f"{prefix}{key}.")
        return
    known = {item.name for item in fields(schema)}
    for key in node:
        if key not in known:
            raise ConfigError(unknown_key_message(root, f"{prefix}{key}", schema))
        refuse_unknown_keys(node._get_node(key), root, f"{prefix}{key}.")


@dataclass
class EvaluationTarget:
    """One dataset a job's model is scored on: the training dataset's test split, or an entry of
    evaluation.datasets, with the decoder as it runs there."""

    name: str  # results.json's and the report's name: the training dataset's option name, or the entry's key
    key: str  # where its keys live: `dataset` or `evaluation.datasets.<name>`
    dataset: DatasetConfig
    # the job's decoder, with the keys that follow the dataset in its YAML (max_new_tokens: ${dataset.max_new_tokens})
    # read from this dataset; a key set on the command line or in a preset is the same on every dataset
    decoder: DecoderConfig


def evaluation_targets(cfg: DictConfig, run: RunConfig) -> list[EvaluationTarget]:
    """The training dataset, then every entry of evaluation.datasets but one named like the training dataset (a
    preset's `gsm8k` entry in a job that trains on dataset=gsm8k): that dataset is scored once, with the training
    dataset's keys, so its results and table stay one. ConfigError, naming the entry, for a decoder the engine
    cannot run on an entry. `run` is `to_validated(cfg)`."""
    import copy

    from omegaconf import open_dict, read_write

    targets = [EvaluationTarget(run.dataset.name, "dataset", run.dataset, run.decoder)]
    for name, dataset in run.evaluation.datasets.items():
        if name == run.dataset.name:
            continue
        key = f"evaluation.datasets.{name}"
        # the decoder's interpolations resolved against this dataset: the composed config with it as `dataset`
        view = copy.deepcopy(cfg)
        with read_write(view), open_dict(view):
            view.dataset = cfg.evaluation.datasets[name]
        try:
            decoder = OmegaConf.to_object(view.decoder)
        except Exception as error:  # an interpolation into a key this dataset lacks
            raise ConfigError(f"decoder on {key}: {getattr(error, 'msg', error)}") from None
        decoder.validate("decoder")  # the keys this dataset gave it (max_new_tokens) were checked on the dataset
        run.check_decoding(dataset, decoder, key)
        targets.append(EvaluationTarget(name, key, dataset, decoder))
    return targets


def to_validated(cfg: DictConfig) -> RunConfig:
    """Turn the composed config into schema objects and run every value check.

    Raises ConfigError with the first failing key; nothing has been built or trained at this point.
    """
    from omegaconf.errors import OmegaConfBaseException

    refuse_unknown_keys(cfg, cfg)
    try:
        run = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as error:  # missing mandatory value, bad interpolation, ...
        key = getattr(error, "full_key", None) or "config"
        raise ConfigError(f"{key}: {error.msg if hasattr(error, 'msg') else error}") from None
    if not isinstance(run, RunConfig):
        raise ConfigError("the composed config does not follow the run schema (conf/config.yaml must start "
                          "with `defaults: [run_schema, ...]`)")
    for group, base in GROUP_BASES.items():
        node = getattr(run, group)
        if not isinstance(node, base):
            raise ConfigError(f"{group}: the selected option has no registered schema; its YAML must list "
                              f"`<name>_schema` in its defaults (got keys {sorted(dict(node)) if node else node})")
    run.validate()
    return run
