"""The pre-flight plan of a job: for each stage it will run, the estimated peak GPU memory (weights, gradients,
optimizer state, activations, KV cache or logits) and time on a named GPU; and the check a real run makes
before any work, refusing a stage that cannot fit with the ways out (LoRA, ZeRO-3 over N GPUs, smaller
batches, gradient checkpointing).

    python -m framework experiment=self_explore_paper --plan                  # this job, on the GPU it finds
    python -m framework -m experiment=self_explore_paper --plan plan.gpu=h100_80gb   # every job of the sweep

Written by hand because no upstream tool estimates a whole job: accelerate's `estimate-memory` counts the
weights and Adam at batch 1. The arithmetic reads the model's shape from its config (transformers' AutoConfig;
the parameter count from the model built on the meta device, so any architecture counts exactly) and each
stage's batch sizes and lengths from the job's config and data. docs/memory-plan.md gives each term, the
assumptions behind the time estimates and each paper preset's plan; benchmarks/gpu_smoke.py measures the
peaks the estimates stand for (`torch.cuda.max_memory_allocated`), stage by stage.

Stages are read off the method's schema, not its name: `starting_point: sft` (an SFT stage first), a sampled
set or a rationale set (TrainingSamplingConfig), an RFT stage (`rft` node, `use_rft`), first-pit exploration
(`continuations_per_step`), and the method's own training by its TRL config class (SFT-like: one model;
DPO-like: a policy and its frozen reference, chosen and rejected rows together; online DPO: both, sampling
inside each step); then the evaluation (the decoder's batch, the diagnostics' scoring pass), the premises'
greedy pass and the control.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from framework.errors import ConfigError

GIB = 2**30
# The share of a GPU's memory a plan lets a stage's estimated peak take: the rest is the CUDA context, cuBLAS and
# NCCL workspaces and the caching allocator's fragmentation (a measured step: benchmarks/gpu_smoke.py).
USABLE_SHARE = 0.92
# Time model (rough; docs/memory-plan.md): the share of the GPU's bf16 peak a Trainer step reaches, the share of
# HBM bandwidth a decoding step reaches, and transformers' per-layer Python and kernel-launch cost of one
# decoding step. benchmarks/gpu_smoke.py measures training and generation tokens/s to calibrate them.
TRAIN_MFU = 0.35
DECODE_BANDWIDTH_SHARE = 0.5
DECODE_STEP_SECONDS_PER_LAYER = 3.5e-4
# Characters per token when no tokenizer is at hand (a config-only directory): fewer than the ~3.5-4 of Llama- and
# Qwen-style tokenizers on GSM8K and MATH text, so lengths come out long rather than short.
CHARS_PER_TOKEN = 3.0


# ---------------------------------------------------------------------------- GPUs
@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float  # as the device reports it (torch's total_memory)
    bf16_tflops: float  # dense bf16 tensor-core peak, vendor spec sheet
    bandwidth_tbs: float  # HBM bandwidth, vendor spec sheet, TB/s

    @property
    def usable_bytes(self) -> float:
        return self.memory_gib * GIB * USABLE_SHARE


# Memory as the devices report it (an H100 80GB reports 81559 MiB); speeds from NVIDIA's spec sheets (dense).
GPUS = {
    "h100_80gb": GPU("H100 80GB (SXM)", 79.6, 989.0, 3.35),
    "h100_pcie": GPU("H100 PCIe 80GB", 79.6, 756.0, 2.0),
    "h200": GPU("H200 141GB", 140.4, 989.0, 4.8),
    "a100_80gb": GPU("A100 80GB (SXM)", 79.2, 312.0, 2.04),
    "a100_40gb": GPU("A100 40GB (SXM)", 39.4, 312.0, 1.56),
    "l40s": GPU("L40S 48GB", 44.4, 362.0, 0.864),
}
SHARDINGS = ("auto", "none", "zero2", "zero3", "fsdp")  # plan.sharding (framework.config.PlanConfig)


def current_gpu() -> GPU | None:
    """This process's GPU, with its own memory and, when its name is in GPUS, its speeds; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    device = torch.cuda.current_device()
    properties = torch.cuda.get_device_properties(device)
    name = torch.cuda.get_device_name(device)
    known = next((gpu for gpu in GPUS.values() if _name_matches(gpu.name, name)), None)
    return GPU(name, properties.total_memory / GIB, known.bf16_tflops if known else 0.0,
               known.bandwidth_tbs if known else 0.0)


def _name_matches(table_name: str, device_name: str) -> bool:
    """'H100 80GB (SXM)' matches 'NVIDIA H100 80GB HBM3'; 'H200 141GB' matches 'NVIDIA H200'."""
    model, *rest = table_name.split()
    memory = next((part for part in rest if part.endswith("GB")), "")
    return model in device_name and (memory in device_name or model == "H200") and (
        ("PCIe" in table_name) == ("PCIe" in device_name))


