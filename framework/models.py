"""Model plugins. Each turns its config node into a `ModelHandle`: where the weights are and how to load
them. Algorithms load fresh copies from a handle and return a new handle for what they trained, so
the evaluation code and the next stage never care where a model came from.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from framework import registry
from framework.config import ModelConfig, require, require_seed
from framework.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Where and in what precision models run: derived once from `device` and `model.precision`."""

    device: str  # "cpu" or "cuda[:N]"
    precision: str  # "fp32" | "bf16" | "fp16"

    @property
    def torch_dtype(self):
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

    def training_dtype(self, adapters: bool):
        """The dtype a model is loaded in to be trained. Full fine-tuning under bf16 or fp16 keeps fp32 weights,
        the master copy, and trains under autocast (`trainer_kwargs`: bf16=True / fp16=True), as TRL does when it
        loads a model by name: a bf16 weight near 0.02 moves only in steps of ~1e-4, so AdamW's ~1e-6 updates at the
        papers' rates would round to nothing (pure-bf16 AdamW keeps ~2% of the fp32 update; tests/test_models.py).
        It costs 16 bytes a parameter (fp32 weights, gradients and Adam's two moments) instead of 8 (the plan,
        framework/plan.py, refuses a run where that cannot fit). With LoRA (`adapters`) the frozen base stays in the
        run's dtype: peft keeps the adapters, the only weights that move, in fp32."""
        import torch

        return self.torch_dtype if adapters else torch.float32

    def trainer_kwargs(self) -> dict:
        """TrainingArguments precision flags. Always explicit: TRL's configs default to bf16=True,
        which on a CPU without native bf16 runs ~20x slower than fp32 (measured on this project's CI)."""
        return {"bf16": self.precision == "bf16", "fp16": self.precision == "fp16", "use_cpu": self.device == "cpu"}


def resolve_runtime(device: str, precision: str) -> Runtime:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} was asked for but torch sees no CUDA device")
    if precision == "auto":
        precision = "bf16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "fp32"
    if precision != "fp32" and device == "cpu":
        raise ConfigError(f"model.precision: {precision} training is not supported on CPU here; use fp32 or auto")
    return Runtime(device, precision)


@dataclass
class ModelHandle:
    path: str  # a local directory or a hub name
    fingerprint: dict  # what determines these weights; part of every downstream stage key
    load_kwargs: dict = field(default_factory=dict)  # extra from_pretrained arguments (gguf_file, revision, ...)
    adapter_base: "ModelHandle | None" = None  # set when `path` holds only a LoRA adapter trained on this model

    def load_tokenizer(self):
        from transformers import AutoTokenizer

        tokenizer_kwargs = {key: value for key, value in self.load_kwargs.items() if key != "attn_implementation"}
        tokenizer = AutoTokenizer.from_pretrained(self.path, **tokenizer_kwargs)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"  # decoder-only generation pads on the left
        return tokenizer

    def load_model(self, runtime: Runtime, dtype=None):
        """The model on the run's device, in the run's dtype unless `dtype` (a torch dtype) says otherwise:
        trainers ask for `runtime.training_dtype(...)`."""
        from transformers import AutoModelForCausalLM

        if self.adapter_base is not None:
            from peft import PeftModel

            # fold the adapter in: every consumer (decoders, the next stage's trainer) sees a plain model
            model = self.adapter_base.load_model(runtime, dtype)
            return PeftModel.from_pretrained(model, self.path).merge_and_unload()
        model = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype or runtime.torch_dtype, **self.load_kwargs)
        if "gguf_file" in self.load_kwargs:
            plain_weights(model)
        return model.to(runtime.device)


