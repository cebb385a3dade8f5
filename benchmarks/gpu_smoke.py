"""The GPU smoke check: every training method a few steps and every generating stage once, through the
framework's own code, at the paper presets' shapes, on real-size architectures with random weights; each phase's
peak GPU memory against the memory plan's estimate (framework/plan.py), and training and generation tokens/s.

Offline by design: cluster GPU nodes often have no network. It needs torch, transformers, accelerate and peft
(a stock GPU image) plus the wheels benchmarks/fetch_gpu_wheels.sh downloads; no model weights (random ones, from
the architectures in benchmarks/model_shapes.py: Qwen2.5-1.5B and the 7B DeepSeek-Math shape) and no tokenizer
files (it builds a word-level tokenizer of each model's vocabulary size). One JSON line per phase on stdout; a
phase that fails (an out-of-memory included) reports its error and the next one runs.

    python3 benchmarks/gpu_smoke.py                      # one GPU, the presets' shapes (written for an H100 80GB)
    python3 benchmarks/gpu_smoke.py --phases gen_beam_1.5b,diagnostics_1.5b
    python3 benchmarks/gpu_smoke.py --tiny               # the same phases at tiny shapes on CPU (tests/test_gpu_smoke.py)

Random weights never sample the end-of-sequence token, so every generated row runs to its length limit: the
worst case for memory and time. Training phases run `--steps` optimizer steps; XPO samples 64 new tokens a step
(its preset samples the dataset's length: the step's memory then is the plan's, its time longer).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GIB = 2**30


# ---------------------------------------------------------------------------- scales
@dataclass(frozen=True)
class Scale:
    """The models and each phase's sizes: the presets' (`real`) or tiny ones for a CPU (`tiny`)."""

    models: dict[str, dict]  # shape name -> config values (benchmarks/model_shapes.py's form)
    train_length: int  # tokens per training row (the presets' max_length 1024)
    dpo_length: int  # Self-Explore's DPO on GSM8K: 384
    lora_length: int  # the 7B one-GPU variant's SFT rows (GSM8K: ~564 tokens at most)
    prompt: dict[str, int] = field(default_factory=dict)  # prompt tokens per generating phase
    new_tokens: dict[str, int] = field(default_factory=dict)
    batch: dict[str, int] = field(default_factory=dict)  # prompts (or rows) per call/micro-batch per phase
    per_prompt: dict[str, int] = field(default_factory=dict)  # samples (or beams) per prompt per generating phase


def as_llama(values: dict) -> dict:
    """Qwen2.5's shape (hidden size, layers, heads, 2 KV heads, vocabulary, tied embeddings) as a Llama: transformers 5
    loads the tokenizer of a `qwen2` directory as Qwen2's byte-level BPE, which a made-up tokenizer cannot be, and
    Qwen2 differs from Llama only by its q/k/v biases (0.03% of the 1.5B weights), left out here."""
    values = {key: value for key, value in values.items() if key != "model_type"}
    return {"model_type": "llama", **values}


def _real() -> Scale:
    from benchmarks.model_shapes import SHAPES

    return Scale(
        models={"1.5b": as_llama(SHAPES["qwen2.5-1.5b"]), "7b": SHAPES["deepseek-math-7b"]},
        train_length=1024, dpo_length=384, lora_length=564,
        # soc_paper (MATH-500, 4-shot, 1024 new tokens), self_explore_paper (GSM8K, 512), sharpening (MATH, 512)
        prompt={"greedy": 283, "rationales": 329, "exploration": 841, "beam": 1191, "bon": 517, "diagnostics": 1916},
        new_tokens={"greedy": 512, "rationales": 512, "exploration": 512, "beam": 1024, "bon": 512, "xpo": 64},
        # the presets' batches where they fit one H100 80GB, else the plan's one-GPU variant (docs/memory-plan.md)
        batch={"sft": 8, "soc": 8, "dpo": 4, "dpo_squared": 8, "xpo": 8, "lora": 8, "greedy": 64, "rationales": 1,
               "exploration": 16, "beam": 16, "bon": 2, "diagnostics": 16},
        per_prompt={"greedy": 1, "rationales": 100, "exploration": 4, "beam": 5, "bon": 50})


def _tiny() -> Scale:
    tiny = lambda model_type, kv: {"model_type": model_type, "hidden_size": 64, "intermediate_size": 128,
                                   "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": kv,
                                   "vocab_size": 512, "max_position_embeddings": 512, "tie_word_embeddings": False}
    return Scale(models={"1.5b": tiny("llama", 2), "7b": tiny("llama", 4)}, train_length=48, dpo_length=32,
                 lora_length=40,
                 prompt={"greedy": 16, "rationales": 16, "exploration": 24, "beam": 16, "bon": 16, "diagnostics": 40},
                 new_tokens={"greedy": 8, "rationales": 8, "exploration": 8, "beam": 8, "bon": 8, "xpo": 6},
                 batch={"sft": 2, "soc": 2, "dpo": 2, "dpo_squared": 2, "xpo": 2, "lora": 2, "greedy": 4,
                        "rationales": 1, "exploration": 2, "beam": 2, "bon": 2, "diagnostics": 2},
                 per_prompt={"greedy": 1, "rationales": 4, "exploration": 4, "beam": 3, "bon": 4})


# ---------------------------------------------------------------------------- models, tokenizer, data
def make_tokenizer(vocabulary: int):
    """A word-level tokenizer with exactly `vocabulary` tokens (`w0`, `w1`, ... after the special ones), so that
    every id a random model samples decodes, and a text of n words is n tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {token: index for index, token in enumerate(specials)}
    vocab.update({f"w{i}": len(specials) + i for i in range(vocabulary - len(specials))})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def words(count: int, offset: int = 0) -> str:
    return " ".join(f"w{(offset + i) % 997}" for i in range(count)) + " "