def launched_sharding() -> str:
    """How `accelerate launch` shards training, from the variables it exports to the processes."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return {"3": "zero3", "2": "zero2"}.get(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", ""), "none")
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "fsdp"
    return "none"


# ---------------------------------------------------------------------------- the model's shape
@dataclass(frozen=True)
class Shape:
    """What the arithmetic needs of a model: counts read off the model built from its config on the meta device."""

    parameters: int
    linear_parameters: int  # weights of the Linear layers (what autocast copies to bf16), the LM head included
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    linears: tuple[tuple[str, int, int], ...] = ()  # (module name, in, out) of every Linear but the LM head

    def lora_parameters(self, rank: int, targets: Sequence[str]) -> int:
        """Adapter weights (A: in x r, B: r x out) on the Linear layers peft targets (`all-linear`: all but the head)."""
        chosen = [(i, o) for name, i, o in self.linears
                  if list(targets) == ["all-linear"] or name.rsplit(".", 1)[-1] in targets]
        return sum(rank * (i + o) for i, o in chosen)

    def describe(self) -> str:
        return (f"{self.parameters / 1e9:.2f}B parameters, {self.layers} layers, hidden {self.hidden}, intermediate "
                f"{self.intermediate}, {self.heads} heads ({self.kv_heads} KV) of {self.head_dim}, vocabulary {self.vocab}")


def shape_of(config) -> Shape:
    """The Shape of a transformers config (PretrainedConfig): the model is built on the meta device, which
    allocates nothing, so the counts are exact for any architecture transformers knows."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    linears = tuple((name, module.in_features, module.out_features) for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear) and module is not head)
    linear_parameters = sum(i * o for _, i, o in linears) + (head.weight.numel() if head is not None else 0)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    return Shape(parameters=sum(p.numel() for p in model.parameters()), linear_parameters=linear_parameters,
                 layers=text.num_hidden_layers, hidden=text.hidden_size,
                 intermediate=getattr(text, "intermediate_size", None) or 4 * text.hidden_size, heads=heads,
                 kv_heads=getattr(text, "num_key_value_heads", None) or heads,
                 head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads, vocab=text.vocab_size,
                 linears=linears)


# ---------------------------------------------------------------------------- memory arithmetic (bytes)
OPTIMIZER_BYTES = {  # state bytes per trained parameter (fp32 state), by transformers' `optim` name prefix
    "sgd": 0, "adafactor": 0, "rmsprop": 4, "lion": 4, "adagrad": 4, "adamw_8bit": 2, "adamw_bnb_8bit": 2,
    "paged_adamw_8bit": 2, "adamw": 8, "adam": 8,
}


def optimizer_bytes(optim: str) -> int:
    """Bytes of optimizer state per trained parameter (unknown optimizers count as Adam's two fp32 moments)."""
    for prefix in sorted(OPTIMIZER_BYTES, key=len, reverse=True):
        if optim.startswith(prefix):
            return OPTIMIZER_BYTES[prefix]
    return 8


def layer_activation_bytes(shape: Shape) -> float:
    """Bytes one decoder layer keeps for backward per token, under bf16 autocast with fp32 weights (the residual
    stream in fp32) and an SDPA/flash attention that keeps no attention matrix: each RMSNorm's fp32 input and
    output (16 H), the bf16 casts of the q/k/v and gate/up inputs (10 H), q and the attention output, which is
    also the o-proj's input (4 A·D), keys and values repeated to every head (4 A·D: a padded batch makes
    transformers repeat them for a grouped-query model), the log-sum-exp (4 A), and the MLP's gate, up,
    activation and down-proj input (8 I). Checked against the tensors autograd saves, on CPU (tests/test_plan.py)."""
    attention = shape.heads * shape.head_dim
    return 26 * shape.hidden + 8 * attention + 8 * shape.intermediate + 4 * shape.heads


def lora_activation_bytes(shape: Shape) -> float:
    """What LoRA adds per token and layer: each adapted Linear's dropped-out bf16 input and its mask (q, k, v,
    gate, up read the hidden state; o-proj the attention output; down-proj the MLP's)."""
    return 3 * (5 * shape.hidden + shape.heads * shape.head_dim + shape.intermediate)


def training_memory(shape: Shape, *, tokens: int, precision: str, checkpointing: bool, optim: str,
                    lora: Any = None, reference: bool = False, logit_copies: float = 12.0, gpus: int = 1,
                    sharding: str = "none") -> dict[str, float]:
    """Peak bytes of one training stage per GPU, by term. `tokens`: one micro-batch (rows x max length; chosen and
    rejected rows together for DPO). Full fine-tuning under bf16/fp16 keeps fp32 master weights (models.py,
    Runtime.training_dtype) and autocast's bf16 copies of the Linear weights, which backward keeps (with
    checkpointing: one layer's at a time); LoRA trains fp32 adapters on frozen weights in the run's dtype.
    `logit_copies`: bytes per token and vocabulary entry at the loss (the bf16 logits, their fp32 upcast, the saved
    log-softmax and their gradients). `reference`: a frozen copy in the run's dtype (DPO, XPO). Sharding: ZeRO-2
    splits gradients and optimizer state (DeepSpeed's bf16 mode: bf16 weights and gradients, fp32 master copy
    with the optimizer), ZeRO-3 and FSDP everything, over `gpus`."""
    half = precision in ("bf16", "fp16")
    dtype_bytes = 2 if half else 4
    per_layer_params = shape.linear_parameters / max(shape.layers, 1)
    if lora is not None and lora.enabled:
        adapters = shape.lora_parameters(lora.rank, lora.target_modules)
        weights = shape.parameters * dtype_bytes + adapters * 4
        gradients = adapters * 4
        optimizer = adapters * optimizer_bytes(optim)
        weight_copies = 0.0
        extra = lora_activation_bytes(shape)
    else:
        weights = shape.parameters * 4.0
        gradients = shape.parameters * 4.0
        optimizer = shape.parameters * float(optimizer_bytes(optim))
        weight_copies = 0.0 if not half else 2.0 * (per_layer_params if checkpointing else shape.linear_parameters)
        extra = 0.0
        if sharding in ("zero2", "zero3"):  # DeepSpeed bf16: bf16 weights and gradients, fp32 master with the optimizer
            weights = shape.parameters * float(dtype_bytes)
            gradients = shape.parameters * float(dtype_bytes)
            optimizer = shape.parameters * (float(optimizer_bytes(optim)) + (4.0 if half else 0.0))
            weight_copies = 0.0
            gradients /= gpus
            optimizer /= gpus
            if sharding == "zero3":
                weights = weights / gpus + 2 * per_layer_params * dtype_bytes  # plus a gathered layer
        elif sharding == "fsdp":
            weights, gradients, optimizer = (value / gpus for value in (weights, gradients, optimizer))
            weights += 2 * per_layer_params * 4  # the gathered (fp32) layer and the next one prefetched
    layer = layer_activation_bytes(shape) + extra
    if checkpointing:  # each layer's fp32 input kept; one layer's activations live while it is recomputed
        activations = tokens * (shape.layers * 4 * shape.hidden + layer)
    else:
        activations = tokens * shape.layers * layer
    activations += tokens * 10 * shape.hidden  # the final norm's input and output, the LM head's bf16 input
    terms = {"weights": weights + weight_copies, "gradients": gradients, "optimizer": optimizer,
             "activations": activations, "logits": tokens * shape.vocab * logit_copies}
    if reference:
        terms["reference"] = shape.parameters * dtype_bytes / (gpus if sharding in ("zero3", "fsdp") else 1)
    return terms


