"""The pre-flight plan (framework/plan.py): its arithmetic against hand-computed values for a Qwen2.5-1.5B-shaped
and a 7B-shaped config, its activation term against the tensors autograd really keeps (on CPU), `--plan` for a
sweep, and a real run that refuses, before any work, a stage that cannot fit, naming the ways out."""
import json
import sys

import pytest
import torch

from conftest import FAST, compose_config
from framework import plan
from framework.errors import ConfigError

GIB = 2**30
QWEN_1_5B = {"model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
             "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True}
LLAMA_7B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 30,
            "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 102400, "tie_word_embeddings": False}


def _config(values: dict):
    from transformers import AutoConfig

    values = dict(values)
    return AutoConfig.for_model(values.pop("model_type"), **values)


def test_the_shape_counts_parameters_as_by_hand():
    # Qwen2: q, k, v carry biases; tied embeddings; per layer two RMSNorms, one more at the end
    H, I, L, KD, V = 1536, 8960, 28, 2 * 128, 151936
    qwen = H * H + H + 2 * (H * KD + KD) + H * H + 3 * H * I + 2 * H
    assert plan.shape_of(_config(QWEN_1_5B)).parameters == V * H + L * qwen + H == 1_543_714_304
    H, I, L, V = 4096, 11008, 30, 102400  # Llama, multi-head, untied head
    shape = plan.shape_of(_config(LLAMA_7B))
    assert shape.parameters == 2 * V * H + L * (4 * H * H + 3 * H * I + 2 * H) + H == 6_910_365_696
    assert shape.linear_parameters == V * H + L * (4 * H * H + 3 * H * I)  # what autocast copies: the head too
    assert (shape.kv_heads, shape.head_dim) == (32, 128)
    assert shape.lora_parameters(16, ["all-linear"]) == L * 16 * (4 * (H + H) + 2 * (H + I) + (I + H))


def test_full_fine_tuning_memory_of_the_1_5b_shape_by_hand():
    """bf16, AdamW, micro-batch 8 x 1024 tokens, no checkpointing, one GPU: fp32 master weights, their bf16
    autocast copies, fp32 gradients, two fp32 moments, the layers' activations and the loss's logits."""
    shape = plan.shape_of(_config(QWEN_1_5B))
    P, T, H, I, A, D, L, V = shape.parameters, 8 * 1024, 1536, 8960, 12, 128, 28, 151936
    terms = plan.training_memory(shape, tokens=T, precision="bf16", checkpointing=False, optim="adamw_torch")
    assert terms["weights"] == 4 * P + 2 * shape.linear_parameters
    assert terms["gradients"] == 4 * P and terms["optimizer"] == 8 * P
    assert terms["activations"] == T * (L * (26 * H + 8 * A * D + 8 * I + 4 * A) + 10 * H)
    assert terms["logits"] == T * V * 12
    # GiB: 5.75 + 2.88 (weights, their copies) + 5.75 + 11.50 + 26.60 (activations) + 13.91 (logits)
    assert sum(terms.values()) / GIB == pytest.approx(66.38, abs=0.01)
    with_checkpointing = plan.training_memory(shape, tokens=T, precision="bf16", checkpointing=True, optim="adamw_torch")
    assert with_checkpointing["activations"] == T * (L * 4 * H + 26 * H + 8 * A * D + 8 * I + 4 * A + 10 * H)


def test_the_7b_shape_needs_16_bytes_a_parameter_and_fits_one_h100_only_sharded_or_with_lora():
    from framework.config import LoraSettings

    shape = plan.shape_of(_config(LLAMA_7B))
    P = shape.parameters
    one = plan.training_memory(shape, tokens=8 * 1024, precision="bf16", checkpointing=True, optim="adamw_torch")
    assert one["weights"] + one["gradients"] + one["optimizer"] == pytest.approx(16 * P, rel=0.01)  # 103 GiB
    h100 = plan.GPUS["h100_80gb"].usable_bytes
    assert sum(one.values()) > h100
    zero3 = plan.training_memory(shape, tokens=8 * 1024, precision="bf16", checkpointing=True, optim="adamw_torch",
                                 gpus=2, sharding="zero3")
    assert zero3["weights"] + zero3["gradients"] + zero3["optimizer"] == pytest.approx(
        (2 + 2 + 12) * P / 2 + 2 * 2 * shape.linear_parameters / 30)  # DeepSpeed bf16 over 2 GPUs + a gathered layer
    assert sum(zero3.values()) < h100
    lora = plan.training_memory(shape, tokens=8 * 1024, precision="bf16", checkpointing=True, optim="adamw_torch",
                                lora=LoraSettings(enabled=True, rank=16))
    adapters = shape.lora_parameters(16, ["all-linear"])
    assert lora["weights"] == 2 * P + 4 * adapters and lora["optimizer"] == 8 * adapters
    assert sum(lora.values()) < h100


def test_generation_memory_by_hand():
    """800 sampled sequences (8 prompts x 100 rationales) of a 7B multi-head model: the KV cache alone is
    ~210 GiB at 300 + 512 tokens, as the issue computed; one prompt per call fits."""
    shape = plan.shape_of(_config(LLAMA_7B))
    kv_token = 2 * 30 * 32 * 128 * 2
    assert plan.kv_bytes_per_token(shape, "bf16") == kv_token == 491_520
    terms = plan.generation_memory(shape, sequences=800, prompt_tokens=300, new_tokens=512, precision="bf16")
    assert terms["kv_cache"] == 800 * 812 * kv_token and 290 < terms["kv_cache"] / GIB < 300
    assert terms["weights"] == 2 * shape.parameters and terms["logits"] == 800 * 102400 * 40
    assert terms["prefill"] == 800 * 300 * (3 * 11008 + 4 * 4096) * 2
    small = plan.generation_memory(shape, sequences=100, prompt_tokens=300, new_tokens=512, precision="bf16")
    assert sum(small.values()) < plan.GPUS["h100_80gb"].usable_bytes


def test_an_engine_that_sizes_its_batches_by_memory_fits_what_its_budget_holds():
    """Where the engine fills each batch to a share of the free memory (engine.memory_fraction), a batch holds what
    that share of the memory beside the weights holds, and only a stage whose single row cannot fit is refused."""
    shape = plan.shape_of(_config(LLAMA_7B))
    h100 = plan.GPUS["h100_80gb"]
    ctx = plan._PlanContext("bf16", False, None, 1, "none", "transformers", 0.5, 0.8, None)
    # KV cache, step logits, and the prefill's MLP transients over the row's 812 tokens (3 x 11008 + 4 x 4096, bf16)
    per_row = 491_520 * (300 + 512) + 102400 * 24 + 812 * (3 * 11008 + 4 * 4096) * 2
    rows = plan.budget_rows(shape, h100, ctx, rows=800, per_prompt=100, length=812, beam=False)
    assert rows == int((h100.usable_bytes - 2 * shape.parameters) * 0.8 // per_row) == 107
    assert plan.budget_rows(shape, h100, ctx, rows=50, per_prompt=100, length=812, beam=False) == 50  # the work
    assert plan.budget_rows(shape, h100, ctx, rows=800, per_prompt=100, length=812, beam=True) == 100  # whole prompts
    small = plan.GPU("a 15 GiB card", 15.0, 100.0, 1.0)
    assert plan.budget_rows(shape, small, ctx, rows=800, per_prompt=1, length=812, beam=False) == 1
    assert plan.budget_rows(shape, plan.GPU("8 GiB", 8.0, 1.0, 1.0), ctx, rows=8, per_prompt=1, length=812,
                            beam=False) == 0  # the weights alone do not fit


def _saved_bytes_per_token(layers: int, checkpointing: bool) -> float:
    """Bytes autograd keeps for backward per token in one bf16-autocast forward of a small multi-head Qwen2
    (fp32 weights), leaving out the weights themselves and their bf16 copies (not per token)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(hidden_size=64, intermediate_size=160, num_attention_heads=4, num_key_value_heads=4,
                         num_hidden_layers=layers, vocab_size=256, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    weight_shapes = {tuple(p.shape) for p in model.parameters()} | {tuple(p.shape[::-1]) for p in model.parameters()}
    saved = {}

    def pack(tensor):
        if tuple(tensor.shape) not in weight_shapes:  # parameters and autocast's copies of them
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    ids = torch.randint(0, 256, (2, 48))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids, labels=ids).loss.backward()
    return sum(saved.values()) / ids.numel()


def test_the_activation_term_is_what_autograd_keeps_per_layer():
    shape = plan.Shape(parameters=0, linear_parameters=0, layers=1, hidden=64, intermediate=160, heads=4, kv_heads=4,
                       head_dim=16, vocab=256)
    per_layer = _saved_bytes_per_token(3, False) - _saved_bytes_per_token(2, False)
    assert per_layer == pytest.approx(plan.layer_activation_bytes(shape), rel=0.02)
    checkpointed = _saved_bytes_per_token(3, True) - _saved_bytes_per_token(2, True)
    assert checkpointed == pytest.approx(4 * shape.hidden, rel=0.02)  # a layer's fp32 input only


def _shape_dir(tmp_path, values: dict):
    directory = tmp_path / values["model_type"]
    _config(values).save_pretrained(directory)
    return directory


def test_a_run_that_cannot_fit_refuses_before_any_work_with_the_ways_out(tmp_path):
    """Full fine-tuning of a 7B-shaped model on one H100 80GB (the plan named explicitly, since this machine has
    no GPU): refused in one line with LoRA and ZeRO-3 over 2 GPUs, before any stage exists."""
    from framework.job import run

    model = _shape_dir(tmp_path, LLAMA_7B)
    overrides = [*FAST[6:], "model=hf", f"model.name_or_path={model}", "algorithm=sft", "plan.gpu=h100_80gb"]
    with pytest.raises(ConfigError) as refused:
        run(compose_config(overrides, tmp_path / "cache"), tmp_path / "run")
    message = str(refused.value)
    assert message.startswith("plan.gpu: stage sft needs ~") and "\n" not in message
    assert "model.lora.enabled=true" in message and "ZeRO-3 over 2 GPUs" in message
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()
    # the same job with LoRA fits, and plan.check=false runs without a plan
    with_lora = compose_config([*overrides, "model.lora.enabled=true"])
    from framework.config import to_validated
    from framework import registry

    settings = to_validated(with_lora)
    data = registry.datasets.get(settings.dataset.name)(settings.dataset)
    assert plan.refuse_if_too_big(settings, data).too_big() == []


def test_plan_prints_every_job_of_a_sweep_and_writes_nothing(monkeypatch, capsys, tmp_path):
    from hydra.core.global_hydra import GlobalHydra

    from framework import __main__ as launcher

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(launcher, "_PLAN_ONLY", False)
    model = _shape_dir(tmp_path, QWEN_1_5B)
    monkeypatch.setattr(sys, "argv", ["framework", "-m", "algorithm=sft,dpo", "model=hf", f"model.name_or_path={model}",
                                      "--plan", "plan.gpu=h100_80gb", *FAST[6:], f"stages.cache_dir={tmp_path / 'c'}"])
    GlobalHydra.instance().clear()
    launcher.main()
    out = capsys.readouterr().out
    assert out.count("plan: ") == 2 and "on 1 x H100 80GB (SXM)" in out
    assert "\nsft " in out and "\ndpo " in out and "\nsamples " in out and "\nevaluation " in out
    assert sorted(path.name for path in tmp_path.iterdir()) == ["qwen2"]  # no outputs/, multirun/ or cache


def test_plan_without_a_gpu_asks_for_one_in_one_line(compose_cfg):
    with pytest.raises(ConfigError, match=r"^plan.gpu: no GPU here to plan for; name one: plan.gpu=<h100_80gb"):
        plan.plan_only(compose_cfg([]))


def test_a_bad_plan_key_is_refused(compose_cfg):
    from framework.config import to_validated

    with pytest.raises(ConfigError, match=r"^plan.gpu must be auto or one of"):
        to_validated(compose_cfg(["plan.gpu=h100"]))
    with pytest.raises(ConfigError, match=r"^plan.sharding must be one of"):
        to_validated(compose_cfg(["plan.sharding=zero4"]))


def test_the_plan_and_the_engine_count_a_decoded_row_alike():
    """The plan's batch is the one the engine forms only if both count a row's bytes the same way: KV cache, step
    logits and the prefill's MLP transients (before: the engine left the prefill out, and the plan showed the
    soc_paper evaluation's 896-row batch needing 126 GiB on an 80 GB card)."""
    import torch

    from framework.generation import decode_bytes_per_row

    config = _config(LLAMA_7B)
    shape = plan.shape_of(config)
    length = 812
    planned = (plan.kv_bytes_per_token(shape, "bf16") * length + shape.vocab * plan.BUDGET_ROW_LOGIT_BYTES
               + length * (3 * shape.intermediate + 4 * shape.hidden) * 2)
    assert decode_bytes_per_row(config, torch.bfloat16, length) == planned