@dataclass
class Model:
    """A random-weights model saved once, as a ModelHandle the framework's stages load."""

    name: str
    handle: object
    shape: object  # framework.plan.Shape
    tokenizer: object


def build_model(name: str, values: dict, directory: Path, device: str) -> Model:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from framework.models import ModelHandle
    from framework.plan import shape_of

    values = dict(values)
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    tokenizer = make_tokenizer(config.vocab_size)
    config.pad_token_id, config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    path = directory / name
    if not (path / "config.json").is_file():
        torch.manual_seed(0)
        with torch.device(device):  # random initialisation on the GPU: seconds for 7B, where the CPU takes minutes
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        del model
        release()
    return Model(name, ModelHandle(str(path), {"base": f"smoke-{name}"}), shape_of(config), tokenizer)


def release() -> None:
    from framework import memory

    memory.release()


def context(model: Model, config, device: str, directory: Path, *, train=None, lora: bool = False,
            checkpointing: bool = False):
    """The AlgorithmContext a method gets, on rows `train` (prompt, completion, ...), in bf16."""
    from datasets import Dataset

    from framework.algorithms import AlgorithmContext
    from framework.config import LoraSettings
    from framework.data.answers import NumericAnswerChecker
    from framework.data.task import TaskData
    from framework.models import HFModelConfig, Runtime
    from framework.stages import StageStore

    rows = train if train is not None else [{"prompt": words(4), "completion": words(4)}]
    data = TaskData(train=Dataset.from_list(rows), test=Dataset.from_list(rows[:1]), checker=NumericAnswerChecker(),
                    fingerprint={"smoke": len(rows)})
    model_config = HFModelConfig(name_or_path=model.handle.path, gradient_checkpointing=checkpointing,
                                 lora=LoraSettings(enabled=lora, dropout=0.0))
    return AlgorithmContext(config=config, base=model.handle, data=data, stages=StageStore(directory / "cache"),
                            runtime=Runtime(device, "bf16"), seed=0, report_to="none", output_dir=directory / "out",
                            model_config=model_config)