def plain_weights(model):
    """A GGUF-loaded model whose weights transformers already unpacked into dense tensors (the case
    without a GGUF matmul kernel) still carries its quantizer, which makes Trainer refuse to train it and
    `save_pretrained` refuse to save it; drop it. Weights still in GGUF blocks cannot be trained: refuse."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return model
    if not all(parameter.is_floating_point() for parameter in model.parameters()):
        raise ConfigError("model.gguf_file: transformers kept this GGUF file's weights quantized (a GGUF kernel is "
                          "installed); uninstall `kernels` or convert the file to safetensors first")
    quantizer.remove_quantization_config(model)
    return model


# ---------------------------------------------------------------------------- tiny (embedded default)
@dataclass
class TinyModelConfig(ModelConfig):
    name: str = "tiny"
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4  # head size 32: vLLM's CPU attention refuses 16
    intermediate_size: int = 256
    max_positions: int = 256  # tokens; arith problems are ~30-80 tokens
    init_seed: int = 0  # weight initialisation and pretraining order (independent of the run seed)
    pretrain_steps: int = 1500  # causal-LM steps on arith text before any method runs; 0 = random init
    pretrain_examples: int = 20000  # distinct arith problems in the pretraining corpus
    pretrain_batch_size: int = 32
    pretrain_learning_rate: float = 3e-3

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions",
                    "pretrain_batch_size"):
            require(getattr(self, key) >= 1, f"{prefix}.{key}", "must be >= 1", getattr(self, key))
        require(self.hidden_size % self.num_heads == 0, f"{prefix}.hidden_size",
                "must be divisible by num_heads", (self.hidden_size, self.num_heads))
        require(self.pretrain_steps >= 0, f"{prefix}.pretrain_steps", "must be >= 0", self.pretrain_steps)
        require(self.pretrain_examples >= 1, f"{prefix}.pretrain_examples", "must be >= 1", self.pretrain_examples)
        require_seed(self.init_seed, f"{prefix}.init_seed")

    def architecture(self):
        """The tiny model's config and tokenizer, from the model built on the meta device (nothing allocated, no
        pretraining; the global RNG left as it was)."""
        import torch

        from framework import tiny

        tokenizer = tiny.build_tokenizer()
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = tiny.build_model(tokenizer, hidden_size=self.hidden_size, num_layers=self.num_layers,
                                     num_heads=self.num_heads, intermediate_size=self.intermediate_size,
                                     max_positions=self.max_positions, seed=self.init_seed)
        return model.config, tokenizer
        require(self.pretrain_learning_rate > 0, f"{prefix}.pretrain_learning_rate", "must be > 0",
                self.pretrain_learning_rate)


@registry.models.register("tiny", TinyModelConfig)
def build_tiny(config: TinyModelConfig, stages, runtime: Runtime) -> ModelHandle:
    from framework import tiny
    from framework.data import arith

    spec = {key: value for key, value in vars(config).items() if key != "precision"}
    spec["tiny_version"] = tiny.TINY_VERSION
    spec["generator_version"] = arith.GENERATOR_VERSION
    with stages.open("base-tiny", spec, collective=True, code=(__name__, "framework.tiny"), shared=True) as stage:  # pretraining: every process takes part
        if not stage.done:
            log.info("building the tiny base model (once; cached in %s)", stage.dir)
            tokenizer = tiny.build_tokenizer()
            model = tiny.build_model(tokenizer, hidden_size=config.hidden_size, num_layers=config.num_layers,
                                     num_heads=config.num_heads, intermediate_size=config.intermediate_size,
                                     max_positions=config.max_positions, seed=config.init_seed)
            # The pretraining corpus is its own split of the default generator, disjoint from any
            # default train/test question by seed; it teaches the format and some arithmetic.
            corpus = arith.generate_splits(tiny.PRETRAIN_SPEC, {"pretrain": config.pretrain_examples},
                                           seed=10_000 + config.init_seed)["pretrain"]
            texts = [f"{row['question']}\n{row['answer']}{tokenizer.eos_token}" for row in corpus]
            tiny.pretrain(model.to(runtime.device), tokenizer, texts, output_dir=str(stage.checkpoints),
                          max_steps=config.pretrain_steps, batch_size=config.pretrain_batch_size,
                          learning_rate=config.pretrain_learning_rate, seed=config.init_seed,
                          trainer_kwargs=runtime.trainer_kwargs())
            output = stage.new_output_dir()
            model.save_pretrained(output)
            tokenizer.save_pretrained(output)
            stage.commit({"parameters": sum(p.numel() for p in model.parameters())})
    return ModelHandle(str(stage.output), {"base": "tiny", "stage": stage.key}, config.load_options())


# ---------------------------------------------------------------------------- hub name or local path
@dataclass
class HFModelConfig(ModelConfig):
    name: str = "hf"
    name_or_path: str = MISSING  # hub name (needs network or the HF cache) or local directory;
    #                              "pkg:<python package>" means that installed package's directory
    revision: str | None = None
    gguf_file: str | None = None  # a GGUF file inside name_or_path, dequantised on load by transformers
    cache_dequantized: bool = True  # GGUF: dequantise once into the stage cache (safetensors), then load that
    trust_remote_code: bool = False  # never on by default: it runs code from the model repository

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(bool(self.name_or_path.strip()), f"{prefix}.name_or_path", "must not be empty", self.name_or_path)

    def architecture(self):
        """The model's config (its config.json, or a GGUF file's header) and tokenizer, or None for a directory
        without one (a config-only directory: the plan estimates token counts from characters)."""
        from transformers import AutoConfig, AutoTokenizer

        location = _resolve_location(self.name_or_path)
        is_local = Path(location).is_dir()
        if not is_local and os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
            raise ConfigError(f"model.name_or_path: {self.name_or_path!r} is not a local directory and HF_HUB_OFFLINE "
                              "is set, so its config cannot be read for the plan; give a local path")
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if self.revision:
            kwargs["revision"] = self.revision
        if self.gguf_file:
            kwargs["gguf_file"] = self.gguf_file
        with _readable_load_errors(self.name_or_path, is_local):
            config = AutoConfig.from_pretrained(location, **kwargs)
        try:
            tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        except (OSError, ValueError, TypeError, KeyError):
            tokenizer = None
        if tokenizer is not None and not tokenizer("1 + 1 = 2", add_special_tokens=False)["input_ids"]:
            tokenizer = None  # built from the config alone, with no vocabulary: it would count every text as empty
        return config, tokenizer


def _resolve_location(name_or_path: str) -> str:
    if name_or_path.startswith("pkg:"):
        package = name_or_path[4:]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"model.name_or_path: package {package!r} is not installed "
                              f"(model=smollm2_gguf: docs/configuration.md, the config reference)")
        return list(spec.submodule_search_locations)[0]
    return os.path.expanduser(name_or_path)


@registry.models.register("hf", HFModelConfig)
def build_hf(config: HFModelConfig, stages, runtime: Runtime) -> ModelHandle:
    from transformers import AutoConfig

    location = _resolve_location(config.name_or_path)
    load_kwargs: dict[str, Any] = {"trust_remote_code": config.trust_remote_code}
    if config.revision:
        load_kwargs["revision"] = config.revision
    if config.gguf_file:
        load_kwargs["gguf_file"] = config.gguf_file
    is_local = Path(location).is_dir()
    if not is_local and os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise ConfigError(f"model.name_or_path: {config.name_or_path!r} is not a local directory and HF_HUB_OFFLINE "
                          "is set, so it cannot be fetched from the hub; give a local path")
    fingerprint = {"base": "hf", "name_or_path": config.name_or_path, "revision": config.revision,
                   "gguf_file": config.gguf_file}
    with _readable_load_errors(config.name_or_path, is_local):
        if config.gguf_file and config.cache_dequantized and is_local:
            # no config check here: reading a GGUF header takes ~10 s, and a cached stage needs none
            return _dequantized_gguf(location, load_kwargs, fingerprint, stages, runtime, config.load_options())
        AutoConfig.from_pretrained(location, **load_kwargs)  # a wrong name fails before any data is built
    return ModelHandle(location, fingerprint, {**load_kwargs, **config.load_options()})


@contextmanager
def _readable_load_errors(name_or_path: str, is_local: bool):
    try:
        yield
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = "local directory" if is_local else "hub name (offline, misspelt or gated?)"
        raise ConfigError(f"model.name_or_path: cannot load {name_or_path!r} as a {where}: {first_line}") from None


def _dequantized_gguf(location: str, load_kwargs: dict, fingerprint: dict, stages, runtime: Runtime,
                      load_options: dict) -> ModelHandle:
    """Dequantise a GGUF checkpoint once and keep it as a stage: transformers dequantises GGUF on every
    `from_pretrained` (~17 s for SmolLM2-135M on 2 cores), and a training job loads its model several
    times (policy, reference, evaluation). The stage is keyed by the file's size and mtime, not its
    digest, so a multi-GB file is not hashed on every run."""
    file = Path(location) / load_kwargs["gguf_file"]
    if not file.is_file():
        raise ConfigError(f"model.gguf_file: no file {load_kwargs['gguf_file']!r} in {location}")
    stat = file.stat()
    spec = {**fingerprint, "gguf_bytes": stat.st_size, "gguf_mtime_ns": stat.st_mtime_ns}
    with stages.open("base-gguf", spec, code=__name__, shared=True) as stage:
        if not stage.done:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            log.info("dequantising %s once into %s", file.name, stage.dir)
            model = plain_weights(AutoModelForCausalLM.from_pretrained(location, **load_kwargs))  # fp32: lossless
            tokenizer = AutoTokenizer.from_pretrained(location, **load_kwargs)
            output = stage.new_output_dir()
            model.save_pretrained(output)
            tokenizer.save_pretrained(output)
            stage.commit({"parameters": sum(p.numel() for p in model.parameters())})
    kept = {key: value for key, value in load_kwargs.items() if key in ("trust_remote_code",)}
    return ModelHandle(str(stage.output), fingerprint, {**kept, **load_options})  # same weights, same key