def kv_bytes_per_token(shape: Shape, precision: str) -> float:
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * (2 if precision in ("bf16", "fp16") else 4)


# bytes per sequence and vocabulary entry of one decoding step's transients: the fp32 scores and the engine's
# log-softmax for the recorded log-probs (8); sampling adds the counter-based Gumbel noise (generation.py:
# int64 hashes and float64 uniforms of the full vocabulary, ~32); beam search its fp32 beam scores (4)
STEP_LOGIT_BYTES = {"greedy": 8.0, "sample": 40.0, "beam": 12.0}


def generation_memory(shape: Shape, *, sequences: int, prompt_tokens: int, new_tokens: int, precision: str,
                      mode: str = "sample") -> dict[str, float]:
    """Peak bytes of a transformers `generate` call over `sequences` rows (prompts x samples, or x beams): the
    weights, the KV cache of every row at its full length (beam search reorders it layer by layer each step: one
    layer's copy more), the
    prefill's MLP intermediates over every prompt token, and one step's logits transients."""
    dtype_bytes = 2 if precision in ("bf16", "fp16") else 4
    kv = sequences * (prompt_tokens + new_tokens) * kv_bytes_per_token(shape, precision)
    if mode == "beam":
        kv *= 1 + 1 / max(shape.layers, 1)
    prefill = sequences * prompt_tokens * (3 * shape.intermediate + 4 * shape.hidden) * dtype_bytes
    return {"weights": shape.parameters * dtype_bytes, "kv_cache": kv, "prefill": prefill,
            "logits": sequences * shape.vocab * STEP_LOGIT_BYTES[mode]}


def scoring_memory(shape: Shape, *, sequences: int, tokens: int, precision: str) -> dict[str, float]:
    """Peak bytes of one teacher-forced scoring pass (evaluation's diagnostics): the weights, the logits of every
    position in the run's dtype, their fp32 copy and its log-softmax (10 bytes per entry), and one layer's
    transient activations (no gradient is kept)."""
    dtype_bytes = 2 if precision in ("bf16", "fp16") else 4
    return {"weights": shape.parameters * dtype_bytes,
            "logits": sequences * tokens * shape.vocab * (dtype_bytes + 8),
            "activations": sequences * tokens * (3 * shape.intermediate + 4 * shape.hidden) * dtype_bytes}


# ---------------------------------------------------------------------------- time arithmetic (seconds)
def training_seconds(shape: Shape, gpu: GPU, *, tokens: float, mean_length: float, checkpointing: bool,
                     reference: bool, gpus: int) -> float | None:
    """6 N FLOPs a token (8 N with checkpointing's second forward), plus causal attention, plus a reference
    forward (2 N) for DPO-style stages, at TRAIN_MFU of the GPUs' bf16 peak."""
    if not gpu.bf16_tflops:
        return None
    per_token = (8 if checkpointing else 6) * shape.parameters + 6 * shape.layers * shape.heads * shape.head_dim * mean_length
    per_token += 2 * shape.parameters if reference else 0
    return tokens * per_token / (gpu.bf16_tflops * 1e12 * TRAIN_MFU * gpus)