# ---------------------------------------------------------------------------- measuring
class Meter:
    """Peak GPU memory over a block (0 on a CPU) and its wall time."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __enter__(self):
        import torch

        release()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()
        self.started = time.time()
        return self

    def __exit__(self, *exc):
        import torch

        self.seconds = time.time() - self.started
        self.peak = (torch.cuda.max_memory_allocated() - self.baseline) if self.cuda else None
        return False


def training_record(meter: Meter, estimate: dict, tokens: float, what: str) -> dict:
    return {"what": what, "seconds": round(meter.seconds, 2), "peak_gib": _gib(meter.peak),
            "estimate_gib": _gib(sum(estimate.values())), "estimate_terms_gib": {k: _gib(v) for k, v in estimate.items()},
            "measured_over_estimate": _ratio(meter.peak, sum(estimate.values())),
            "tokens_per_second": round(tokens / meter.seconds, 1) if meter.seconds else None}


def _gib(value) -> float | None:
    return None if value is None else round(value / GIB, 3)


def _ratio(measured, estimate) -> float | None:
    return None if measured is None or not estimate else round(measured / estimate, 3)


# ---------------------------------------------------------------------------- phases
@dataclass
class Run:
    scale: Scale
    device: str
    directory: Path
    steps: int
    models: dict[str, Model] = field(default_factory=dict)

    def model(self, name: str) -> Model:
        if name not in self.models:
            self.models[name] = build_model(name, self.scale.models[name], self.directory / "models", self.device)
        return self.models[name]


def _training_keys(run: Run, batch: int, length: int, **extra) -> dict:
    return dict(learning_rate=1e-5, max_steps=run.steps, per_device_train_batch_size=batch,
                gradient_accumulation_steps=1, max_length=length, save_steps=10**6, logging_steps=1,
                lr_scheduler_type="constant", **extra)


def _rows(count: int, length: int) -> list[dict]:
    """Rows of exactly `length` tokens (prompt a quarter), distinct, for SFT-style trainers."""
    return [{"prompt": words(length // 4, i), "completion": words(length - length // 4, i + 7)} for i in range(count)]


def _pairs(count: int, length: int) -> list[dict]:
    return [{"prompt": words(length // 4, i), "chosen": words(length - length // 4, i + 3),
             "rejected": words(length - length // 4, i + 5)} for i in range(count)]


def _train_estimate(run: Run, model: Model, node, *, tokens: int, lora: bool = False, checkpointing: bool = False,
                    reference: bool = False, logit_copies: float = 12.0) -> dict:
    from framework.config import LoraSettings
    from framework.plan import training_memory

    return training_memory(model.shape, tokens=tokens, precision="bf16", checkpointing=checkpointing,
                           optim=str(node.trainer.get("optim", "adamw_torch")),
                           lora=LoraSettings(enabled=lora, dropout=0.0), reference=reference, logit_copies=logit_copies)


def phase_environment(run: Run) -> dict:
    """What this machine is and has: versions, the GPU, and that every framework module imports."""
    import importlib
    import importlib.metadata as metadata

    import torch

    versions = {}
    for package in ("torch", "transformers", "accelerate", "peft", "trl", "datasets", "hydra-core", "omegaconf",
                    "math-verify", "rapidfuzz", "pyarrow", "huggingface-hub", "tokenizers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    modules = ["framework.job", "framework.plan", "framework.generation", *(
        f"framework.algorithms.{path.stem}" for path in sorted((REPO / "framework" / "algorithms").glob("*.py"))
        if path.stem != "__init__")]
    failed = {}
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as error:  # noqa: BLE001 - each missing dependency is reported, not raised
            failed[module] = f"{type(error).__name__}: {error}"
    gpu = None
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        gpu = {"name": torch.cuda.get_device_name(0), "memory_gib": round(properties.total_memory / GIB, 2)}
    return {"python": platform.python_version(), "versions": versions, "gpu": gpu, "import_failures": failed,
            "ok": not failed}


def phase_train_sft(run: Run) -> dict:
    """SFT (and BoN-SFT, RFT, the controls: the same trainer) as a whole stage (`train_in_stage`: trained, saved),
    then the memory the next stage starts with: what framework/memory.py gives back."""
    import torch

    from framework.algorithms.sft_stage import SFTAlgorithmConfig, sft_model

    model, batch, length = run.model("1.5b"), run.scale.batch["sft"], run.scale.train_length
    config = SFTAlgorithmConfig(**_training_keys(run, batch, length))
    ctx = context(model, config, run.device, run.directory, train=_rows(batch * run.steps, length))
    with Meter(run.device) as meter:
        sft_model(ctx)
    record = training_record(meter, _train_estimate(run, model, config, tokens=batch * length),
                             batch * length * run.steps, f"SFT, all weights, {run.steps} steps of {batch} x {length} "
                             "tokens, AdamW, then saved as a stage")
    with ctx.stages.open("smoke-next", {"after": "sft"}) as stage:  # a stage opening releases the last one's memory
        if run.device.startswith("cuda"):
            record["allocated_gib_at_next_stage"] = _gib(torch.cuda.memory_allocated())
            record["reserved_gib_at_next_stage"] = _gib(torch.cuda.memory_reserved())
        stage.commit({})
    return record


def phase_train_soc(run: Run) -> dict:
    from framework.algorithms import soc

    model, batch, length = run.model("1.5b"), run.scale.batch["soc"], run.scale.train_length
    config = soc.SOCConfig(**_training_keys(run, batch, length))
    ctx = context(model, config, run.device, run.directory, train=_rows(batch * run.steps, length))
    with Meter(run.device) as meter:
        soc.run(ctx)
    estimate = _train_estimate(run, model, config, tokens=batch * length,
                               logit_copies=12.0 + soc.SOCConfig.PLAN_EXTRA_LOGIT_BYTES)
    return training_record(meter, estimate, batch * length * run.steps,
                           f"SOC, all weights, {run.steps} steps of {batch} x {length} tokens")


def _dpo(run: Run, name: str, *, lora: bool = False) -> dict:
    from framework.algorithms import dpo, preference

    squared = name == "dpo_squared"
    model = run.model("7b" if lora else "1.5b")
    batch = run.scale.batch["lora" if lora else name]
    length = run.scale.dpo_length if not squared else run.scale.train_length
    if squared:  # algorithm=dpo: the sharpening paper's squared loss, TRL's batch and optimizer
        config = dpo.DPOAlgorithmConfig(**_training_keys(run, batch, length))
        trainer_class, optimizer = dpo.SquaredSharpeningDPOTrainer, "adamw_torch"
    else:  # outcome_dpo / self_explore: the Self-Explore scripts' DPO (RMSprop, no EOS after a rejected side)
        config = preference.PreferenceTrainingConfig(**_training_keys(run, batch, length, warmup_ratio=0.0))
        trainer_class, optimizer = None, config.trainer["optim"]
    pairs = _pairs(batch * run.steps, length)
    ctx = context(model, config, run.device, run.directory, train=_rows(1, length), lora=lora, checkpointing=lora)
    with Meter(run.device) as meter:
        preference.train_dpo(ctx, f"smoke-{name}{'-lora' if lora else ''}", {"pairs": len(pairs)}, ctx.base, pairs,
                             config, code=__name__, rejected_eos=squared,
                             **({"trainer_class": trainer_class} if trainer_class else {}))
    estimate = _train_estimate(run, model, config, tokens=2 * batch * length, lora=lora, checkpointing=lora,
                               reference=not lora)
    return training_record(meter, estimate, 2 * batch * length * run.steps,
                           f"{'squared-loss ' if squared else ''}DPO, {'LoRA, checkpointing' if lora else 'all weights'}, "
                           f"{run.steps} steps of {batch} pairs x {length} tokens, {optimizer}, "
                           f"{'no reference copy' if lora else 'frozen reference'}")


def phase_train_dpo(run: Run) -> dict:
    return _dpo(run, "dpo")


def phase_train_dpo_squared(run: Run) -> dict:
    return _dpo(run, "dpo_squared")


def phase_train_dpo_lora_7b(run: Run) -> dict:
    return _dpo(run, "dpo", lora=True)


def phase_train_xpo(run: Run) -> dict:
    from framework.algorithms import xpo
    from framework.plan import kv_bytes_per_token

    model, batch, length = run.model("1.5b"), run.scale.batch["xpo"], run.scale.train_length
    new_tokens = run.scale.new_tokens["xpo"]
    config = xpo.XPOConfig(**_training_keys(run, batch, 2 * length, max_new_tokens=new_tokens))
    prompts = [{"prompt": words(length // 4, i)} for i in range(batch * run.steps)]
    ctx = context(model, config, run.device, run.directory, train=prompts)
    with Meter(run.device) as meter:
        xpo.run(ctx)
    rows = length // 4 + new_tokens
    estimate = _train_estimate(run, model, config, tokens=2 * batch * rows, reference=True)
    estimate["kv_cache"] = 2 * batch * rows * kv_bytes_per_token(model.shape, "bf16")
    return training_record(meter, estimate, 2 * batch * rows * run.steps,
                           f"XPO, all weights, {run.steps} steps of {batch} prompts, {new_tokens} new tokens a sample")


def phase_train_sft_lora_7b(run: Run) -> dict:
    """The 7B shape's one-GPU variant (docs/memory-plan.md): LoRA with gradient checkpointing."""
    from framework.algorithms.sft_stage import SFTAlgorithmConfig, make_sft_trainer

    model, batch, length = run.model("7b"), run.scale.batch["lora"], run.scale.lora_length
    config = SFTAlgorithmConfig(**_training_keys(run, batch, length))
    ctx = context(model, config, run.device, run.directory, train=_rows(batch * run.steps, length), lora=True,
                  checkpointing=True)
    with Meter(run.device) as meter:
        trainer = make_sft_trainer(ctx, config, str(run.directory / "lora-sft"))
        trainer.train()
        del trainer
    return training_record(meter, _train_estimate(run, model, config, tokens=batch * length, lora=True,
                                                   checkpointing=True),
                           batch * length * run.steps, f"SFT, LoRA rank 16, checkpointing, {run.steps} steps of "
                           f"{batch} x {length} tokens (not saved)")


