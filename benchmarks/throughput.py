"""Framework overhead, measured in one run on the same model, data, batch and steps:

  (a) SFT training tokens/s: `algorithm=sft` (stage store, checkpoints, completion-only loss)
      against a plain TRL SFTTrainer script;
  (b) evaluation generation tokens/s: the greedy decoder (batches, sorted prompts, log-probs from
      the logits) against one batched `model.generate` call on the same prompts;
  (c) SOC training tokens/s against SFT, both through the framework on the same steps and batches.

    python benchmarks/throughput.py [--sft-steps 100] [--test-size 200] [--json out.json]

The base model is the embedded tiny model (built once into a temporary cache). Ratios above 1 mean
the framework is faster than the plain script.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _tokens_of(trainer) -> float:
    logged = [entry["num_tokens"] for entry in trainer.state.log_history if "num_tokens" in entry]
    return float(logged[-1]) if logged else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--test-size", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5, help="timed generation repetitions (median kept)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from transformers import set_seed

    from framework.generation import TransformersEngine
    from trl import SFTConfig, SFTTrainer

    from framework import registry
    from framework.algorithms import AlgorithmContext
    from framework.algorithms.sft_stage import SFTAlgorithmConfig
    from framework.data.loaders import ArithDatasetConfig
    from framework.decoding import GreedyConfig
    from framework.models import TinyModelConfig, resolve_runtime
    from framework.stages import StageStore

    registry.load_plugins()
    work = Path(tempfile.mkdtemp(prefix="framework-bench-"))
    runtime = resolve_runtime("auto", "auto")
    stages = StageStore(work / "cache", reuse=False)
    data = registry.datasets.get("arith")(ArithDatasetConfig(test_size=args.test_size))
    base = registry.models.get("tiny")(TinyModelConfig(), stages, runtime)
    figures: dict = {"device": runtime.device, "torch_threads": torch.get_num_threads(), "sft_steps": args.sft_steps,
                     "batch_size": args.batch_size}

    # (a) training ------------------------------------------------------------------------------
    def plain_trl(steps: int, **overrides) -> tuple[float, float]:
        """A plain TRL script: SFTTrainer on the same rows, seed, batch, steps and schedule."""
        set_seed(0)
        started = time.perf_counter()
        tokenizer = base.load_tokenizer()
        plain = SFTTrainer(
            model=base.load_model(runtime), processing_class=tokenizer,
            train_dataset=Dataset.from_dict({"prompt": data.train["prompt"], "completion": data.train["completion"]}),
            args=SFTConfig(output_dir=str(work / "plain"), max_steps=steps, learning_rate=5e-4,
                           per_device_train_batch_size=args.batch_size, logging_steps=args.sft_steps,
                           save_strategy="no", report_to="none", bf16=runtime.precision == "bf16",
                           use_cpu=runtime.device == "cpu", lr_scheduler_type="cosine", warmup_steps=0.03,
                           seed=0, data_seed=0, **overrides),
        )
        plain.train()
        plain.save_model(str(work / "plain-model"))
        return time.perf_counter() - started, _tokens_of(plain)

    # Untimed warm-up: the first trainer in a process pays one-off costs (lazy imports, allocator growth)
    # that would otherwise land on whichever contender runs first.
    plain_trl(10, gradient_checkpointing=False)

    from framework.algorithms import sft as sft_module
    from framework.algorithms import sft_stage
    from framework.algorithms import soc as soc_module
    from framework.algorithms.soc import SOCConfig

    def framework_training(method, module, config_class, **config_overrides):
        """`method.run`, timed, with the trainer that `module.make_sft_trainer` builds for it captured."""
        captured: dict = {}
        original = module.make_sft_trainer

        def capture(*a, **k):
            captured["trainer"] = original(*a, **k)
            return captured["trainer"]

        module.make_sft_trainer = capture
        try:
            config = config_class(max_steps=args.sft_steps, per_device_train_batch_size=args.batch_size,
                                  logging_steps=args.sft_steps, **config_overrides)
            context = AlgorithmContext(config=config, base=base, data=data, stages=stages, runtime=runtime,
                                       seed=0, report_to="none", output_dir=work)
            set_seed(0)
            started = time.perf_counter()
            method.run(context)
            return time.perf_counter() - started, _tokens_of(captured["trainer"])
        finally:
            module.make_sft_trainer = original

    framework_seconds, framework_tokens = framework_training(sft_module, sft_stage, SFTAlgorithmConfig)
    # The same without intermediate checkpoints: what resumability (save_steps=50) costs.
    no_checkpoint_seconds, _ = framework_training(sft_module, sft_stage, SFTAlgorithmConfig, save_steps=10 * args.sft_steps)

    # "matched": TRL's gradient checkpointing off, as the framework runs the tiny model; "TRL defaults":
    # what a script that only sets precision gets (checkpointing on: same maths, more compute).
    matched_seconds, matched_tokens = plain_trl(args.sft_steps, gradient_checkpointing=False)
    default_seconds, default_tokens = plain_trl(args.sft_steps)
    figures["sft"] = {
        "framework_tokens_per_s": framework_tokens / framework_seconds,
        "plain_trl_tokens_per_s": matched_tokens / matched_seconds,
        "plain_trl_defaults_tokens_per_s": default_tokens / default_seconds,
        "framework_seconds": framework_seconds, "plain_trl_seconds": matched_seconds,
        "plain_trl_defaults_seconds": default_seconds, "tokens": framework_tokens,
        "framework_no_checkpoints_tokens_per_s": framework_tokens / no_checkpoint_seconds,
        "same_tokens": framework_tokens == matched_tokens == default_tokens,
    }
    figures["sft"]["ratio"] = figures["sft"]["framework_tokens_per_s"] / figures["sft"]["plain_trl_tokens_per_s"]
    figures["sft"]["ratio_vs_trl_defaults"] = (figures["sft"]["framework_tokens_per_s"]
                                               / figures["sft"]["plain_trl_defaults_tokens_per_s"])

    # (c) SOC vs SFT: same rows, seed, steps; only the loss differs --------------------------------
    soc_seconds, soc_tokens = framework_training(soc_module, soc_module, SOCConfig)
    sft_seconds, sft_tokens = framework_training(sft_module, sft_stage, SFTAlgorithmConfig)
    figures["soc"] = {"soc_tokens_per_s": soc_tokens / soc_seconds, "sft_tokens_per_s": sft_tokens / sft_seconds,
                      "soc_seconds": soc_seconds, "sft_seconds": sft_seconds, "same_tokens": soc_tokens == sft_tokens}
    figures["soc"]["ratio"] = figures["soc"]["soc_tokens_per_s"] / figures["soc"]["sft_tokens_per_s"]

    # (b) generation ----------------------------------------------------------------------------
    model, tokenizer = base.load_model(runtime).eval(), base.load_tokenizer()
    prompts = list(data.test["prompt"])
    decoder = registry.decoders.get("greedy")(GreedyConfig(max_new_tokens=args.max_new_tokens))
    engine = TransformersEngine(model, tokenizer)
    decoder.decode(engine, prompts[:8], progress=False)  # warm-up, both paths share it

    def framework_decode():
        return decoder.decode(engine, prompts, progress=False).outputs

    def plain_generate():
        with torch.no_grad():
            encoded = tokenizer(prompts, return_tensors="pt", padding=True, return_token_type_ids=False)
            encoded = encoded.to(model.device)
            output = model.generate(**encoded, max_new_tokens=args.max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        return encoded, output

    # Alternate the two and keep each one's median: single timings of ~1 s vary by +-30% on 2 cores.
    framework_times, plain_times = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        decoded = framework_decode()
        framework_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        encoded, output = plain_generate()
        plain_times.append(time.perf_counter() - started)
    framework_seconds, plain_seconds = sorted(framework_times)[len(framework_times) // 2], sorted(plain_times)[len(plain_times) // 2]
    framework_generated = sum(result.candidates[0].num_tokens for result in decoded)
    new = output[:, encoded["input_ids"].shape[1]:]
    ended = (new == tokenizer.eos_token_id).int().cumsum(1)
    plain_generated = int(((ended - (new == tokenizer.eos_token_id).int()) == 0).sum())
    figures["generation"] = {
        "framework_tokens_per_s": framework_generated / framework_seconds,
        "plain_generate_tokens_per_s": plain_generated / plain_seconds,
        "framework_seconds": framework_seconds, "plain_generate_seconds": plain_seconds,
        "framework_tokens": framework_generated, "plain_tokens": plain_generated, "prompts": len(prompts),
        "framework_prompts_per_batch": decoder.config.prompts_per_batch,
    }
    figures["generation"]["ratio"] = (figures["generation"]["framework_tokens_per_s"]
                                      / figures["generation"]["plain_generate_tokens_per_s"])

    sft, generation = figures["sft"], figures["generation"]
    print(f"\nSFT training, {args.sft_steps} steps x batch {args.batch_size} on {runtime.device}:")
    print(f"  framework            {sft['framework_tokens_per_s']:8.0f} tokens/s  ({sft['framework_seconds']:.1f} s)")
    print(f"  framework, no ckpts  {sft['framework_no_checkpoints_tokens_per_s']:8.0f} tokens/s  "
          f"(checkpoints every 50 steps cost {100 * (1 - sft['framework_tokens_per_s'] / sft['framework_no_checkpoints_tokens_per_s']):.1f}%)")
    print(f"  plain TRL, matched   {sft['plain_trl_tokens_per_s']:8.0f} tokens/s  ({sft['plain_trl_seconds']:.1f} s)")
    print(f"  plain TRL, defaults  {sft['plain_trl_defaults_tokens_per_s']:8.0f} tokens/s  "
          f"({sft['plain_trl_defaults_seconds']:.1f} s)")
    print(f"  ratio {sft['ratio']:.3f} vs matched, {sft['ratio_vs_trl_defaults']:.3f} vs defaults "
          f"(same tokens in all three: {sft['same_tokens']})")
    print(f"Greedy generation, {len(prompts)} prompts, up to {args.max_new_tokens} new tokens "
          f"(median of {args.repeats}):")
    print(f"  framework  {generation['framework_tokens_per_s']:8.0f} tokens/s  ({generation['framework_seconds']:.2f} s)")
    print(f"  one generate call {generation['plain_generate_tokens_per_s']:8.0f} tokens/s  "
          f"({generation['plain_generate_seconds']:.2f} s)")
    print(f"  ratio      {generation['ratio']:.3f}")
    soc = figures["soc"]
    print(f"SOC vs SFT training through the framework, {args.sft_steps} steps:")
    print(f"  SOC        {soc['soc_tokens_per_s']:8.0f} tokens/s  ({soc['soc_seconds']:.1f} s)")
    print(f"  SFT        {soc['sft_tokens_per_s']:8.0f} tokens/s  ({soc['sft_seconds']:.1f} s)")
    print(f"  ratio      {soc['ratio']:.3f}   (same tokens: {soc['same_tokens']})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