def generation_seconds(shape: Shape, gpu: GPU, *, sequences: int, calls: int, prompt_tokens: float,
                       new_tokens: int, precision: str) -> float | None:
    """`calls` generate calls of `sequences` rows, each `new_tokens` steps (a batch waits for its longest row):
    a step reads the weights and the KV cache once (at DECODE_BANDWIDTH_SHARE of HBM bandwidth), computes
    2 N FLOPs a row, and pays transformers' per-layer overhead; whichever is largest."""
    if not gpu.bandwidth_tbs:
        return None
    dtype_bytes = 2 if precision in ("bf16", "fp16") else 4
    mean_context = prompt_tokens + new_tokens / 2
    read = shape.parameters * dtype_bytes + sequences * mean_context * kv_bytes_per_token(shape, precision)
    step = max(read / (gpu.bandwidth_tbs * 1e12 * DECODE_BANDWIDTH_SHARE),
               2 * shape.parameters * sequences / (gpu.bf16_tflops * 1e12 * TRAIN_MFU),
               DECODE_STEP_SECONDS_PER_LAYER * shape.layers)
    prefill = 2 * shape.parameters * sequences * prompt_tokens / (gpu.bf16_tflops * 1e12 * TRAIN_MFU)
    return calls * (new_tokens * step + prefill)


# ---------------------------------------------------------------------------- stages
@dataclass
class StagePlan:
    name: str
    what: str  # the work, in words
    terms: dict[str, float]  # bytes per GPU
    seconds: float | None
    batch_key: str | None = None  # the key whose value sets this stage's batch
    batch: int | None = None
    # peak bytes at another batch (same global batch for training): what `ways_out` searches
    peak_at: Callable[[int], float] | None = None
    variants: dict[str, Callable[[], float]] = field(default_factory=dict)  # way out -> peak bytes with it
    gpus_needed: Callable[[float], int | None] | None = None  # ZeRO-3 GPUs for a budget, when training
    note: str = ""

    @property
    def peak(self) -> float:
        return sum(self.terms.values())


@dataclass
class Lengths:
    """Token counts of a set of texts: the longest and the mean."""

    longest: int
    mean: float

    @classmethod
    def of(cls, texts: Sequence[str], tokenizer) -> "Lengths":
        texts = list(texts)
        if not texts:
            return cls(0, 0.0)
        if tokenizer is None:
            counts = [math.ceil(len(text) / CHARS_PER_TOKEN) for text in texts]
        else:
            counts = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        return cls(max(counts), sum(counts) / len(counts))


@dataclass
class JobPlan:
    title: str
    gpu: GPU
    gpus: int
    sharding: str
    shape: Shape
    precision: str
    stages: list[StagePlan]
    estimated_lengths: bool  # token counts estimated from characters (no tokenizer)

    def too_big(self) -> list[StagePlan]:
        return [stage for stage in self.stages if stage.peak > self.gpu.usable_bytes]

    def render(self) -> str:
        budget = self.gpu.usable_bytes / GIB
        head = (f"plan: {self.title} on {self.gpus} x {self.gpu.name} ({self.gpu.memory_gib:.1f} GiB each; a stage "
                f"fits at <= {budget:.1f} GiB), {self.precision}, sharding {self.sharding}\nmodel: {self.shape.describe()}")
        if self.estimated_lengths:
            head += f"\n(no tokenizer: token counts estimated at {CHARS_PER_TOKEN:g} characters a token)"
        columns = ("stage", "peak GiB", "weights", "grads", "optim", "activ.", "kv/logits", "time", "work")
        rows = []
        for stage in self.stages:
            t = {key: value / GIB for key, value in stage.terms.items()}
            weights = t.get("weights", 0) + t.get("reference", 0)
            kv_logits = t.get("kv_cache", 0) + t.get("logits", 0)
            activations = t.get("activations", 0) + t.get("prefill", 0)
            mark = "" if stage.peak <= self.gpu.usable_bytes else " !"
            rows.append((stage.name, f"{stage.peak / GIB:.1f}{mark}", f"{weights:.1f}", f"{t.get('gradients', 0):.1f}",
                         f"{t.get('optimizer', 0):.1f}", f"{activations:.1f}", f"{kv_logits:.1f}",
                         _duration(stage.seconds), stage.what + (f" ({stage.note})" if stage.note else "")))
        widths = [max(len(str(row[i])) for row in [columns, *rows]) for i in range(len(columns) - 1)]
        lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row[:-1], widths)) + "  " + row[-1]
                 for row in [columns, *rows]]
        total = sum(stage.seconds or 0 for stage in self.stages)
        tail = [f"total time ~{_duration(total)} (rough: docs/memory-plan.md)"] if any(s.seconds for s in self.stages) else []
        for stage in self.too_big():
            tail.append(f"does not fit: {self.refusal(stage)}")
        return "\n".join([head, *lines, *tail])

    def refusal(self, stage: StagePlan) -> str:
        return (f"stage {stage.name} needs ~{stage.peak / GIB:.1f} GiB per GPU, more than the "
                f"{self.gpu.usable_bytes / GIB:.1f} GiB a {self.gpu.name} gives it; ways out: "
                + "; ".join(ways_out(stage, self.gpu.usable_bytes)))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def ways_out(stage: StagePlan, budget: float) -> list[str]:
    """What would make `stage` fit `budget` bytes per GPU, each checked with the same arithmetic."""
    found = []
    for way, peak in stage.variants.items():
        if peak() <= budget:
            found.append(way)
    if stage.peak_at is not None and stage.batch_key and stage.batch and stage.batch > 1:
        fitting = [b for b in range(stage.batch - 1, 0, -1) if stage.peak_at(b) <= budget]
        if fitting:
            found.append(f"{stage.batch_key}={fitting[0]}" + (" (gradient accumulation raised to keep the global "
                                                               "batch)" if stage.gpus_needed else ""))
    if stage.gpus_needed is not None:
        gpus = stage.gpus_needed(budget)
        if gpus:
            found.append(f"DeepSpeed ZeRO-3 over {gpus} GPUs (accelerate launch --config_file "
                         f"launch/accelerate/deepspeed_zero3.yaml --num_processes {gpus} -m framework ...)")
    if not found:
        found.append("a GPU with more memory (plan.gpu=...)")
    return found