def _generate(run: Run, shape_name: str, kind: str, *, mode: str) -> dict:
    from framework.engine import Request
    from framework.generation import TransformersEngineConfig, open_engine
    from framework.plan import generation_memory

    model = run.model(shape_name)
    prompts_per_call, prompt_tokens, per_prompt = run.scale.batch[kind], run.scale.prompt[kind], run.scale.per_prompt[kind]
    new_tokens = run.scale.new_tokens[kind]
    prompts = [words(prompt_tokens, i) for i in range(prompts_per_call)]
    request = Request(max_new_tokens=new_tokens, samples_per_prompt=per_prompt if mode == "sample" else 1,
                      temperature=1.0 if mode == "sample" else 0.0, num_beams=per_prompt if mode == "beam" else 1,
                      length_penalty=0.0 if mode == "beam" else 1.0)
    from framework.models import Runtime

    with Meter(run.device) as meter:
        with open_engine(model.handle, TransformersEngineConfig(), Runtime(run.device, "bf16"), 0) as engine:
            # an engine that sizes its batches by memory takes no batch size: it then decides the batch
            batching = ({"prompts_per_batch": prompts_per_call}
                        if "prompts_per_batch" in inspect.signature(engine.generate).parameters else {})
            outputs = engine.generate(prompts, request, seed=0, progress=False, **batching)
        generated = sum(candidate.num_tokens for candidates in outputs for candidate in candidates)
    sequences = prompts_per_call * per_prompt
    estimate = generation_memory(model.shape, sequences=sequences, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                                 precision="bf16", mode=mode)
    record = training_record(meter, estimate, generated, f"{kind}: {mode}, {prompts_per_call} prompts x {per_prompt} "
                             f"= {sequences} sequences of {prompt_tokens} + {new_tokens} tokens, one engine call")
    record["generated_tokens"] = generated
    return record