# ---------------------------------------------------------------------------- a job's stages
def _training_node_stage(name: str, node, shape: Shape, gpu: GPU, ctx: "_PlanContext", *, rows: float,
                         lengths: Lengths, kind: str, note: str = "", batch_key: str) -> StagePlan:
    """One training stage with `node`'s keys (a TrainingConfig) on `rows` rows of `lengths` tokens."""
    optim = str(node.trainer.get("optim", "adamw_torch"))
    length = min(node.max_length, lengths.longest)
    mean_length = min(node.max_length, lengths.mean)
    pairs = kind == "dpo"
    online = kind == "online"
    rows_per_step = node.per_device_train_batch_size * (2 if pairs or online else 1)
    precompute = bool(getattr(node, "precompute_ref_log_probs", False))
    reference = (pairs or online) and not ctx.lora.enabled and not precompute
    logit_copies = 12.0 + float(getattr(type(node), "PLAN_EXTRA_LOGIT_BYTES", 0))

    def peak(batch: int, *, lora=ctx.lora, checkpointing=ctx.checkpointing, with_reference=reference, gpus=ctx.gpus,
             sharding=ctx.sharding) -> float:
        per_step = batch * (2 if pairs or online else 1)
        terms = training_memory(shape, tokens=per_step * length, precision=ctx.precision, checkpointing=checkpointing,
                                optim=optim, lora=lora, reference=with_reference, logit_copies=logit_copies,
                                gpus=gpus, sharding=sharding)
        if online:  # sampling inside the step: both models' KV caches for the step's prompts
            terms["kv_cache"] = 2 * batch * length * kv_bytes_per_token(shape, ctx.precision)
        return sum(terms.values())

    terms = training_memory(shape, tokens=rows_per_step * length, precision=ctx.precision,
                            checkpointing=ctx.checkpointing, optim=optim, lora=ctx.lora, reference=reference,
                            logit_copies=logit_copies, gpus=ctx.gpus, sharding=ctx.sharding)
    if online:
        terms["kv_cache"] = 2 * node.per_device_train_batch_size * length * kv_bytes_per_token(shape, ctx.precision)
    global_batch = node.per_device_train_batch_size * node.gradient_accumulation_steps * ctx.gpus
    sequences = node.max_steps * global_batch if node.max_steps > 0 else rows * node.num_train_epochs
    tokens = sequences * mean_length * (2 if pairs or online else 1)
    seconds = training_seconds(shape, gpu, tokens=tokens, mean_length=mean_length, checkpointing=ctx.checkpointing,
                               reference=reference, gpus=ctx.gpus)
    if online and seconds is not None:  # two samples per prompt, generated inside each step
        seconds += generation_seconds(shape, gpu, sequences=2 * node.per_device_train_batch_size,
                                      calls=math.ceil(sequences / max(global_batch, 1)) * node.gradient_accumulation_steps,
                                      prompt_tokens=lengths.mean, new_tokens=getattr(node, "max_new_tokens", 0),
                                      precision=ctx.precision) or 0.0
    variants = {}
    if not ctx.lora.enabled:
        from framework.config import LoraSettings

        variants["LoRA (model.lora.enabled=true; set an adapter's learning rate)"] = \
            lambda: peak(node.per_device_train_batch_size, lora=LoraSettings(enabled=True))
    if not ctx.checkpointing:
        variants["model.gradient_checkpointing=true"] = lambda: peak(node.per_device_train_batch_size, checkpointing=True)
    if reference and hasattr(node, "precompute_ref_log_probs"):
        prefix = batch_key.rsplit(".", 1)[0]
        variants[f"{prefix}.precompute_ref_log_probs=true (no second model in memory)"] = \
            lambda: peak(node.per_device_train_batch_size, with_reference=False)

    def gpus_needed(budget: float) -> int | None:
        if ctx.lora.enabled:
            return None
        return next((n for n in (2, 3, 4, 6, 8, 16, 32, 64)
                     if peak(node.per_device_train_batch_size, gpus=n, sharding="zero3") <= budget), None)

    unit = "pairs" if pairs else "prompts" if online else "rows"
    work = (f"train {'LoRA' if ctx.lora.enabled else 'all weights'}, {_count(rows)} {unit} x "
            f"{node.num_train_epochs:g} epochs" if node.max_steps <= 0 else
            f"train {'LoRA' if ctx.lora.enabled else 'all weights'}, {node.max_steps} steps")
    work += f", micro-batch {rows_per_step} x {length} tokens, {optim}"
    if reference:
        work += ", frozen reference"
    return StagePlan(name, work, terms, seconds, batch_key, node.per_device_train_batch_size,
                     lambda b: peak(b), variants, gpus_needed, note)


# one decoded row's step logits in an engine that sizes its batches by memory (fp32 logits and log-softmax, fp64
# warped scores and their CDF: generation.py's decode_bytes_per_row)
BUDGET_ROW_LOGIT_BYTES = 24


def budget_rows(shape: Shape, gpu: GPU, ctx: "_PlanContext", *, rows: int, per_prompt: int, length: int,
                beam: bool) -> int:
    """The rows an engine that sizes its batches by memory puts in one batch: what `memory_fraction` of the memory
    left beside the weights holds, at KV cache, step logits and prefill transients per row, capped by `max_batch_rows` and by the work
    (beam search keeps a prompt's beams together). 0: not even one row (one prompt's beams) fits."""
    dtype_bytes = 2 if ctx.precision != "fp32" else 4
    # KV cache, step logits and the prefill's MLP transients, as generation.decode_bytes_per_row counts a row
    per_row = (kv_bytes_per_token(shape, ctx.precision) * length + shape.vocab * BUDGET_ROW_LOGIT_BYTES
               + length * (3 * shape.intermediate + 4 * shape.hidden) * dtype_bytes)
    free = gpu.usable_bytes - shape.parameters * (2 if ctx.precision != "fp32" else 4)
    fitting = int(max(free, 0) * ctx.engine_memory_fraction // per_row)
    if ctx.engine_max_rows is not None:
        fitting = min(fitting, ctx.engine_max_rows)
    fitting = min(fitting, rows)
    return fitting // per_prompt * per_prompt if beam else fitting


def _generation_stage(name: str, shape: Shape, gpu: GPU, ctx: "_PlanContext", *, prompts: int, per_prompt: int,
                      prompts_per_batch: int | None, prompt_lengths: Lengths, new_tokens: int, mode: str,
                      batch_key: str, note: str = "") -> StagePlan:
    """A generating stage. `prompts_per_batch`: the stage's batch key's value; None where the engine sizes its batches
    by memory itself (`engine.memory_fraction`): the batch is then what the budget holds, and only a batch of one
    row (one prompt's beams) that cannot fit is a stage that cannot fit."""
    if prompts_per_batch is None and ctx.engine != "vllm":
        length = prompt_lengths.longest + new_tokens
        rows = budget_rows(shape, gpu, ctx, rows=prompts * per_prompt, per_prompt=per_prompt, length=length,
                           beam=mode == "beam")
        batch_rows = max(rows, per_prompt if mode == "beam" else 1)
        terms = generation_memory(shape, sequences=batch_rows, prompt_tokens=prompt_lengths.longest,
                                  new_tokens=new_tokens, precision=ctx.precision, mode=mode)
        terms["prefill"] /= 1 if mode == "beam" else per_prompt  # a prompt's samples share one prefill
        if rows == 0:
            note = (note + "; " if note else "") + "not one row fits"
        else:
            terms["logits"] = batch_rows * shape.vocab * BUDGET_ROW_LOGIT_BYTES
        calls = math.ceil(prompts * per_prompt / batch_rows)
        seconds = generation_seconds(shape, gpu, sequences=batch_rows, calls=calls, prompt_tokens=prompt_lengths.mean,
                                     new_tokens=new_tokens, precision=ctx.precision)
        what = (f"{mode} {_count(prompts)} prompts x {per_prompt}, {batch_rows} rows a batch (the engine's memory "
                f"budget), prompt <= {prompt_lengths.longest} + {new_tokens} new tokens")
        return StagePlan(name, what, terms, seconds, None, None, note=note)
    prompts_per_batch = prompts_per_batch or 1
    sequences = prompts_per_batch * per_prompt
    if ctx.engine == "vllm":  # vLLM takes its fraction of the card at start and fits its batches into it
        fraction = ctx.vllm_memory_fraction
        terms = {"weights": shape.parameters * (2 if ctx.precision != "fp32" else 4),
                 "kv_cache": max(gpu.memory_gib * GIB * fraction - shape.parameters * 2, 0.0)}
        peak_at = None
        note = (note + "; " if note else "") + f"vLLM: {fraction:g} of the GPU"
    else:
        terms = generation_memory(shape, sequences=sequences, prompt_tokens=prompt_lengths.longest, new_tokens=new_tokens,
                                  precision=ctx.precision, mode=mode)

        def peak_at(batch: int) -> float:
            return sum(generation_memory(shape, sequences=batch * per_prompt, prompt_tokens=prompt_lengths.longest,
                                         new_tokens=new_tokens, precision=ctx.precision, mode=mode).values())
    calls = math.ceil(prompts / max(prompts_per_batch, 1))
    seconds = generation_seconds(shape, gpu, sequences=sequences, calls=calls, prompt_tokens=prompt_lengths.mean,
                                 new_tokens=new_tokens, precision=ctx.precision)
    what = f"{mode} {_count(prompts)} prompts x {per_prompt}, {prompts_per_batch} prompts per call, " \
           f"prompt <= {prompt_lengths.longest} + {new_tokens} new tokens"
    return StagePlan(name, what, terms, seconds, batch_key, prompts_per_batch, peak_at, note=note)


def _batch_key(node, key: str, settings) -> int | None:
    """A stage's prompts-per-call key, or None where the engine sizes its batches by memory (`engine.memory_fraction`;
    such an engine has no per-stage batch key)."""
    if hasattr(settings.engine, "memory_fraction"):
        return None
    return getattr(node, key, None)


def _mean_steps(splitter: str, data) -> float:
    """The mean number of steps of the training demonstrations under the method's step splitter (auto as
    Self-Explore resolves it): how many prefixes a rationale gives exploration."""
    from framework.algorithms.rationales import numeric_answers
    from framework.data.steps import split_steps

    if "completion" not in data.train.column_names or not len(data.train):
        return 1.0
    if splitter == "auto":
        splitter = "lines" if numeric_answers(data.checker) else "sentences"
    texts = data.train["completion"][:2000]  # a sample is enough for a mean
    return sum(len(split_steps(splitter, text)) for text in texts) / len(texts)


def _count(value: float) -> str:
    return f"{value:,.0f}"


@dataclass
class _PlanContext:
    precision: str
    checkpointing: bool
    lora: Any
    gpus: int
    sharding: str
    engine: str
    vllm_memory_fraction: float
    engine_memory_fraction: float = 0.8  # an engine that sizes its batches by memory: the share of the free memory
    engine_max_rows: int | None = None


def plan_job(settings, data, tokenizer, shape: Shape, gpu: GPU, *, gpus: int = 1, sharding: str = "none",
             title: str = "") -> JobPlan:
    """Every stage of the job `settings` (a validated RunConfig) would run on `data` (its TaskData, prompts
    rendered), with `tokenizer` for token counts (None: estimated from characters)."""
    from framework import registry
    from framework.config import TrainingConfig

    algorithm = settings.algorithm
    precision = settings.model.precision if settings.model.precision != "auto" else "bf16"
    engine = settings.engine.name
    ctx = _PlanContext(precision, settings.model.gradient_checkpointing, settings.model.lora, gpus, sharding, engine,
                       getattr(settings.engine, "gpu_memory_utilization", 0.5),
                       getattr(settings.engine, "memory_fraction", 0.8), getattr(settings.engine, "max_batch_rows", None))
    train, test = data.train, data.test
    train_prompts = Lengths.of(train["prompt"], tokenizer) if len(train) else Lengths(0, 0.0)
    demonstrations = (Lengths.of([p + c for p, c in zip(train["prompt"], train["completion"])], tokenizer)
                      if "completion" in train.column_names and len(train) else train_prompts)
    stages: list[StagePlan] = []
    trains = registry.algorithms.get(algorithm.name).trains
    rows = len(train)

    if getattr(algorithm, "starting_point", "base") == "sft":
        stages.append(_training_node_stage("sft", algorithm.sft, shape, gpu, ctx, rows=rows, lengths=demonstrations,
                                           kind="sft", batch_key="algorithm.sft.per_device_train_batch_size",
                                           note="the SFT warm start"))
    sampled = rows
    new_tokens = getattr(algorithm, "max_new_tokens", 0)
    generated = Lengths(train_prompts.longest + new_tokens, train_prompts.mean + new_tokens / 2)
    samples_per_prompt = getattr(algorithm, "samples_per_prompt", None) or getattr(algorithm, "rationales_per_question", None)
    if samples_per_prompt:
        cap = getattr(algorithm, "train_prompts", None)
        sampled = rows if cap is None else min(cap, rows)
        kind = "rationales" if hasattr(algorithm, "rationales_per_question") else "samples"
        stages.append(_generation_stage(kind, shape, gpu, ctx, prompts=sampled, per_prompt=samples_per_prompt,
                                        prompts_per_batch=_batch_key(algorithm, "prompts_per_batch", settings),
                                        prompt_lengths=train_prompts,
                                        new_tokens=new_tokens, mode="sample",
                                        batch_key="algorithm.prompts_per_batch"))
    kept = sampled * getattr(algorithm, "max_correct_per_question", 1)  # at most M correct rationales per question
    rft = getattr(algorithm, "rft", None)
    if isinstance(rft, TrainingConfig) and getattr(algorithm, "use_rft", True):
        stages.append(_training_node_stage("rft", rft, shape, gpu, ctx, rows=kept, lengths=generated, kind="sft",
                                           batch_key="algorithm.rft.per_device_train_batch_size",
                                           note=f"<= {algorithm.max_correct_per_question} correct rationales a question"))
    if hasattr(algorithm, "continuations_per_step"):
        prefix = Lengths(train_prompts.longest + new_tokens, train_prompts.mean + new_tokens / 2)
        steps = min(algorithm.max_explored_steps, _mean_steps(algorithm.step_splitter, data))
        explored = round(kept * steps)  # every step of at most one rejected side per kept correct rationale
        stages.append(_generation_stage("exploration", shape, gpu, ctx, prompts=explored,
                                        per_prompt=algorithm.continuations_per_step,
                                        prompts_per_batch=_batch_key(algorithm, "prefixes_per_batch", settings),
                                        prompt_lengths=prefix,
                                        new_tokens=algorithm.continuation_max_new_tokens, mode="sample",
                                        batch_key="algorithm.prefixes_per_batch",
                                        note=f"time: {steps:.1f} steps a rationale (the demonstrations' mean) of "
                                             "every outcome pair, no pit cutting exploration short: an upper bound"))
    if trains and isinstance(algorithm, TrainingConfig):
        trl_config = getattr(type(algorithm), "TRL_CONFIG", "trl:SFTConfig")
        kind = "dpo" if trl_config.endswith("DPOConfig") and "online" not in trl_config else \
            "online" if "online" in trl_config else "sft"
        if kind == "online":
            lengths, own_rows = Lengths(train_prompts.longest + algorithm.max_new_tokens,
                                        train_prompts.mean + algorithm.max_new_tokens / 2), rows
        elif hasattr(algorithm, "rationales_per_question") and kind == "dpo":
            lengths, own_rows = generated, kept  # outcome or step-level pairs: at most one per kept correct rationale
        elif hasattr(algorithm, "rationales_per_question"):
            lengths, own_rows = generated, kept  # RFT's kept correct rationales
        elif samples_per_prompt:
            lengths, own_rows = generated, sampled  # one target or pair per sampled prompt
        else:
            lengths, own_rows = demonstrations, rows
        stages.append(_training_node_stage(algorithm.name, algorithm, shape, gpu, ctx, rows=own_rows, lengths=lengths,
                                           kind=kind, batch_key="algorithm.per_device_train_batch_size"))

    decoder = settings.decoder
    problems = len(test) if decoder.max_problems is None else min(decoder.max_problems, len(test))
    test_prompts = Lengths.of(test["prompt"][:problems], tokenizer) if problems else Lengths(0, 0.0)
    per_prompt = getattr(decoder, "samples_per_prompt", None) or getattr(decoder, "num_beams", 1)
    mode = "beam" if getattr(decoder, "num_beams", 1) > 1 else \
        "sample" if getattr(decoder, "samples_per_prompt", None) else "greedy"
    stages.append(_generation_stage("evaluation", shape, gpu, ctx, prompts=problems, per_prompt=per_prompt,
                                    prompts_per_batch=_batch_key(decoder, "prompts_per_batch", settings),
                                    prompt_lengths=test_prompts,
                                    new_tokens=decoder.max_new_tokens, mode=mode, batch_key="decoder.prompts_per_batch"))
    if settings.evaluation.diagnostics and "completion" in test.column_names and problems:
        scored = Lengths.of([p + c for p, c in zip(test["prompt"][:problems], test["completion"][:problems])],
                            tokenizer)
        width = scored.longest + 1
        batch = settings.evaluation.sequences_per_forward
        terms = scoring_memory(shape, sequences=batch, tokens=width, precision=precision)
        stages.append(StagePlan(
            "diagnostics", f"score {problems} gold solutions, {batch} per forward x <= {width} tokens", terms, None,
            "evaluation.sequences_per_forward", batch,
            lambda b: sum(scoring_memory(shape, sequences=b, tokens=width, precision=precision).values())))
    if settings.evaluation.premises and hasattr(algorithm, "samples_per_prompt"):  # the sampled set's greedy pass
        stages.append(_generation_stage("premises", shape, gpu, ctx, prompts=sampled, per_prompt=1,
                                        prompts_per_batch=_batch_key(decoder, "prompts_per_batch", settings),
                                        prompt_lengths=train_prompts,
                                        new_tokens=new_tokens, mode="greedy", batch_key="decoder.prompts_per_batch"))
    if decoder.name in settings.evaluation.control_decoders and trains and isinstance(algorithm, TrainingConfig) \
            and getattr(algorithm, "starting_point", "base") == "sft":
        stages.append(_training_node_stage("control", algorithm, shape, gpu, ctx, rows=rows, lengths=demonstrations,
                                           kind="sft", batch_key="algorithm.per_device_train_batch_size",
                                           note="SFT with the method's steps"))
    return JobPlan(title or f"{algorithm.name} x {decoder.label()}", gpu, gpus, sharding, shape, precision, stages,
                   tokenizer is None)


# ---------------------------------------------------------------------------- what the launcher calls
def target(settings) -> tuple[GPU | None, int, str]:
    """(GPU, number of GPUs, sharding) the plan is for: plan.gpu or this process's GPU (None on a CPU)."""
    from framework import distributed

    plan = settings.plan
    gpu = GPUS[plan.gpu] if plan.gpu != "auto" else current_gpu()
    gpus = plan.gpus or distributed.launched_world_size()
    sharding = launched_sharding() if plan.sharding == "auto" else plan.sharding
    return gpu, gpus, sharding


def build_plan(settings, data, title: str = "") -> JobPlan | None:
    """The plan of a validated job on its data (prompts rendered), or None when there is no GPU to plan for."""
    gpu, gpus, sharding = target(settings)
    if gpu is None:
        return None
    architecture, tokenizer = settings.model.architecture()
    if tokenizer is not None:
        try:
            data = data.render_prompts(tokenizer)  # chat prompts: their template's tokens count too
        except ConfigError:  # no chat template: the run itself refuses that, later and in its own words
            pass
    return plan_job(settings, data, tokenizer, shape_of(architecture), gpu, gpus=gpus, sharding=sharding, title=title)


def refuse_if_too_big(settings, data) -> JobPlan | None:
    """A real run's pre-flight check (plan.check): ConfigError, before any work, naming the first stage whose
    estimated peak cannot fit and the ways out. No check on a CPU unless plan.gpu names a GPU."""
    if not settings.plan.check:
        return None
    plan = build_plan(settings, data)
    if plan is not None and plan.too_big():
        raise ConfigError(f"plan.gpu: {plan.refusal(plan.too_big()[0])} (python -m framework ... --plan prints every "
                          "stage; plan.check=false runs anyway)")
    return plan


def plan_only(cfg) -> str:
    """`python -m framework ... --plan`: the plan of the composed job, built from its config and data alone
    (nothing trained, loaded or written)."""
    from framework import registry
    from framework.config import to_validated

    registry.load_plugins()
    settings = to_validated(cfg)
    gpu, _, _ = target(settings)
    if gpu is None:
        raise ConfigError(f"plan.gpu: no GPU here to plan for; name one: plan.gpu=<{' | '.join(GPUS)}>")
    data = registry.datasets.get(settings.dataset.name)(settings.dataset)
    title = f"{settings.algorithm.name} x {settings.decoder.label()}, seed {settings.seed}"
    return build_plan(settings, data, title=title).render()