def phase_gen_greedy_7b(run: Run) -> dict:
    """The evaluation's greedy pass (self_explore_paper: 64 prompts a call)."""
    return _generate(run, "7b", "greedy", mode="greedy")


def phase_gen_rationales_7b(run: Run) -> dict:
    """The Self-Explore family's rationale set: 100 samples of a prompt (the one-GPU variant: 1 prompt a call)."""
    return _generate(run, "7b", "rationales", mode="sample")


def phase_gen_exploration_7b(run: Run) -> dict:
    """First-pit exploration: 4 continuations of each of 16 step prefixes."""
    return _generate(run, "7b", "exploration", mode="sample")


def phase_gen_beam_1_5b(run: Run) -> dict:
    """soc_paper's evaluation: beam search of width 5 over 16 prompts, 1024 new tokens."""
    return _generate(run, "1.5b", "beam", mode="beam")


def phase_gen_bon_1_5b(run: Run) -> dict:
    """Best-of-50 (the sharpening presets' sampled set and decoder; the one-GPU variant: 2 prompts a call)."""
    return _generate(run, "1.5b", "bon", mode="sample")


def phase_diagnostics_1_5b(run: Run) -> dict:
    """The evaluation's gold-solution scoring pass (decoding.teacher_forced_logprobs)."""
    from framework.decoding import teacher_forced_logprobs
    from framework.models import Runtime
    from framework.plan import scoring_memory

    model = run.model("1.5b")
    batch, tokens = run.scale.batch["diagnostics"], run.scale.prompt["diagnostics"]
    prompts = [words(tokens // 3, i) for i in range(batch)]
    completions = [words(tokens - tokens // 3 - 1, i + 1) for i in range(batch)]
    with Meter(run.device) as meter:
        loaded = model.handle.load_model(Runtime(run.device, "bf16"))
        teacher_forced_logprobs(loaded, model.tokenizer, prompts, completions, batch)
        del loaded
    return training_record(meter, scoring_memory(model.shape, sequences=batch, tokens=tokens, precision="bf16"),
                           batch * tokens, f"score {batch} sequences of {tokens} tokens in one forward")


PHASES: dict[str, Callable[[Run], dict]] = {
    "environment": phase_environment,
    "train_sft_1.5b": phase_train_sft,
    "train_soc_1.5b": phase_train_soc,
    "train_dpo_1.5b": phase_train_dpo,
    "train_dpo_squared_1.5b": phase_train_dpo_squared,
    "train_xpo_1.5b": phase_train_xpo,
    "train_sft_lora_7b": phase_train_sft_lora_7b,
    "train_dpo_lora_7b": phase_train_dpo_lora_7b,
    "gen_greedy_7b": phase_gen_greedy_7b,
    "gen_rationales_7b": phase_gen_rationales_7b,
    "gen_exploration_7b": phase_gen_exploration_7b,
    "gen_beam_1.5b": phase_gen_beam_1_5b,
    "gen_bon_1.5b": phase_gen_bon_1_5b,
    "diagnostics_1.5b": phase_diagnostics_1_5b,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (the test suite's run)")
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated, from: " + ", ".join(PHASES))
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps of each training phase")
    parser.add_argument("--workdir", default=None, help="where the random models and stages go (default: a temporary "
                        "directory, removed at the end)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.phases.split(",") if name not in PHASES]
    if unknown:
        parser.error(f"--phases: no phase {unknown}; available: {', '.join(PHASES)}")
    import torch

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    scale = _tiny() if args.tiny else _real()
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        run = Run(scale, device, Path(scratch), args.steps)
        failures = 0
        for name in args.phases.split(","):
            started = time.time()
            try:
                with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON lines alone (trainers print logs)
                    record = {"phase": name, "ok": True, **PHASES[name](run)}  # a phase may report ok itself
            except Exception as error:  # noqa: BLE001 - one failed phase (an OOM included) hides no other
                record = {"phase": name, "ok": False, "error": f"{type(error).__name__}: {str(error)[:500]}",
                          "where": traceback.format_exc().strip().splitlines()[-3:]}
            failures += not record["ok"]
            record.update(device=device if device == "cpu" else torch.cuda.get_device_name(0),
                          phase_seconds=round(time.time() - started, 2))
            print(json.dumps(record), flush=True)
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
